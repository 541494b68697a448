// Package mqttclient connects the orchestrator to an external MQTT broker
// (mosquitto, EMQX, HiveMQ, VerneMQ, a cluster of them) as an ordinary MQTT
// 3.1.1 client, with paho.mqtt.golang. Client is the second implementation of
// the engine's transport, next to the embedded broker: it bounds its own QoS 1
// publishes in flight, reconnects with backoff, subscribes again after every
// connection, and turns the devices' retained status messages into presence
// callbacks, since an external broker has no hooks to tell of connections.
//
// Concurrency: paho delivers every message on its router goroutine, in order
// (OrderMatters), and sends the PUBACK when the handlers have returned; the
// handlers given to Subscribe must therefore return quickly, as the engine's
// does. Client owns two goroutines: one subscribes after each connection, one
// releases publish slots as PUBACKs arrive.
package mqttclient

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/pahostore"
	"github.com/flotaio/flota/internal/protocol"
)

// Defaults for the zero fields of Options.
const (
	DefaultClientID = "flota-orchestrator"
	// DefaultMaxInFlight bounds unacknowledged QoS 1 publishes: with the
	// default 256 devices in flight and a window of 8 chunks, the engine
	// keeps at most about 2,000 chunks outstanding, half of them usually
	// acknowledged by the broker already.
	DefaultMaxInFlight          = 1000
	DefaultPublishWait          = 100 * time.Millisecond
	DefaultAckTimeout           = 10 * time.Second
	DefaultConnectTimeout       = 10 * time.Second
	DefaultMaxReconnectInterval = 10 * time.Second
	DefaultKeepAlive            = 30 * time.Second
	DefaultWriteTimeout         = 5 * time.Second
)

// quiesce is how long Close lets paho finish work before DISCONNECT, in ms.
const quiesce = 250

// resubscribeRetry is the pause between failed subscription attempts on one
// connection.
const resubscribeRetry = time.Second

var (
	// ErrNotConnected: the client has no connection to the broker right
	// now; it is reconnecting. The engine's resend and offer timers repeat
	// what is lost.
	ErrNotConnected = errors.New("mqttclient: not connected to the broker")
	// ErrBusy: MaxInFlight QoS 1 publishes stayed unacknowledged for
	// PublishWait; the broker or the network is slower than the engine.
	ErrBusy = errors.New("mqttclient: too many publishes awaiting acknowledgement")
)

// Options configure a Client. Zero fields take the Default constants.
type Options struct {
	// URL is the broker: tcp://host:port, or ssl://host:port (also tls://,
	// mqtts://) for TLS; or the nodes of a cluster, comma-separated, tried
	// in order at every connection attempt (SplitURLs).
	URL string
	// ClientID must be unique among the broker's clients, and different
	// from every device ID: a device that connects with it takes the
	// session over.
	ClientID string
	Username string
	Password string
	// CAFile is a PEM bundle of the CAs that sign the broker's certificate;
	// empty means the system's roots.
	CAFile string
	// CertFile and KeyFile are the client certificate and its key (PEM),
	// for brokers that authenticate clients by certificate.
	CertFile string
	KeyFile  string

	// MaxInFlight bounds QoS 1 publishes awaiting their PUBACK.
	MaxInFlight int
	// PublishWait is how long Publish waits for a free slot before it
	// returns ErrBusy: the engine calls Publish from its loop.
	PublishWait time.Duration
	// AckTimeout: a publish unacknowledged this long gives its slot back
	// (paho still completes it after a reconnection).
	AckTimeout time.Duration
	// ConnectTimeout bounds the first connection (Open) and each attempt.
	ConnectTimeout time.Duration
	// MaxReconnectInterval caps paho's exponential reconnection backoff.
	MaxReconnectInterval time.Duration
	KeepAlive            time.Duration

	// Epoch, when positive, makes the client claim the broker under it
	// on every connection and stop for good when a newer orchestrator
	// claims it (fence.go). Instance names this process (NewInstance);
	// OnFenced is called once, on paho's delivery goroutine, when the
	// client is fenced: it must not block.
	Epoch    int64
	Instance string
	OnFenced func(error)

	Logger *slog.Logger
}

