// Package broker is flota's embedded MQTT broker: mochi-mqtt with a TCP
// listener (and optionally a TLS one), a hook that authenticates clients and
// confines every client to its own topics, presence tracking per connection,
// and the inline publish/subscribe that the engine uses as its transport.
//
// # Topic ACL
//
// Every client ID must be a valid device ID (fleet.ValidDeviceID: 1 to 64 of
// [A-Za-z0-9._-], not "inline"); a connection with another ID is refused with
// CONNACK "identifier rejected" (an MQTT 3.1.1 client that sends an empty ID
// with a clean session gets a valid one assigned). With {id} the connection's
// own client ID:
//
//	write  flota/devices/{id}/up/{kind}, kind one of hello, report, ack
//	       and status (Options.UpKinds)
//	read   flota/devices/{id}/down    and everything below it
//	       flota/events               and everything below it
//	       flota/status               and everything below it
//
// Nothing else is allowed. mochi asks the same question for a publish (the
// topic), a subscribe (the filter) and every delivery (the topic), so a filter
// is judged like a topic: it is allowed only if its literal prefix lies inside
// one read tree, which means everything it can match is readable. For device A,
// flota/devices/A/down/#, flota/events/# and flota/status/updates/+ are allowed;
// flota/devices/+/down/#, flota/#, #, $SYS/# and $share/... are not.
//
// A refused subscription gets SUBACK 0x80. A refused QoS 0 publish is dropped
// silently; a refused QoS 1 or 2 publish disconnects an MQTT 3.1.1 client
// (mochi's behaviour; an MQTT 5 client gets PUBACK 0x87 instead). A will
// message is a publish too: a connection whose will topic it may not write is
// refused at connect. The inline client (the orchestrator itself) bypasses the
// ACL.
//
// # Limits
//
// Only the inline client retains: a client's retained publish or will is
// delivered without the retain flag (retain.go), so no client makes the
// broker hold a message. Every topic a client publishes to, its will topic
// and every filter it subscribes or unsubscribes are bounded in length and
// levels (Options.Topics, 256 bytes and 16 levels by default), checked
// before mochi's topic index sees them: a publish over them is refused like
// one the ACL denies, a connection with such a will is refused, such a filter
// gets SUBACK or UNSUBACK 0x8F (0x80 in MQTT 3.1.1). A client holds at most
// Options.Topics.MaxSubscriptions filters, a persistent session included,
// and each connection's SUBSCRIBE packets pass a token bucket; a filter over
// either gets SUBACK 0x97 (0x80). limits.go holds them.
//
// # Authentication and roles
//
// Options.Authenticate is asked at every CONNECT (after the client ID check,
// before mochi takes over an existing session with that ID) and returns the
// connection's role, kept with the connection: a device gets the rules above;
// a monitor may read the events and status trees only and write nothing. On a
// TLS listener that verifies client certificates, the certificate's common
// name must be the client ID and the connection is marked CertVerified. A nil
// Authenticate makes every valid client ID a device (tests, benchmarks).
//
// Disconnect closes a client's connection at once (a revoked account). Each
// client ID's publishes pass a token bucket (Options.RateLimit) that
// survives its reconnections; over it, messages are acknowledged and
// dropped. A client ID that connects more than Options.ConnectRate times a
// minute is refused for Options.ConnectBan (identity.go).
//
// # Connection limits
//
// The listeners are the broker's own (conns.go): a failed accept (out of
// file descriptors) is retried after a backoff and reported by Degraded;
// connections over Options.MaxConnections, or over the caps on those not
// authenticated yet (MaxUnauthenticated, MaxUnauthenticatedPerIP), are
// closed at accept; a connection must send its CONNECT within
// ConnectTimeout, and one larger than MaxConnectSize is refused before its
// body is read.
package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/flotaio/flota/internal/auth"
	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/logsafe"
)

