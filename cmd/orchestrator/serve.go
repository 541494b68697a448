package main

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/flotaio/flota/broker"
	"github.com/flotaio/flota/internal/auth"
	"github.com/flotaio/flota/internal/httpapi"
	"github.com/flotaio/flota/internal/logsafe"
	"github.com/flotaio/flota/internal/protocol"
	"github.com/flotaio/flota/internal/rollout"
	"github.com/flotaio/flota/internal/sqlite"
	"github.com/flotaio/flota/mqttclient"
)

// Defaults of the serve command.
const (
	DefaultDataDir  = "./flota-data"
	DefaultMQTTAddr = "127.0.0.1:1883"
	DefaultHTTPAddr = "127.0.0.1:8080"
	DefaultLogLevel = "info"

	// DefaultEventRetention and DefaultEventMaxRows bound the event log
	// by default (docs/ARCHITECTURE.md, "Retention of the event log"): a
	// month of history, and at most about 280 MB of rows.
	DefaultEventRetention = 30 * 24 * time.Hour
	DefaultEventMaxRows   = 2_000_000
)

// Config is what serve is told by its flags.
type Config struct {
	DataDir  string // SQLite database and firmware images
	MQTTAddr string // MQTT listener, host:port ("127.0.0.1:0" picks a port)
	HTTPAddr string // HTTP API listener, host:port
	// Window is the largest chunk window any update uses; it sizes the
	// broker's per-client queues. 0 means the broker's default.
	Window   int
	LogLevel string // debug, info, warn or error
	// DebugAddr, when set, is a listener of its own for Go's runtime
	// profiles (/debug/pprof/), e.g. 127.0.0.1:6060.
	DebugAddr string

	// Broker, when set, is an external MQTT broker (tcp://host:port or
	// ssl://host:port) that serve connects to as a client instead of
	// starting the embedded broker; MQTTAddr and Window are then unused.
	Broker         string
	BrokerUsername string
	BrokerPassword string
	BrokerCA       string // PEM CA bundle for ssl:// (default: system roots)
	BrokerCert     string // PEM client certificate for ssl://
	BrokerKey      string // PEM key of BrokerCert
	BrokerClientID string // default mqttclient.DefaultClientID

	// APITokenFile lists the HTTP API's tokens (httpapi.ParseTokens); when
	// empty, serve keeps DataDir/api-tokens and creates it with a new admin
	// token on first start (tokens.go).
	APITokenFile string
	// MaxFirmwareSize bounds an uploaded image; 0 means
	// httpapi.DefaultMaxFirmwareSize.
	MaxFirmwareSize int64
	// FirmwarePublicKey is a PEM ed25519 public key file; when set, firmware
	// uploads that are unsigned or whose signature does not verify with it
	// are refused.
	FirmwarePublicKey string
	// Who may connect to the embedded broker (serve_auth.go, docs/SECURITY.md).

	// AllowAnonymous lets MQTT clients connect without credentials, as the
	// device named by their client ID (development mode; logged loudly).
	AllowAnonymous bool
	// EnrollTokenFile holds the fleet enrollment token; with it, unknown
	// devices that present the token register as pending.
	EnrollTokenFile string
	// AutoApprove makes enrolled devices active at once.
	AutoApprove bool
	// MQTTTLSAddr, with TLSCert and TLSKey, adds a TLS listener.
	MQTTTLSAddr string
	TLSCert     string
	TLSKey      string
	// TLSClientCA makes the TLS listener mutual: clients must present a
	// certificate signed by it whose common name is their client ID.
	TLSClientCA string
	// RateLimit is the messages per second one MQTT client may publish (0:
	// the broker's default, negative: no limit); RateBurst its burst.
	RateLimit float64
	RateBurst int
	// ConnectRate is the connections per minute one MQTT client ID may make
	// (0: the broker's default, negative: no limit); over it, the client ID
	// is refused for ConnectBan (0: the broker's default).
	ConnectRate int
	ConnectBan  time.Duration
	// TopicLimits bound each MQTT client's topics, filters, subscriptions
	// and SUBSCRIBE rate (serve_limits.go); zero fields take the broker's
	// defaults.
	TopicLimits broker.TopicLimits
	// Conns are the embedded broker's connection limits (serve_conns.go).
	Conns ConnLimits
	// EventRetention and EventMaxRows bound the event log: events older than
	// EventRetention, and all but the newest EventMaxRows, are deleted
	// periodically in small batches (sqlite.Retention). 0 disables a bound.
	EventRetention time.Duration
	EventMaxRows   int64
	// LogLimit bounds the log lines each MQTT client causes in the broker
	// and the engine (logsafe.Limit; zero fields take its defaults).
	LogLimit logsafe.Limit
	// IllegalEventInterval: a device's illegal state changes are recorded
	// as an event at most once per interval (0: every one).
	IllegalEventInterval time.Duration
	// NewDatabase starts an empty database where an earlier run left state
	// but no database; SkipIntegrityCheck skips the database's quick_check
	// at start (sqlite.Store).
	NewDatabase, SkipIntegrityCheck bool
	// Litestream: Litestream replicates the database and runs its WAL
	// checkpoints; FirmwareReplica is the directory every firmware image
	// is copied to, and fetched from when missing (standby.go).
	Litestream      bool
	FirmwareReplica string
	// Fetch configures firmware fetched from URLs (serve_fetch.go).
	Fetch FetchConfig
}