// Stats are the client's counters since Open.
type Stats struct {
	Broker          string `json:"broker"`
	Connected       bool   `json:"connected"`
	Connects        int64  `json:"connects"`         // connections made, reconnections included
	ConnectionsLost int64  `json:"connections_lost"` // connections that ended without Close
	Published       int64  `json:"published"`        // publishes handed to paho
	InFlight        int    `json:"in_flight"`        // QoS 1 publishes awaiting their PUBACK
	PublishErrors   int64  `json:"publish_errors"`   // QoS 1 publishes completed with an error
	AckTimeouts     int64  `json:"ack_timeouts"`     // QoS 1 publishes unacknowledged after AckTimeout
	NotConnected    int64  `json:"not_connected"`    // publishes refused while reconnecting
	Busy            int64  `json:"busy"`             // publishes refused with ErrBusy
	Received        int64  `json:"received"`         // messages received
	Presence        int64  `json:"presence"`         // device status messages passed to the presence callback
	BadStatus       int64  `json:"bad_status"`       // device status messages that did not decode
	// Leading: the client's claim on the broker is the newest (fence.go);
	// Fenced: a newer orchestrator took over and this one sends nothing.
	Leading bool `json:"leading"`
	Fenced  bool `json:"fenced"`
	// BadClaims counts claims on the client's claim topic that were not
	// one (over 512 bytes, not JSON, no instance), and were ignored.
	BadClaims int64 `json:"bad_claims"`
}

// sub is one local subscription.
type sub struct {
	filter  string
	handler func(topic string, payload []byte)
}

// pending is a QoS 1 publish that holds a slot until its PUBACK.
type pending struct {
	tok      mqtt.Token
	deadline time.Time
}

// Client is a connection to an external broker. Create it with New, set the
// presence callback, then Open; Close ends it.
type Client struct {
	opts     Options
	log      *slog.Logger
	presence func(deviceID string, online bool, conn uint32)
	found    func(deviceID string) // OnFoundOnline

	cli       mqtt.Client
	slots     chan struct{} // one element per QoS 1 publish in flight
	pending   chan pending  // the same publishes, oldest first, for the reaper
	connected chan struct{} // paho's on-connect signal for the subscriber goroutine
	ctx       context.Context
	cancel    context.CancelCauseFunc
	wg        sync.WaitGroup

	mu     sync.RWMutex // guards subs, open and closed
	subs   []sub
	open   bool
	closed bool

	subMu      sync.Mutex // serialises SUBSCRIBE/UNSUBSCRIBE with the broker; guards brokerSubs
	brokerSubs []string   // filters subscribed on the current connection

	stats struct {
		connects, lost, published, pubErrors, ackTimeouts, notConnected, busy,
		received, presence, badStatus, fenced, badClaims atomic.Int64
	}

	fence *fence // the claim on the broker, when Options.Epoch > 0 (fence.go)

	attempt atomic.Value // string: the broker URL of the latest connection attempt, redacted
	lostAt  atomic.Int64 // when the connection was lost, Unix nanoseconds; 0 while connected
}