// Defaults of Options.
const (
	DefaultAddr          = "127.0.0.1:1883"
	DefaultMaxPacketSize = 128 * 1024 // a 64 KiB chunk plus its frame and topic, with room to spare

	// DefaultSessionExpiry bounds how long mochi keeps the session of a
	// disconnected client that asked for a persistent one. The protocol
	// resumes from the device's own offset and agents resubscribe on every
	// connect, so an old session is worth little and must not pile up.
	DefaultSessionExpiry = 60 * 60 // seconds

	listenerID    = "tcp"
	tlsListenerID = "tls"

	// ClientReadBuffer is each connection's read buffer (see New).
	ClientReadBuffer = 512
)

// Options configure a Broker. Zero values take the defaults above.
type Options struct {
	// Addr is the TCP address to listen on, e.g. "127.0.0.1:1883" or ":0".
	Addr string
	// Window is the largest number of chunks any update keeps in flight per
	// device; it sizes the per-client queues. Default fleet.DefaultWindow.
	Window int
	// MaxPacketSize is the largest MQTT packet accepted. Default 128 KiB.
	MaxPacketSize uint32
	// Logger receives the broker's logs; mochi's own logs go to it at warn
	// level and above only. Nil discards.
	Logger *slog.Logger
	// MonitorStall bounds how long a monitor that subscribed at QoS 1 may
	// hold the publisher of an event when its queue is full (monitor.go).
	// Default DefaultMonitorStall; negative drops at once, as for devices.
	MonitorStall time.Duration
	// Authenticate, when set, is asked about every connection whose client
	// ID is valid, and returns the role the ACL then applies. Nil accepts any
	// valid client ID as a device.
	Authenticate func(ctx context.Context, c auth.Connect) (fleet.Role, error)
	// RateLimit is the sustained number of messages per second one client
	// may publish, RateBurst the size of its burst; over it, messages are
	// acknowledged and dropped (Stats.RateLimited). Zero values take
	// DefaultRateLimit and DefaultRateBurst; a negative RateLimit disables
	// the limit.
	RateLimit float64
	RateBurst int
	// ConnectRate is how many established connections one client ID may
	// make in a minute (the burst, refilled at that rate); over it, its
	// connections are refused for ConnectBan (Stats.ConnectRateLimited).
	// Zero values take DefaultConnectRate and DefaultConnectBan; a
	// negative ConnectRate disables the limit. The rate limit and this
	// limit are kept per client ID, across its connections (identity.go).
	ConnectRate int
	ConnectBan  time.Duration
	// TLSAddr, when set with TLSConfig, adds a TLS listener. A TLSConfig
	// that verifies client certificates (ClientCAs and
	// RequireAndVerifyClientCert) makes it mutual TLS: the certificate's
	// common name must be the client ID, and stands for the secret.
	TLSAddr   string
	TLSConfig *tls.Config
	// Topics bounds topics, filters, subscriptions and the SUBSCRIBE rate
	// of each client (limits.go); zero fields take their defaults.
	Topics TopicLimits
	// UpKinds are the message kinds a device may publish, each on
	// flota/devices/{id}/up/{kind}; nil means the protocol's hello, report,
	// ack and status.
	UpKinds []string

	// Connection limits, on both listeners together (conns.go). Zero
	// values take the defaults; a negative value disables a limit.
	//
	// ConnectTimeout closes a connection that has not sent a complete
	// CONNECT this long after it was accepted. Default
	// DefaultConnectTimeout.
	ConnectTimeout time.Duration
	// MaxConnections caps the open connections; over it a new one is
	// closed at once. Default DefaultMaxConnections of the process's
	// RLIMIT_NOFILE.
	MaxConnections int
	// MaxUnauthenticated caps the connections that have not authenticated
	// yet, MaxUnauthenticatedPerIP those of one source address (IPv6: one
	// /64). Defaults DefaultMaxUnauthenticated, DefaultMaxUnauthenticatedPerIP.
	MaxUnauthenticated      int
	MaxUnauthenticatedPerIP int
	// MaxConnectSize is the largest CONNECT packet (remaining length)
	// read; a larger one closes the connection before its body is read.
	// Default DefaultMaxConnectSize.
	MaxConnectSize uint32
	// LogLimit bounds the log lines (info and above) each client causes,
	// mochi's included (logsafe.Limiter, Stats.LogLinesSuppressed).
	LogLimit logsafe.Limit
}