// Main is the orchestrator with its production wiring, so that tests run
// exactly what serve runs: Run opens every component, Close closes them.
type Main struct {
	Config Config
	Store  *sqlite.Store
	Broker *broker.Broker     // the embedded broker, nil with Config.Broker
	Client *mqttclient.Client // the external broker's client, nil without Config.Broker
	Engine *rollout.Engine
	HTTP   *httpapi.Server
	// Accounts authenticates MQTT connections to the embedded broker; nil
	// with Config.Broker.
	Accounts *auth.Accounts
	Debug    *debugServer // nil without Config.DebugAddr
	// Logger receives every component's logs; nil means a text handler on
	// stderr at Config.LogLevel.
	Logger *slog.Logger
	// GeneratedToken is the admin token Run created on the first start
	// without Config.APITokenFile; only its hash is kept. Empty otherwise.
	GeneratedToken string

	// afterBrokerOpen, when set (by tests), runs once the embedded broker
	// accepts connections, inside Run, with the broker's address.
	afterBrokerOpen func(mqttAddr string)

	// mu guards closers and closed, and the component fields while Run sets them.
	mu      sync.Mutex
	closers []func() error // in opening order; Close runs them in reverse
	closed  bool
}

// NewMain returns a Main with the default configuration.
func NewMain() *Main {
	return &Main{Config: Config{
		DataDir:  DefaultDataDir,
		MQTTAddr: DefaultMQTTAddr,
		HTTPAddr: DefaultHTTPAddr,
		LogLevel: DefaultLogLevel,

		EventRetention:       DefaultEventRetention,
		EventMaxRows:         DefaultEventMaxRows,
		IllegalEventInterval: rollout.DefaultIllegalEventInterval,
	}}
}

// Run opens the store, the engine, the broker (the engine subscribes before
// the embedded broker listens) and the HTTP API, and returns once all of
// them listen. On an error it closes what it
// opened. Stop it with Close.
func (m *Main) Run(ctx context.Context) (err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed || len(m.closers) > 0 {
		return errors.New("main: already run")
	}
	defer func() {
		if err != nil {
			for i := len(m.closers) - 1; i >= 0; i-- {
				if cerr := m.closers[i](); cerr != nil {
					m.Logger.Error("close after a failed start", "err", cerr)
				}
			}
			m.closers = nil
		}
	}()

	if m.Logger == nil {
		level, err := parseLogLevel(m.Config.LogLevel)
		if err != nil {
			return err
		}
		m.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	}

	var fwKey ed25519.PublicKey
	if m.Config.FirmwarePublicKey != "" {
		if fwKey, err = protocol.ReadPublicKeyFile(m.Config.FirmwarePublicKey); err != nil {
			return fmt.Errorf("firmware public key: %w", err)
		}
	}

	m.Store = sqlite.New(m.Config.DataDir)
	m.Store.Logger = m.Logger.With("component", "store")
	m.Store.Retention = sqlite.Retention{MaxAge: m.Config.EventRetention, MaxRows: m.Config.EventMaxRows}
	m.Store.NewDatabase, m.Store.SkipIntegrityCheck = m.Config.NewDatabase, m.Config.SkipIntegrityCheck
	m.Store.NoAutoCheckpoint, m.Store.FirmwareReplica = m.Config.Litestream, m.Config.FirmwareReplica
	if err := m.Store.Open(); err != nil {
		return fmt.Errorf("open store: %w", err)
	}
	m.closers = append(m.closers, m.Store.Close)
	tokens, err := m.loadTokens()
	if err != nil {
		return err
	}

	var brokerStats func() any
	if m.Config.Broker != "" {
		if err := m.openClient(ctx); err != nil {
			return err
		}
		c := m.Client
		brokerStats = func() any { return c.Stats() }
		if err := m.Engine.Open(ctx); err != nil {
			return fmt.Errorf("open engine: %w", err)
		}
		m.closers = append(m.closers, m.Engine.Close)
	} else {
		opts, err := m.brokerOptions()
		if err != nil {
			return err
		}
		m.Broker = broker.New(opts)
		brk := m.Broker
		m.Accounts.Disconnect = func(id string) { brk.Disconnect(id) }
		m.Engine = m.newEngine(m.Broker)
		engine := m.Engine
		m.Broker.OnPresence(func(id string, online bool) { engine.DevicePresence(id, online) })
		// The engine subscribes before the broker accepts a connection:
		// after a restart, devices reconnect at once and say hello, and a
		// hello published before the engine's subscription would be
		// acknowledged by the broker and lost; a device that had rebooted
		// into the update then forgets its transfer, and its boot is never
		// confirmed.
		if err := m.Engine.Open(ctx); err != nil {
			return fmt.Errorf("open engine: %w", err)
		}
		if err := m.Broker.Open(); err != nil {
			_ = m.Engine.Close()
			return fmt.Errorf("open broker: %w", err)
		}
		// Closed in reverse: the engine, which publishes its last
		// statuses, before the broker.
		m.closers = append(m.closers, m.Broker.Close, m.Engine.Close)
		b := m.Broker
		brokerStats = func() any { return b.Stats() }
		if m.afterBrokerOpen != nil {
			m.afterBrokerOpen(b.Addr())
		}
	}

	var health []func() string
	if m.Broker != nil {
		health = append(health, m.Broker.Degraded)
	}
	fetchOpts, err := m.Config.Fetch.options()
	if err != nil {
		return err
	}
	m.HTTP = &httpapi.Server{
		Addr:        m.Config.HTTPAddr,
		Store:       m.Store,
		Engine:      m.Engine,
		BrokerStats: brokerStats,
		Subscribe:   m.Engine.Transport.Subscribe,
		Accounts:    m.Accounts,
		Logger:      m.Logger.With("component", "http"),
		Version:     version,
		Tokens:      tokens,
		// A listener that cannot accept (out of file descriptors), a
		// full connection limit (devices cannot connect), or a store that
		// cannot write (full disk, read-only).
		HealthChecks: append(health, m.Store.HealthReason),

		MaxFirmwareSize:   m.Config.MaxFirmwareSize,
		FirmwarePublicKey: fwKey,
		Fetch:             fetchOpts,
		MaxFetches:        m.Config.Fetch.MaxFetches,
	}
	if err := m.HTTP.Open(); err != nil {
		return fmt.Errorf("open http: %w", err)
	}
	m.closers = append(m.closers, m.HTTP.Close)

	if m.Config.DebugAddr != "" {
		if m.Debug, err = openDebugServer(m.Config.DebugAddr, m.Logger.With("component", "debug")); err != nil {
			return err
		}
		m.closers = append(m.closers, m.Debug.Close)
	}
	return nil
}