// New returns a client for opts with the defaults filled in.
func New(opts Options) *Client {
	if opts.ClientID == "" {
		opts.ClientID = DefaultClientID
	}
	if opts.MaxInFlight <= 0 {
		opts.MaxInFlight = DefaultMaxInFlight
	}
	if opts.PublishWait <= 0 {
		opts.PublishWait = DefaultPublishWait
	}
	if opts.AckTimeout <= 0 {
		opts.AckTimeout = DefaultAckTimeout
	}
	if opts.ConnectTimeout <= 0 {
		opts.ConnectTimeout = DefaultConnectTimeout
	}
	if opts.MaxReconnectInterval <= 0 {
		opts.MaxReconnectInterval = DefaultMaxReconnectInterval
	}
	if opts.KeepAlive <= 0 {
		opts.KeepAlive = DefaultKeepAlive
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Epoch > 0 && opts.Instance == "" {
		opts.Instance = NewInstance()
	}
	return &Client{opts: opts, log: opts.Logger.With("broker", redact(opts.URL)), fence: newFence()}
}

// OnPresence sets the function told when a device's retained status says it
// came online or went offline (its last will included), with the number of
// the connection it names (0: not stated). Call it before Open. It runs on
// paho's delivery goroutine: it must not block.
func (c *Client) OnPresence(fn func(deviceID string, online bool, conn uint32)) {
	c.presence = fn
}

// Open connects to the broker and returns once connected, or with an error
// after ConnectTimeout. Later connection losses are repaired in the
// background until Close.
func (c *Client) Open() error {
	if err := c.open1(); err != nil {
		return err
	}
	if c.fencing() {
		return c.awaitClaim()
	}
	return nil
}

// open1 connects; Open then waits for the claim, without c.mu, which the
// delivery of the claim's echo takes.
func (c *Client) open1() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.open || c.closed {
		return errors.New("mqttclient: already opened")
	}
	opts, err := c.clientOptions()
	if err != nil {
		return err
	}
	if c.presence != nil {
		c.subs = append(c.subs, sub{filter: statusFilter, handler: c.onStatus})
	}
	if c.fencing() {
		if strings.ContainsAny(c.opts.ClientID, "+#/") {
			return fmt.Errorf("mqttclient: client ID %q: a claim topic cannot hold +, # or /", c.opts.ClientID)
		}
		c.subs = append(c.subs, sub{filter: ClaimTopic(c.opts.ClientID), handler: c.onClaim})
	}
	c.slots = make(chan struct{}, c.opts.MaxInFlight)
	c.pending = make(chan pending, c.opts.MaxInFlight)
	c.connected = make(chan struct{}, 1)
	c.ctx, c.cancel = context.WithCancelCause(context.Background())
	c.cli = mqtt.NewClient(opts)

	tok := c.cli.Connect()
	if !tok.WaitTimeout(c.opts.ConnectTimeout) {
		c.cli.Disconnect(0)
		c.cancel(fleet.ErrClosed)
		return fmt.Errorf("mqttclient: connect to %s: no CONNACK after %s", redact(c.opts.URL), c.opts.ConnectTimeout)
	}
	if err := tok.Error(); err != nil {
		c.cancel(fleet.ErrClosed)
		return fmt.Errorf("mqttclient: connect to %s: %w", redact(c.opts.URL), err)
	}
	c.open = true
	c.wg.Add(2)
	go func() {
		defer c.wg.Done()
		c.subscriber()
	}()
	go func() {
		defer c.wg.Done()
		c.reaper()
	}()
	c.log.Info("connected to the broker", "client_id", c.opts.ClientID)
	return nil
}

// awaitClaim waits, in Open, until the broker sent the client's first
// claim back, or a newer one; on failure it closes the client.
func (c *Client) awaitClaim() error {
	t := time.NewTimer(c.opts.ConnectTimeout)
	defer t.Stop()
	select {
	case <-c.fence.first:
	case <-t.C:
		return c.abortOpen(fmt.Errorf("mqttclient: claim the broker %s: the claim did not come back within %s (can this user publish and subscribe to %s?)",
			redact(c.opts.URL), c.opts.ConnectTimeout, ClaimTopic(c.opts.ClientID)))
	}
	if err := c.fenced(); err != nil {
		return c.abortOpen(err)
	}
	// The retained claim now says this one led: a stale orchestrator that
	// claims the same epoch later yields to it.
	if tok := c.publishClaim(); tok != nil {
		if err := c.wait(tok); err != nil {
			return c.abortOpen(fmt.Errorf("mqttclient: claim the broker %s: %w", redact(c.opts.URL), err))
		}
	}
	if err := c.fenced(); err != nil {
		return c.abortOpen(err)
	}
	return nil
}