// Stats are the broker's counters since it opened.
type Stats struct {
	Clients         int   `json:"clients"`          // connections with an established session
	MessagesDropped int64 `json:"messages_dropped"` // deliveries dropped on a full client queue or inflight store
	AuthRefused     int64 `json:"auth_refused"`     // connections refused
	ACLDenied       int64 `json:"acl_denied"`       // publishes, subscriptions and deliveries denied by the ACL
	RateLimited     int64 `json:"rate_limited"`     // publishes dropped by the per-client rate limit
	// ConnectRateLimited counts connections refused by the reconnect limit.
	ConnectRateLimited int64 `json:"connect_rate_limited"`
	// Identities is the number of client IDs whose limits are kept.
	Identities int `json:"identities"`
	// TopicRefused counts publishes, wills and (un)subscribe filters
	// refused for their length or depth (Options.Topics).
	TopicRefused int64 `json:"topic_refused"`
	// RetainRefused counts client publishes and wills delivered without
	// their retain flag (a device's presence excepted, which the protocol
	// retains and the broker never keeps).
	RetainRefused int64 `json:"retain_refused"`
	// SlowMonitors counts monitors disconnected because an event for them
	// at QoS 1 waited out Options.MonitorStall (monitor.go).
	SlowMonitors int64 `json:"slow_monitors"`
	// SubscriptionsRefused counts filters refused over a client's
	// subscription quota, SubscribeRateLimited SUBSCRIBE packets refused
	// over its SUBSCRIBE rate.
	SubscriptionsRefused int64 `json:"subscriptions_refused"`
	SubscribeRateLimited int64 `json:"subscribe_rate_limited"`

	Connections     int   `json:"connections"`       // open connections, unauthenticated ones included
	Unauthenticated int   `json:"unauthenticated"`   // connections that have not authenticated yet
	ConnRefused     int64 `json:"conn_refused"`      // connections closed at accept: MaxConnections reached
	UnauthRefused   int64 `json:"unauth_refused"`    // connections closed at accept: MaxUnauthenticated reached
	UnauthIPRefused int64 `json:"unauth_ip_refused"` // connections closed at accept: MaxUnauthenticatedPerIP reached
	ConnectTimeouts int64 `json:"connect_timeouts"`  // connections closed for sending no CONNECT within ConnectTimeout
	ConnectTooLarge int64 `json:"connect_too_large"` // connections closed for a CONNECT over MaxConnectSize
	AcceptErrors    int64 `json:"accept_errors"`     // failed accepts (e.g. out of file descriptors), retried
	// LogLinesSuppressed counts log lines dropped by the per-client log limit.
	LogLinesSuppressed int64 `json:"log_lines_suppressed"`
}