// Close closes the HTTP API, the engine, the broker and the store, in that
// order, and returns the first error. It is idempotent.
func (m *Main) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil
	}
	m.closed = true
	var first error
	for i := len(m.closers) - 1; i >= 0; i-- {
		if err := m.closers[i](); err != nil && first == nil {
			first = err
		}
	}
	m.closers = nil
	return first
}

// openClient connects to the external broker and creates the engine on it.
// Presence comes from the devices' retained status messages (docs/PROTOCOL.md).
func (m *Main) openClient(ctx context.Context) error {
	instance := mqttclient.NewInstance()
	epoch, err := m.Store.Claim(ctx, instance)
	if err != nil {
		return err
	}
	m.Client = mqttclient.New(mqttclient.Options{
		Epoch:    epoch,
		Instance: instance,
		URL:      m.Config.Broker,
		ClientID: m.Config.BrokerClientID,
		Username: m.Config.BrokerUsername,
		Password: m.Config.BrokerPassword,
		CAFile:   m.Config.BrokerCA,
		CertFile: m.Config.BrokerCert,
		KeyFile:  m.Config.BrokerKey,
		Logger:   m.Logger.With("component", "mqttclient"),
	})
	m.Engine = m.newEngine(m.Client)
	engine := m.Engine
	m.Client.OnPresence(engine.DeviceStatus)
	m.Client.OnFoundOnline(engine.DeviceFoundOnline)
	if err := m.Client.Open(); err != nil {
		return fmt.Errorf("open broker client: %w", err)
	}
	m.closers = append(m.closers, m.Client.Close)
	return nil
}

// newEngine returns the engine on transport tr, with the limits of the
// configuration.
func (m *Main) newEngine(tr rollout.Transport) *rollout.Engine {
	e := rollout.New(m.Store, tr, m.Logger.With("component", "engine"))
	e.LogLimit = m.Config.LogLimit
	e.IllegalEventInterval = m.Config.IllegalEventInterval
	e.Builder = rollout.NewBuilder(m.Store, m.Logger.With("component", "payloads"))
	return e
}

// MQTTTLSAddr returns the embedded broker's bound TLS address, or "".
func (m *Main) MQTTTLSAddr() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.Broker == nil {
		return ""
	}
	return m.Broker.TLSAddr()
}

// MQTTAddr returns the embedded broker's bound address, or "" before Run
// and with an external broker.
func (m *Main) MQTTAddr() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.Broker == nil {
		return ""
	}
	return m.Broker.Addr()
}

// HTTPURL returns the HTTP API's base URL, or "" before Run.
func (m *Main) HTTPURL() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.HTTP == nil {
		return ""
	}
	return m.HTTP.URL()
}

func parseLogLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(strings.TrimSpace(s))); err != nil {
		return 0, fmt.Errorf("log level %q: want debug, info, warn or error", s)
	}
	return l, nil
}