// abortOpen closes a connected client whose Open fails.
func (c *Client) abortOpen(err error) error {
	_ = c.Close() // always nil
	return err
}

// clientOptions translates Options into paho's.
func (c *Client) clientOptions() (*mqtt.ClientOptions, error) {
	urls, isTLS, err := parseURLs(c.opts.URL)
	if err != nil {
		return nil, err
	}
	o := mqtt.NewClientOptions().
		SetStore(pahostore.New()). // paho's MemoryStore races on reconnect (pahostore)
		SetClientID(c.opts.ClientID).
		// A session that outlives a connection: the broker keeps the
		// subscriptions and queues device reports while the orchestrator
		// reconnects, and paho sends unacknowledged publishes again, which
		// completes their tokens (with a clean session paho would leak
		// them and their message IDs on every reconnection). At most
		// MaxInFlight publishes are unacknowledged when a connection drops,
		// and none are added while it is down, so the resend is bounded
		// (paho's own MaxResumePubInFlight has a data race in v1.5.1).
		SetCleanSession(false).
		SetOrderMatters(true). // one delivery goroutine, acks in order; see the package comment
		SetAutoReconnect(true).
		SetConnectRetry(false).
		SetConnectTimeout(c.opts.ConnectTimeout).
		SetMaxReconnectInterval(c.opts.MaxReconnectInterval).
		SetKeepAlive(c.opts.KeepAlive).
		SetWriteTimeout(DefaultWriteTimeout).
		SetDefaultPublishHandler(c.onMessage).
		SetConnectionAttemptHandler(func(u *url.URL, cfg *tls.Config) *tls.Config {
			c.attempt.Store(u.Redacted())
			return cfg
		}).
		SetOnConnectHandler(func(mqtt.Client) {
			if n := c.stats.connects.Add(1); n > 1 {
				// A reconnection: which node, after how long without one
				// (the stall a lost broker node causes the engine).
				var down time.Duration
				if t := c.lostAt.Swap(0); t != 0 {
					down = time.Since(time.Unix(0, t))
				}
				c.log.Info("reconnected to the broker", "node", c.attempt.Load(), "down_for", down.Round(time.Millisecond))
			}
			select {
			case c.connected <- struct{}{}:
			default: // a signal is pending: the subscriber will see this connection
			}
		}).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) {
			c.stats.lost.Add(1)
			c.lostAt.CompareAndSwap(0, time.Now().UnixNano())
			c.log.Warn("connection to the broker lost; reconnecting", "err", err)
		}).
		SetReconnectingHandler(func(mqtt.Client, *mqtt.ClientOptions) {
			// paho calls it before each attempt, on the goroutine that
			// connects: the gate is closed before the new connection exists
			// (the on-connect handler runs later, on a goroutine of its own).
			if c.fencing() {
				c.newConnection()
			}
			c.log.Debug("reconnecting to the broker")
		})
	for _, u := range urls {
		o.AddBroker(u)
	}
	if isTLS {
		cfg, err := c.tlsConfig()
		if err != nil {
			return nil, err
		}
		o.SetTLSConfig(cfg)
	} else if c.opts.CAFile != "" || c.opts.CertFile != "" {
		return nil, errors.New("mqttclient: TLS files given for a tcp:// broker URL; use ssl://")
	}
	if c.opts.Username != "" {
		o.SetUsername(c.opts.Username)
	}
	if c.opts.Password != "" {
		o.SetPassword(c.opts.Password)
	}
	return o, nil
}