// Broker is the embedded MQTT broker. It implements the engine's transport
// (Publish and Subscribe) through mochi's inline client.
type Broker struct {
	opts Options
	log  *slog.Logger
	srv  *mqtt.Server

	subID atomic.Int64 // last inline subscription identifier handed out

	authRefused  atomic.Int64
	aclDenied    atomic.Int64
	queueDrops   atomic.Int64 // deliveries dropped on a full outbound queue (OnPublishDropped)
	slowMonitors atomic.Int64 // monitors disconnected for a QoS 1 event they could not take (monitor.go)
	rateLimited  atomic.Int64
	logs         *logsafe.Limiter // per-client log limit under log

	connectLimited atomic.Int64 // connections refused by the reconnect limit

	// Refusals of limits.go and retain.go.
	topicRefused   atomic.Int64
	retainRefused  atomic.Int64
	subsRefused    atomic.Int64
	subRateLimited atomic.Int64

	clients states     // per-connection role, identity and subscription limits
	ids     identities // per-client-ID limits (identity.go)
	gate    *gate      // connection limits of the listeners (conns.go)

	onPresence func(clientID string, online bool) // set before Open, read-only after

	statuses statusStore // retained device statuses, kept out of mochi (status.go)

	// feedsMu guards feeds and every feed's fields; feedCount is
	// len(feeds), read without the lock to skip it when there is none.
	// feedWG counts the delivery goroutines.
	feedsMu   sync.Mutex
	feeds     map[*mqtt.Client]*feed
	feedCount atomic.Int32
	feedWG    sync.WaitGroup

	// notifyMu serialises each presence change with its onPresence call, so
	// that the calls reach the callback in the order the changes happened.
	// It is taken before mu, never after.
	notifyMu sync.Mutex

	mu      sync.Mutex              // guards the fields below
	conns   map[string]*mqtt.Client // client ID -> its current connection
	addr    string                  // bound listener address, set by Open
	tlsAddr string                  // bound TLS listener address, set by Open
	state   int                     // stateNew, stateOpen or stateClosed

	closeOnce sync.Once
}

const (
	stateNew = iota
	stateOpen
	stateClosed
)

// New returns a broker configured by opts; Open starts it.
func New(opts Options) *Broker {
	if opts.Addr == "" {
		opts.Addr = DefaultAddr
	}
	if opts.Window <= 0 {
		opts.Window = fleet.DefaultWindow
	}
	if opts.RateLimit == 0 {
		opts.RateLimit = DefaultRateLimit
	}
	if opts.RateBurst <= 0 {
		opts.RateBurst = DefaultRateBurst
	}
	if opts.ConnectRate == 0 {
		opts.ConnectRate = DefaultConnectRate
	}
	if opts.ConnectBan <= 0 {
		opts.ConnectBan = DefaultConnectBan
	}
	if opts.MaxPacketSize == 0 {
		opts.MaxPacketSize = DefaultMaxPacketSize
	}
	if opts.MonitorStall == 0 {
		opts.MonitorStall = DefaultMonitorStall
	}
	opts.Topics = opts.Topics.withDefaults()
	if opts.UpKinds == nil {
		opts.UpKinds = defaultUpKinds
	}
	connLimitDefaults(&opts)
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	logs := logsafe.NewLimiter(opts.LogLimit)
	log = logs.Logger(log)

	caps := mqtt.NewDefaultServerCapabilities()
	pending := writesPending(opts.Window)
	// mochi preallocates a channel of MaximumClientWritesPending packets for
	// every client (8192 by default: about 93 KB of RSS per idle connection)
	// and drops a delivery when it is full, even at QoS 1. A device needs
	// room for a window of chunks plus a few control messages; a monitor
	// watching the event stream needs headroom for bursts of events. Four
	// windows plus 64, and never below 256, covers both at about 2 KB a client.
	caps.MaximumClientWritesPending = int32(pending)
	// Unacknowledged QoS 1/2 deliveries kept per client, beyond which mochi
	// drops a delivery ("client store quota reached"). Chunks go at QoS 0
	// and a device has a few control messages open at most, so this bound is
	// for monitors: one that subscribed at QoS 1 and acks slower than a
	// large rollout emits events must not lose them. The inflight store
	// costs memory only for what is actually unacknowledged (about 300 bytes
	// an event).
	caps.MaximumInflight = uint16(max(pending, minInflight))
	// QoS 2 messages a client may have open towards the broker (announced to
	// MQTT 5 clients; mochi disconnects a client that exceeds it).
	caps.ReceiveMaximum = uint16(pending)
	caps.MaximumPacketSize = opts.MaxPacketSize
	// The default 24 h would delete retained status summaries after a day.
	// In mochi 0 means no broker limit: a message expires only if its
	// publisher set an expiry (MQTT 5), retained ones when replaced.
	caps.MaximumMessageExpiryInterval = 0
	caps.MaximumSessionExpiryInterval = DefaultSessionExpiry

	b := &Broker{
		opts:  opts,
		log:   log,
		logs:  logs,
		conns: make(map[string]*mqtt.Client),
		feeds: make(map[*mqtt.Client]*feed),
		gate:  newGate(opts, log),
	}
	b.srv = mqtt.New(&mqtt.Options{
		Capabilities: caps,
		// Devices send small messages (acks, reports, a hello); a larger
		// packet is read past the buffer straight into its payload. 512
		// bytes instead of mochi's 2 KiB saves 15 MB at 10,000 devices.
		ClientNetReadBufferSize: ClientReadBuffer,
		InlineClient:            true,
		SysTopicResendInterval:  10,
		Logger:                  slog.New(minLevel{h: log.Handler(), min: slog.LevelWarn}).With("component", "mqtt"),
		MaximumConnectSize:      opts.MaxConnectSize,
	})
	return b
}

// writesPending sizes a client's outbound queue to the window; see New.
// minInflight is the least number of unacknowledged QoS 1/2 deliveries the
// broker keeps per client (see New).
const minInflight = 4096

func writesPending(window int) int {
	return min(max(4*window+64, 256), 65535)
}

// OnPresence sets the function called when a client's session is established
// (online) and when that connection ends (offline). A connection taken over
// by a new one with the same client ID reports nothing when it ends (if mochi
// happens to finish the old connection before establishing the new session,
// the calls are offline then online: the last call is always the truth). fn runs
// on the connection's goroutine, one call at a time: it must not block. Call
// it before Open.
func (b *Broker) OnPresence(fn func(clientID string, online bool)) {
	b.onPresence = fn
}

// Open adds the hooks and the TCP listener and starts serving. When it
// returns, the broker is listening and Addr reports the bound address.
func (b *Broker) Open() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state {
	case stateOpen:
		return errors.New("broker already open")
	case stateClosed:
		return fmt.Errorf("open broker: %w", fleet.ErrClosed)
	}

	tcp := newListener(listenerID, b.opts.Addr, nil, b.gate)
	var tlsLn *listener
	if b.opts.TLSAddr != "" && b.opts.TLSConfig != nil {
		tlsLn = newListener(tlsListenerID, b.opts.TLSAddr, b.opts.TLSConfig, b.gate)
	}
	if err := b.start(tcp, tlsLn); err != nil {
		// A failed Open leaves a broker that cannot be opened again: mochi
		// has no way to remove a hook or listener once added.
		b.state = stateClosed
		_ = b.srv.Close() // closes whatever was added; mochi's Close never fails
		return err
	}
	b.addr = tcp.Address()
	if tlsLn != nil {
		b.tlsAddr = tlsLn.Address()
		b.log.Info("mqtt tls listening", "addr", b.tlsAddr, "mutual", b.opts.TLSConfig.ClientAuth == tls.RequireAndVerifyClientCert)
	}
	b.state = stateOpen
	b.log.Info("mqtt broker listening", "addr", b.addr, "client_queue", b.srv.Options.Capabilities.MaximumClientWritesPending,
		"max_connections", b.gate.maxTotal, "max_unauthenticated", b.gate.maxUnauth, "max_unauthenticated_per_ip", b.gate.maxPerIP)
	return nil
}

func (b *Broker) start(tcp, tlsLn *listener) error {
	if err := b.srv.AddHook(&hook{b: b}, nil); err != nil {
		return fmt.Errorf("add broker hook: %w", err)
	}
	if err := b.srv.AddListener(tcp); err != nil {
		return fmt.Errorf("listen on %s: %w", b.opts.Addr, err)
	}
	if tlsLn != nil {
		if err := b.srv.AddListener(tlsLn); err != nil {
			return fmt.Errorf("listen on %s: %w", b.opts.TLSAddr, err)
		}
	}
	if err := b.srv.Serve(); err != nil {
		return fmt.Errorf("serve mqtt: %w", err)
	}
	return nil
}