// tlsConfig loads the CA bundle and the client certificate, if any.
func (c *Client) tlsConfig() (*tls.Config, error) {
	cfg, err := LoadTLSConfig(c.opts.CAFile, c.opts.CertFile, c.opts.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("mqttclient: %w", err)
	}
	return cfg, nil
}

// LoadTLSConfig returns the TLS configuration of an MQTT client: the CAs of
// caFile (PEM; empty: the system roots) and the client certificate of
// certFile and keyFile (PEM; both or neither).
func LoadTLSConfig(caFile, certFile, keyFile string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("read CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s holds no PEM certificate", caFile)
		}
		cfg.RootCAs = pool
	}
	if (certFile == "") != (keyFile == "") {
		return nil, errors.New("a client certificate needs both a certificate and a key file")
	}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("load client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// Close disconnects and waits for the client's goroutines. It is idempotent.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	wasOpen := c.open
	c.mu.Unlock()
	if !wasOpen {
		return nil
	}
	c.cancel(fleet.ErrClosed)
	c.cli.Disconnect(quiesce)
	c.wg.Wait()
	return nil
}

func (c *Client) isOpen() bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.open && !c.closed
}

// Publish sends payload to topic. QoS 1 publishes take one of MaxInFlight
// slots until the broker acknowledges them; when none is free for
// PublishWait, Publish returns ErrBusy. While the client reconnects it
// returns ErrNotConnected at once: the engine's timers resend. QoS 0
// publishes (the engine's chunks) take no slot: paho hands them to the socket
// writer before returning, which blocks for at most the write timeout, and
// the engine's window bounds them per device.
func (c *Client) Publish(topic string, payload []byte, retain bool, qos byte) error {
	if !c.isOpen() {
		return fmt.Errorf("publish %s: %w", topic, fleet.ErrClosed)
	}
	if err := c.fenced(); err != nil {
		return fmt.Errorf("publish %s: %w", topic, err)
	}
	if !c.cli.IsConnectionOpen() {
		c.stats.notConnected.Add(1)
		return fmt.Errorf("publish %s: %w", topic, ErrNotConnected)
	}
	if err := c.gate(); err != nil {
		return fmt.Errorf("publish %s: %w", topic, err)
	}
	// paho writes the packet later, on its own goroutine, and the engine
	// reuses its chunk buffer as soon as Publish returns.
	payload = bytes.Clone(payload)
	if qos == 0 {
		tok := c.cli.Publish(topic, 0, retain, payload)
		c.stats.published.Add(1)
		if tok.WaitTimeout(0) && tok.Error() != nil {
			return fmt.Errorf("publish %s: %w", topic, tok.Error())
		}
		return nil
	}
	if err := c.acquire(); err != nil {
		return fmt.Errorf("publish %s: %w", topic, err)
	}
	tok := c.cli.Publish(topic, qos, retain, payload)
	c.stats.published.Add(1)
	// Never blocks: pending has room for every slot.
	c.pending <- pending{tok: tok, deadline: time.Now().Add(c.opts.AckTimeout)}
	return nil
}

// acquire takes a publish slot, waiting at most PublishWait.
func (c *Client) acquire() error {
	select {
	case c.slots <- struct{}{}:
		return nil
	default:
	}
	t := time.NewTimer(c.opts.PublishWait)
	defer t.Stop()
	select {
	case c.slots <- struct{}{}:
		return nil
	case <-t.C:
		c.stats.busy.Add(1)
		return ErrBusy
	case <-c.ctx.Done():
		return fleet.ErrClosed
	}
}

// reaper gives slots back as publishes complete, oldest first (a broker
// acknowledges one connection's publishes in order), or when AckTimeout
// passes without an acknowledgement.
func (c *Client) reaper() {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		var p pending
		select {
		case <-c.ctx.Done():
			return
		case p = <-c.pending:
		}
		timer.Reset(time.Until(p.deadline))
		select {
		case <-c.ctx.Done():
			return
		case <-p.tok.Done():
			if err := p.tok.Error(); err != nil {
				c.stats.pubErrors.Add(1)
				c.log.Debug("publish failed", "err", err)
			}
		case <-timer.C:
			c.stats.ackTimeouts.Add(1)
		}
		timer.Stop()
		<-c.slots
	}
}

// Subscribe calls handler for every message matching filter. It subscribes
// at the broker, with QoS 1, unless a broader filter already covers it, and
// again after every reconnection. It waits for the broker's SUBACK while
// connected.
func (c *Client) Subscribe(filter string, handler func(topic string, payload []byte)) error {
	if handler == nil {
		return fmt.Errorf("subscribe %s: nil handler", filter)
	}
	if !c.isOpen() {
		return fmt.Errorf("subscribe %s: %w", filter, fleet.ErrClosed)
	}
	c.mu.Lock()
	c.subs = append(c.subs, sub{filter: filter, handler: handler})
	c.mu.Unlock()
	c.subMu.Lock()
	defer c.subMu.Unlock()
	if !c.cli.IsConnectionOpen() {
		return nil // the subscriber goroutine subscribes on the next connection
	}
	if err := c.syncSubs(c.wanted()); err != nil {
		return fmt.Errorf("subscribe %s: %w", filter, err)
	}
	return nil
}

// wanted is the minimal set of broker filters for the local subscriptions.
func (c *Client) wanted() []string {
	c.mu.RLock()
	defer c.mu.RUnlock()
	fs := make([]string, len(c.subs))
	for i, s := range c.subs {
		fs[i] = s.filter
	}
	return minimal(fs)
}

// syncSubs subscribes the filters of want not yet subscribed on this
// connection, then unsubscribes those that want no longer holds (a broader
// filter covers them: without that, the broker would deliver a message once
// per matching subscription). The caller holds subMu.
func (c *Client) syncSubs(want []string) error {
	add := map[string]byte{}
	for _, f := range want {
		if !slices.Contains(c.brokerSubs, f) {
			add[f] = 1
		}
	}
	if len(add) > 0 {
		tok := c.cli.SubscribeMultiple(add, nil)
		if err := c.wait(tok); err != nil {
			return err
		}
		if st, ok := tok.(*mqtt.SubscribeToken); ok {
			for f, code := range st.Result() {
				if code == 0x80 {
					return fmt.Errorf("broker refused the subscription to %s (check its ACL for this user)", f)
				}
			}
		}
	}
	var drop []string
	for _, f := range c.brokerSubs {
		if !slices.Contains(want, f) {
			drop = append(drop, f)
		}
	}
	if len(drop) > 0 {
		if err := c.wait(c.cli.Unsubscribe(drop...)); err != nil {
			c.log.Warn("unsubscribe covered filters", "filters", drop, "err", err)
		}
	}
	c.brokerSubs = want
	return nil
}

// wait waits for a token, at most ConnectTimeout and not past Close.
func (c *Client) wait(tok mqtt.Token) error {
	t := time.NewTimer(c.opts.ConnectTimeout)
	defer t.Stop()
	select {
	case <-tok.Done():
		return tok.Error()
	case <-t.C:
		return fmt.Errorf("no answer from the broker after %s", c.opts.ConnectTimeout)
	case <-c.ctx.Done():
		return fleet.ErrClosed
	}
}

// subscriber subscribes again after every connection: the session may be
// new (a broker restarted without persistence has forgotten it).
func (c *Client) subscriber() {
	retry := time.NewTimer(0)
	if !retry.Stop() {
		<-retry.C
	}
	defer retry.Stop()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-c.Fenced():
			return // onClaim disconnected: the broker is another's
		case <-c.connected:
		case <-retry.C:
		}
		c.subMu.Lock()
		c.brokerSubs = nil
		var err error
		if c.cli.IsConnectionOpen() {
			err = c.syncSubs(c.wanted())
			if err == nil && c.fencing() {
				c.publishClaim() // after the SUBACK: its echo follows the retained claim
			}
		}
		c.subMu.Unlock()
		if err != nil && c.ctx.Err() == nil {
			c.log.Warn("subscribe after connecting", "err", err, "retry_in", resubscribeRetry)
			retry.Reset(resubscribeRetry)
		}
	}
}