// Addr returns the address the broker listens on (the bound one once open,
// so a ":0" port is resolved).
func (b *Broker) Addr() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.addr != "" {
		return b.addr
	}
	return b.opts.Addr
}

// TLSAddr returns the bound address of the TLS listener, or "" without one.
func (b *Broker) TLSAddr() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.tlsAddr
}

// Close disconnects every client, stops the listener and waits for the
// connections to end. Presence callbacks for those connections run before it
// returns. It is idempotent.
func (b *Broker) Close() error {
	b.closeOnce.Do(func() {
		b.mu.Lock()
		wasOpen := b.state == stateOpen
		b.state = stateClosed
		b.mu.Unlock()
		if wasOpen {
			// mochi's own closer (Server.closeListenerClients) read-locks
			// the client map twice (Clients.GetByListener calls Len under
			// its read lock); a client ending at that moment asks for the
			// write lock in between, and both wait forever. Closing the
			// listeners first with a closer that locks once makes
			// Server.Close skip its own: a listener runs its closer once.
			b.srv.Listeners.CloseAll(b.closeListenerClients)
			_ = b.srv.Close() // always nil; it waits for every client goroutine
			b.feedWG.Wait()   // every connection has ended: so has every delivery
			b.log.Info("mqtt broker closed")
		}
	})
	return nil
}

// closeListenerClients disconnects the clients of one listener as the
// server shuts down.
func (b *Broker) closeListenerClients(listener string) {
	for _, cl := range b.srv.Clients.GetAll() {
		if cl.Net.Listener == listener && !cl.Closed() {
			_ = b.srv.DisconnectClient(cl, packets.ErrServerShuttingDown)
		}
	}
}

func (b *Broker) closed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.state == stateClosed
}

// Publish sends payload to every subscriber of topic, as the broker itself:
// no ACL applies. Each client subscriber gets its own copy, so the caller may
// reuse payload once Publish returns; inline handlers run before it returns.
// A delivery dropped on a full client queue is not an error here (see Stats).
//
// A retained message on a device status topic (flota/status/devices/...) is
// kept by the broker, not by mochi, and goes to current subscribers without
// the retain flag; new subscribers get it as a retained message (status.go).
// Concurrent publishes to one topic race, as they do in mochi.
func (b *Broker) Publish(topic string, payload []byte, retain bool, qos byte) error {
	if b.closed() {
		return fmt.Errorf("publish %s: %w", topic, fleet.ErrClosed)
	}
	if retain && strings.HasPrefix(topic, deviceStatusPrefix) {
		b.statuses.put(topic, payload)
		retain = false
	}
	if err := b.srv.Publish(topic, payload, retain, qos); err != nil {
		return fmt.Errorf("publish %s: %w", topic, err)
	}
	return nil
}

// Subscribe calls handler for every message published on a topic matching
// filter, including retained ones (device statuses too) at once, before
// Subscribe returns. handler runs on the publisher's connection goroutine:
// it must hand the message off and return. The payload is not reused by the
// broker but is shared with other inline subscribers: do not modify it.
func (b *Broker) Subscribe(filter string, handler func(topic string, payload []byte)) error {
	if handler == nil {
		return fmt.Errorf("subscribe %s: nil handler", filter)
	}
	if b.closed() {
		return fmt.Errorf("subscribe %s: %w", filter, fleet.ErrClosed)
	}
	id := int(b.subID.Add(1))
	err := b.srv.Subscribe(filter, id, func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
		handler(pk.TopicName, pk.Payload)
	})
	if err != nil {
		return fmt.Errorf("subscribe %s: %w", filter, err)
	}
	if wantsStoredStatuses(packets.Subscription{Filter: filter}) {
		entries := b.statuses.match(filter)
		sortStatuses(entries)
		_ = b.statuses.replay(entries, func(topic string, payload []byte, _ bool) error { // never fails
			handler(topic, payload)
			return nil
		})
	}
	return nil
}