// onMessage is paho's handler for every message: it calls every matching
// local handler in turn. It runs on paho's delivery goroutine.
func (c *Client) onMessage(_ mqtt.Client, m mqtt.Message) {
	c.stats.received.Add(1)
	topic, payload := m.Topic(), m.Payload()
	c.mu.RLock()
	defer c.mu.RUnlock()
	for _, s := range c.subs {
		if protocol.MatchTopic(s.filter, topic) {
			s.handler(topic, payload)
		}
	}
	// A retained message is sent because of a new subscription (MQTT
	// 3.1.1, 3.3.1.3), not because its device just published it.
	if m.Retained() && c.found != nil && protocol.MatchTopic(statusFilter, topic) {
		c.onFound(topic, payload)
	}
}

// onStatus turns a device's retained status into a presence callback.
func (c *Client) onStatus(topic string, payload []byte) {
	id, kind, ok := protocol.ParseUpTopic(topic)
	if !ok || kind != protocol.KindStatus {
		return
	}
	if len(payload) == 0 {
		return // a retained status being cleared
	}
	online, conn, err := decodeStatus(payload)
	if err != nil {
		c.stats.badStatus.Add(1)
		c.log.Debug("bad device status", "device", id, "err", err)
		return
	}
	c.stats.presence.Add(1)
	c.presence(id, online, conn)
}

// OnFoundOnline sets the function told of each device whose retained
// status, sent when the client subscribes, says it is online: it was
// connected and subscribed before, and says no hello until it reconnects
// (an orchestrator that restarted or took over, docs/DEPLOY.md). Call it
// before Open; it runs on paho's delivery goroutine and must not block.
func (c *Client) OnFoundOnline(fn func(deviceID string)) {
	c.found = fn
}

// onFound passes a retained online status to the found callback.
func (c *Client) onFound(topic string, payload []byte) {
	id, kind, ok := protocol.ParseUpTopic(topic)
	if !ok || kind != protocol.KindStatus || len(payload) == 0 {
		return
	}
	if online, _, err := decodeStatus(payload); err == nil && online {
		c.found(id)
	}
}

// Connected reports whether the client has a connection to the broker now.
func (c *Client) Connected() bool {
	return c.isOpen() && c.cli.IsConnectionOpen()
}

// Stats returns the client's counters.
func (c *Client) Stats() Stats {
	return Stats{
		Broker:          redact(c.opts.URL),
		Connected:       c.Connected(),
		Connects:        c.stats.connects.Load(),
		ConnectionsLost: c.stats.lost.Load(),
		Published:       c.stats.published.Load(),
		InFlight:        len(c.slots),
		PublishErrors:   c.stats.pubErrors.Load(),
		AckTimeouts:     c.stats.ackTimeouts.Load(),
		NotConnected:    c.stats.notConnected.Load(),
		Busy:            c.stats.busy.Load(),
		Received:        c.stats.received.Load(),
		Presence:        c.stats.presence.Load(),
		BadStatus:       c.stats.badStatus.Load(),
		Leading:         c.Leading(),
		Fenced:          c.fenced() != nil,
		BadClaims:       c.stats.badClaims.Load(),
	}
}

// redact drops a password from a broker URL for logs.
func redact(raw string) string {
	if urls := SplitURLs(raw); len(urls) > 1 {
		for i, u := range urls {
			urls[i] = redact(u)
		}
		return strings.Join(urls, ",")
	}
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		return raw
	}
	return u.Redacted()
}