// Online reports whether clientID has a connection with an established session.
func (b *Broker) Online(clientID string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	_, ok := b.conns[clientID]
	return ok
}

// Connected returns the number of clients online.
func (b *Broker) Connected() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.conns)
}

// Stats returns the broker's counters.
func (b *Broker) Stats() Stats {
	info := b.srv.Info
	s := Stats{
		Clients: b.Connected(),
		// The hook counts the same queue drops as info.MessagesDropped;
		// InflightDropped (inflight store full) reaches no hook.
		MessagesDropped: max(b.queueDrops.Load(), atomic.LoadInt64(&info.MessagesDropped)) +
			atomic.LoadInt64(&info.InflightDropped),
		AuthRefused: b.authRefused.Load(),
		ACLDenied:   b.aclDenied.Load(),
		RateLimited: b.rateLimited.Load(),

		ConnectRateLimited:   b.connectLimited.Load(),
		Identities:           b.identityCount(),
		TopicRefused:         b.topicRefused.Load(),
		RetainRefused:        b.retainRefused.Load(),
		SlowMonitors:         b.slowMonitors.Load(),
		SubscriptionsRefused: b.subsRefused.Load(),
		SubscribeRateLimited: b.subRateLimited.Load(),
		LogLinesSuppressed:   b.logs.Suppressed(),
	}
	b.gate.stats(&s)
	return s
}

// sessionUp records cl as clientID's current connection and reports it online.
func (b *Broker) sessionUp(cl *mqtt.Client) {
	b.notifyMu.Lock()
	defer b.notifyMu.Unlock()
	b.mu.Lock()
	b.conns[cl.ID] = cl
	b.mu.Unlock()
	b.log.Debug("client online", "client", cl.ID, "remote", cl.Net.Remote)
	if b.onPresence != nil {
		b.onPresence(cl.ID, true)
	}
}

// sessionDown reports clientID offline if cl is still its current
// connection; the end of a connection that was taken over reports nothing.
func (b *Broker) sessionDown(cl *mqtt.Client, cause error) {
	b.notifyMu.Lock()
	defer b.notifyMu.Unlock()
	b.mu.Lock()
	current := b.conns[cl.ID] == cl
	if current {
		delete(b.conns, cl.ID)
	}
	b.mu.Unlock()
	if !current {
		b.log.Debug("taken-over connection ended", "client", cl.ID, "remote", cl.Net.Remote)
		return
	}
	b.log.Debug("client offline", "client", cl.ID, "remote", cl.Net.Remote, "cause", cause)
	if b.onPresence != nil {
		b.onPresence(cl.ID, false)
	}
}

// minLevel is a slog.Handler that passes on records at min or above only; it
// quiets mochi, which logs every connection at info. It also redacts what
// mochi may log of a client's packets (logs.go).
type minLevel struct {
	h   slog.Handler
	min slog.Level
}

func (m minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= m.min && m.h.Enabled(ctx, l)
}

// Handle passes r on, except that it demotes to debug the message-less warning
// mochi's listener logs whenever a connection ends with an error: a device
// that reboots or loses its network (or a refused connection, already logged
// by the hook) is routine in a fleet, not a warning.
func (m minLevel) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == "" {
		if !m.h.Enabled(ctx, slog.LevelDebug) {
			return nil
		}
		r.Level, r.Message = slog.LevelDebug, "connection ended"
	}
	return m.h.Handle(ctx, redactRecord(r))
}

func (m minLevel) WithAttrs(attrs []slog.Attr) slog.Handler {
	return minLevel{h: m.h.WithAttrs(redactAttrs(attrs)), min: m.min}
}

func (m minLevel) WithGroup(name string) slog.Handler {
	return minLevel{h: m.h.WithGroup(name), min: m.min}
}
