// Package agent is the device side of flota's protocol v1: a reference agent
// that connects to an MQTT broker with paho, announces itself, accepts offers
// whose ed25519 signature verifies (when it has a public key, verify.go),
// receives the chunked image with cumulative acks, verifies its SHA-256,
// installs it and reboots into the new version, and resumes a transfer
// byte-exactly after a disconnect or, with a state file, a restart.
//
// A Go program on a device embeds it with a Device (device.go), which
// stores the image, installs it, reboots and confirms the boot;
// cmd/flota-agent is such a program for Linux, driven by shell hooks.
// Without a Device the install and the reboot are simulated: cmd/devicesim
// runs thousands of such agents in one process, so an agent keeps no image
// in memory, only a running hash and the offset it holds.
//
// Concurrency: paho's message handler only hands messages to one goroutine
// per agent through a bounded queue (dropping when it is full; the
// orchestrator recovers lost chunks); that goroutine owns all protocol state.
package agent

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/pahostore"
	"github.com/flotaio/flota/internal/protocol"
)

// Defaults for the zero fields of a Config.
const (
	DefaultRebootDelay    = time.Second
	DefaultReconnectDelay = 200 * time.Millisecond
	DefaultRetryInterval  = time.Second
	DefaultConnectTimeout = 30 * time.Second
	DefaultDialTimeout    = 10 * time.Second
	DefaultPublishTimeout = 5 * time.Second
	DefaultKeepAlive      = 30 * time.Second
	// DefaultQueueSize holds two full windows of the largest window a policy
	// allows, plus room for control messages.
	DefaultQueueSize = 2*fleet.MaxWindow + 16
)

// quiesce is how long a Disconnect waits for the DISCONNECT packet, in ms.
const quiesce = 250

// Faults are probabilities (0..1) of injected failures, for load tests.
type Faults struct {
	// DropChunks: ignore a received chunk as if it was lost.
	DropChunks float64
	// FailInstall: the simulated install fails (reported install_failed).
	FailInstall float64
	// Disconnect: once per transfer, disconnect at a random offset, then
	// reconnect after ReconnectDelay and resume.
	Disconnect float64
	// RebootMidDownload: once per transfer, lose power at a random offset
	// and boot again after RebootDelay with what the state file kept
	// (power.go).
	RebootMidDownload float64
}

// Config configures an Agent. Zero durations take the Default constants.
type Config struct {
	// Broker is tcp://host:port, or ssl://host:port with TLSConfig; or the
	// nodes of a cluster, comma-separated, tried in order at every
	// connection attempt.
	Broker  string
	ID      string            // device ID, also the MQTT client ID
	Model   string            // hardware model, compared with an offer's firmware model
	Version string            // version running at start
	Tags    map[string]string // labels for update selectors, said in the hello

	RebootDelay    time.Duration // off time of a reboot (default 1s)
	InstallDelay   time.Duration // simulated install time (default 0)
	ReconnectDelay time.Duration // off time after an injected disconnect
	RetryInterval  time.Duration // between failed connection attempts (jittered)
	ConnectTimeout time.Duration // how long Start waits for the first connection
	DialTimeout    time.Duration // one connection attempt, CONNACK included
	PublishTimeout time.Duration // how long the agent waits for a QoS 1 PUBACK

	// MaxImageSize is the largest image the device can store; larger offers
	// are rejected insufficient_space. Zero: only the 4 GiB protocol bound.
	MaxImageSize int64
	// QueueSize bounds the inbound message queue (default DefaultQueueSize).
	QueueSize int

	// MaxChunk and MaxWindow are the largest chunk payload (bytes) and
	// window (chunks) the device takes, stated in its hello (protocol
	// 1.1); zero: any. The device rejects offers over them
	// (chunk_too_large) and drops larger frames, as a device whose
	// buffer is that small would. QuietLimits enforces them without
	// stating them, as a 1.0 agent would. Caps are stated in the hello.
	MaxChunk    int
	MaxWindow   int
	QuietLimits bool
	Caps        []string

	// Image is the SHA-256 (hex) of the image the device runs, stated in
	// the hello: the base the orchestrator makes deltas against. Empty
	// with a Device that implements BaseImage: the agent hashes its
	// running image at start. After a reboot into a new image the agent
	// states that image's SHA-256.
	Image string
	// Images holds image contents for simulated agents (Device nil): the
	// content of Image, the base of a delta, is looked up there
	// (payload.go). Nil: a simulated agent has no base.
	Images *Images
	// Encodings are the payload encodings the agent decodes and states in
	// its caps (protocol.EncodingDeflate, protocol.EncodingBSDiff). Nil:
	// every one it can: deflate always, bsdiff when it can read the image
	// it runs (a BaseImage Device, or Images). Empty, not nil: none; the
	// agent then takes images only as they are.
	Encodings []string

	// StateFile, when set, is where the agent keeps what it holds across
	// restarts (persist.go); empty: nothing is persisted. During a download
	// the file is saved every CheckpointBytes or CheckpointInterval
	// (defaults DefaultCheckpointBytes, DefaultCheckpointInterval).
	StateFile          string
	CheckpointBytes    int64
	CheckpointInterval time.Duration

	Faults Faults // injected failures of a simulated device (devicesim)
	// Bandwidth limits each direction of the device's link to this many
	// bytes per second (0: unlimited); Latency is added to every message
	// the device receives and sends (link.go).
	Bandwidth int64
	Latency   time.Duration
	// FlashRate is how fast the device writes chunks to flash, in bytes
	// per second (0: instantly). The agent's loop blocks while it writes,
	// before it acks, as a device that writes from its only buffer does.
	FlashRate int64
	// SubscribeQoS0 subscribes to the down topics at QoS 0 instead of 1.
	// On a RabbitMQ cluster a QoS 1 subscription is a durable queue on one
	// node, and while that node is down no other node lets the device
	// subscribe again; a QoS 0 subscription is a transient queue that dies
	// with its node (docs/BROKERS.md). The protocol tolerates lost down
	// messages (docs/PROTOCOL.md §13); a clean session loses what its
	// queue held at a reconnection anyway.
	SubscribeQoS0 bool
	// ResubscribeAfter, when positive, subscribes again this long (plus up
	// to half as much, at random) after each connection's subscription,
	// then at doubling intervals (at most 16 times as long), and says its
	// online status and hello again each time. RabbitMQ 3.10
	// may drop a QoS 0 subscription's queue while the device stays
	// connected (it deletes a dead node's queues by name, the one a device
	// that failed over declared again included): the SUBSCRIBE that follows
	// fails, RabbitMQ closes the connection, and the device reconnects and
	// subscribes afresh (docs/BROKERS.md). Zero: never.
	ResubscribeAfter time.Duration
	// KeepAlive is the MQTT keepalive (default DefaultKeepAlive); negative:
	// none, which saves paho's keepalive goroutine and ticker per device.
	KeepAlive time.Duration
	// Seed seeds the fault injection; zero picks a random seed.
	Seed uint64

	Logger *slog.Logger // nil: no logs; narrowed to the device ID on first use

	// Username and Password are the MQTT credentials; with a Password and
	// no Username, the username is ID (docs/PROTOCOL.md, "Connecting").
	Username string
	Password string

	// PublicKey is the firmware signing key the device was provisioned
	// with. When set, the agent installs only offers whose signature
	// verifies with it, and no lower version unless the signature allows a
	// downgrade (verify.go). Nil: nothing is verified but the SHA-256.
	PublicKey ed25519.PublicKey
	// EnrollToken, when set, makes the agent send the enrollment form of the
	// password (protocol.EnrollPassword), so that an unknown device
	// registers itself with Password as its secret.
	EnrollToken string
	// TLSConfig is used for ssl:// broker URLs.
	TLSConfig *tls.Config

	// Device, when set, makes the agent update a real device: it stores
	// the image, installs it, reboots and confirms the boot through it
	// (device.go). Nil: all of that is simulated, and InstallDelay,
	// RebootDelay and Faults.FailInstall apply.
	Device Device
	// RebootWait is how long an agent with a Device waits for the reboot
	// to end its process (default DefaultRebootWait).
	RebootWait time.Duration
}

// Stats are an agent's counters. Copy-safe.
type Stats struct {
	ID        string            `json:"id"`              // the device ID
	Version   string            `json:"version"`         // the version running
	Connected bool              `json:"connected"`       // connected and subscribed
	State     fleet.DeviceState `json:"state,omitempty"` // last state reported for a held transfer
	// Holding: the device holds a transfer (a partial download, an install,
	// or a reboot whose hello was not yet acknowledged).
	Holding  bool `json:"holding"`
	Installs int  `json:"installs"` // images installed
	// InstallsBefore is the part of Installs loaded from the state file.
	InstallsBefore int `json:"installs_before,omitempty"`
	// BytesReceived counts chunk payload bytes accepted, re-downloads included.
	BytesReceived int64 `json:"bytes_received"`
	// ChunksDropped counts chunks ignored by fault injection.
	ChunksDropped int `json:"chunks_dropped"`
	// BadFrames counts down messages that did not decode (bad CRC, bad JSON...).
	BadFrames int `json:"bad_frames"`
	// OversizedFrames counts frames dropped for a payload over MaxChunk.
	OversizedFrames int `json:"oversized_frames,omitempty"`
	// QueueDropped counts messages dropped because the inbound queue was full.
	QueueDropped int `json:"queue_dropped"`
	// Updated: the device rebooted into a new version.
	Updated bool `json:"updated"`
	// Failed: the last transfer ended failed or rejected (not busy); LastReason says why.
	Failed     bool         `json:"failed"`
	LastReason fleet.Reason `json:"reason,omitempty"`
	// ImageSHA256 is the hex SHA-256 of the last fully received image.
	ImageSHA256 string `json:"image_sha256,omitempty"`
	// UpdateTime is the time from the offer that started the last completed
	// transfer to the hello sent after rebooting into its version.
	UpdateTime time.Duration `json:"update_time_ns,omitempty"`
	// EndTime is the time from the offer of the last transfer to its end:
	// the hello after the reboot (UpdateTime), or a failure or cancel.
	EndTime time.Duration `json:"end_time_ns,omitempty"`
	// PowerCuts counts injected power cuts (Faults.RebootMidDownload).
	PowerCuts int `json:"power_cuts,omitempty"`
	// Image is the SHA-256 of the image the device runs, when known.
	Image string `json:"image,omitempty"`
	// Encoding is the payload encoding of the last transfer offered
	// ("" for the image itself).
	Encoding string `json:"encoding,omitempty"`
}

// statusPayload is a presence status (docs/PROTOCOL.md): published
// retained on flota/devices/{id}/up/status after connecting, the offline
// one before a clean disconnect and as the last will. conn is the
// connection's number, the same in its hello.
func statusPayload(online bool, conn uint32) []byte {
	return fmt.Appendf(nil, `{"v":1,"online":%t,"conn":%d}`, online, conn)
}

// newConn draws the number of a new connection: random, never 0 (which
// says "not stated").
func newConn() uint32 {
	return max(rand.Uint32(), 1)
}

// errOffline is the publish result while the agent has no client.
var errOffline = errors.New("agent: not connected")

// waiter is what the agent needs of a publish token; mqtt.Token satisfies it.
type waiter interface {
	WaitTimeout(time.Duration) bool
	Error() error
}

// doneToken is a completed publish result.
type doneToken struct{ err error }

func (t doneToken) WaitTimeout(time.Duration) bool { return true }
func (t doneToken) Error() error                   { return t.err }

// inbound is one down message handed from paho's handler to the loop.
type inbound struct {
	gen     uint64 // client generation that received it
	kind    string // last topic level: offer, chunk, cancel
	payload []byte
}

// action is network work that message handling asks the loop to do.
type action int

const (
	actNone action = iota
	actInstall
	actFaultDisconnect
	actReboot
	actPowerCut
)

// Agent is one simulated device.
type Agent struct {
	cfg        Config
	log        atomic.Pointer[slog.Logger] // narrowed to the device on first use: logger()
	downPrefix string

	in        *inbox
	connected chan uint64   // generations whose client connected
	gen       atomic.Uint64 // generation of the current client
	conn      atomic.Uint32 // number of the current connection (newConn), in its status, will and hello
	ready     chan struct{} // closed after the first hello
	readyOnce sync.Once

	// out publishes on a topic; tests replace it to run without a broker.
	out func(topic string, qos byte, payload []byte) waiter

	// Owned by the loop goroutine (or the test that drives handleDown).
	rng            *rand.Rand
	client         mqtt.Client
	online         bool // a client exists and should be connected (false while "off")
	connTok        mqtt.Token
	version        string
	pendingVersion string // version to boot into at the next connect
	image          string // SHA-256 of the image running (Config.Image, then each image booted)
	pendingImage   string // SHA-256 of the image of pendingVersion
	held           *transfer
	persist        *persister // nil without Config.StateFile
	done           *completed
	lastReport     waiter
	action         action
	installTimer   *time.Timer
	reconnTimer    *time.Timer
	helloTimer     *time.Timer
	resubTimer     *time.Timer // Config.ResubscribeAfter
	resubGen       uint64      // the client generation resubTimer is for
	resubDelay     time.Duration
	retries        int
	link           *link      // nil without Bandwidth and Latency (link.go)
	power          powerState // fault injection of power cuts (power.go)
	lastOffer      offerMark  // the update of the newest transfer and when it was offered
	dev            *deviceRun // with a Device only: what running it needs (device.go)

	lifeMu  sync.Mutex // guards cancel and closed
	cancel  context.CancelFunc
	closed  bool
	wg      sync.WaitGroup // the loop goroutine
	started atomic.Bool

	mu    sync.Mutex // guards stats
	stats Stats
}

// New returns an agent; Start connects it.
func New(cfg Config) *Agent {
	if cfg.RebootDelay <= 0 {
		cfg.RebootDelay = DefaultRebootDelay
	}
	if cfg.ReconnectDelay <= 0 {
		cfg.ReconnectDelay = DefaultReconnectDelay
	}
	if cfg.RetryInterval <= 0 {
		cfg.RetryInterval = DefaultRetryInterval
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = DefaultConnectTimeout
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.PublishTimeout <= 0 {
		cfg.PublishTimeout = DefaultPublishTimeout
	}
	if cfg.KeepAlive == 0 {
		cfg.KeepAlive = DefaultKeepAlive
	}
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = DefaultQueueSize
	}
	if cfg.RebootWait <= 0 {
		cfg.RebootWait = DefaultRebootWait
	}
	if cfg.InstallDelay < 0 {
		cfg.InstallDelay = 0
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	seed := cfg.Seed
	if seed == 0 {
		seed = rand.Uint64()
	}
	if len(cfg.Tags) > 0 {
		tags := make(map[string]string, len(cfg.Tags))
		for k, v := range cfg.Tags {
			tags[k] = v
		}
		cfg.Tags = tags
	}
	a := &Agent{
		cfg:        cfg,
		downPrefix: protocol.DevicesRoot + cfg.ID + "/down/",
		in:         newInbox(cfg.QueueSize),
		connected:  make(chan uint64, 4),
		ready:      make(chan struct{}),
		rng:        rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		version:    cfg.Version,
		image:      strings.ToLower(cfg.Image),
		stats:      Stats{ID: cfg.ID, Version: cfg.Version, Image: strings.ToLower(cfg.Image)},
	}
	a.out = a.clientPublish
	if a.link = newLink(cfg); a.link != nil {
		a.out = a.linkPublish
	}
	return a
}

// ID returns the device ID.
func (a *Agent) ID() string { return a.cfg.ID }

// MaxChunk is the largest chunk payload the device takes (Config.MaxChunk).
func (a *Agent) MaxChunk() int { return a.cfg.MaxChunk }

// Start starts the agent and waits until it first connected and said hello,
// or until ctx ends or Config.ConnectTimeout passes. After an error the agent
// keeps trying to connect in the background until Close.
func (a *Agent) Start(ctx context.Context) error {
	if !fleet.ValidDeviceID(a.cfg.ID) {
		return fleet.Errorf(fleet.ErrInvalidInput, "device ID %q", a.cfg.ID)
	}
	a.lifeMu.Lock()
	if a.closed {
		a.lifeMu.Unlock()
		return fmt.Errorf("agent %s: start: %w", a.cfg.ID, fleet.ErrClosed)
	}
	if !a.started.CompareAndSwap(false, true) {
		a.lifeMu.Unlock()
		return fmt.Errorf("agent %s: already started", a.cfg.ID)
	}
	loopCtx, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	if a.cfg.Device != nil {
		a.dev = &deviceRun{ctx: loopCtx, installed: make(chan installResult, 1)}
		a.hashRunningImage()
	}
	a.loadState()
	a.wg.Add(1)
	go a.run(loopCtx)
	a.lifeMu.Unlock()

	timeout := time.NewTimer(a.cfg.ConnectTimeout)
	defer timeout.Stop()
	select {
	case <-a.ready:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("agent %s: connect to %s: %w", a.cfg.ID, a.cfg.Broker, context.Cause(ctx))
	case <-timeout.C:
		return fmt.Errorf("agent %s: connect to %s: no connection after %s", a.cfg.ID, a.cfg.Broker, a.cfg.ConnectTimeout)
	}
}

// Close disconnects the agent and waits for its goroutine. It is idempotent.
func (a *Agent) Close() error {
	a.lifeMu.Lock()
	a.closed = true
	cancel := a.cancel
	a.lifeMu.Unlock()
	if cancel != nil {
		cancel()
	}
	a.wg.Wait()
	return nil
}

// Stats returns a snapshot of the agent's counters.
func (a *Agent) Stats() Stats {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.stats
}

func (a *Agent) updateStats(f func(s *Stats)) {
	a.mu.Lock()
	f(&a.stats)
	a.mu.Unlock()
}

func timerC(t *time.Timer) <-chan time.Time {
	if t == nil {
		return nil
	}
	return t.C
}

func tokenDone(t mqtt.Token) <-chan struct{} {
	if t == nil {
		return nil
	}
	return t.Done()
}

// run is the agent's goroutine: it owns the client and all protocol state.
func (a *Agent) run(ctx context.Context) {
	defer a.wg.Done()
	defer func() { stopDecoder(a.held) }() // its coroutine ends with it
	defer a.closeState()
	defer a.stopTimers()
	defer a.disconnect()
	a.connect()
	for {
		linkDown, linkUp := a.linkTimers()
		select {
		case <-ctx.Done():
			return
		case <-a.in.ready:
			for _, m := range a.in.take() {
				if !a.online || m.gen != a.gen.Load() {
					continue // received before a disconnect: the device was off
				}
				a.receive(m)
				a.perform()
			}
		case <-linkDown:
			a.deliverDown()
		case <-linkUp:
			a.sendUp()
		case g := <-a.connected:
			if a.online && g == a.gen.Load() {
				a.onConnected()
			}
		case <-tokenDone(a.connTok):
			a.onConnectResult()
		case <-timerC(a.helloTimer):
			a.helloTimer = nil
			if a.online && a.client.IsConnectionOpen() {
				a.onConnected()
			}
		case <-timerC(a.resubTimer):
			a.resubTimer = nil
			a.resubscribe()
		case <-timerC(a.installTimer):
			a.installTimer = nil
			a.finishInstall(nil)
		case r := <-a.dev.installedC():
			a.dev.installing = false
			if ctx.Err() != nil {
				return // interrupted by Close: installed again after the next start
			}
			if t := a.held; t != nil && t.update == r.update {
				a.finishInstall(r.err)
			}
		case <-timerC(a.reconnTimer):
			a.reconnTimer = nil
			a.connect()
		}
		a.perform()
	}
}

func (a *Agent) stopTimers() {
	for _, t := range []*time.Timer{a.installTimer, a.reconnTimer, a.helloTimer, a.resubTimer} {
		if t != nil {
			t.Stop()
		}
	}
	a.resetLink()
}

// perform carries out the actions message handling asked for.
func (a *Agent) perform() {
	for a.action != actNone {
		act := a.action
		a.action = actNone
		switch act {
		case actInstall:
			switch {
			case a.cfg.Device != nil:
				a.startInstall()
			case a.cfg.InstallDelay > 0:
				a.installTimer = time.NewTimer(a.cfg.InstallDelay)
			default:
				a.finishInstall(nil)
			}
		case actFaultDisconnect:
			a.logger().Info("injected disconnect", "offset", a.heldOffset())
			a.goOffline(a.cfg.ReconnectDelay)
		case actReboot:
			a.logger().Info("rebooting", "into", a.pendingVersion)
			if a.cfg.Device != nil {
				a.deviceReboot()
			} else {
				a.goOffline(a.cfg.RebootDelay)
			}
		case actPowerCut:
			a.powerCut()
		}
	}
}

func (a *Agent) heldOffset() int64 {
	if a.held == nil {
		return 0
	}
	return a.held.expected
}

// goOffline lets the last report reach the broker, disconnects and schedules
// the reconnection after delay.
func (a *Agent) goOffline(delay time.Duration) {
	a.waitReport()
	a.disconnect()
	a.reconnTimer = time.NewTimer(delay)
}

// waitReport waits for the PUBACK of the last QoS 1 report: DISCONNECT goes
// out on paho's priority queue and could overtake it.
func (a *Agent) waitReport() {
	if a.lastReport == nil {
		return
	}
	if !a.lastReport.WaitTimeout(a.cfg.PublishTimeout) {
		a.logger().Warn("report not acknowledged before disconnect")
	}
	a.lastReport = nil
}

// disconnect ends the current client, if any. Messages it received and not
// yet handled are discarded (their generation is stale).
func (a *Agent) disconnect() {
	a.online = false
	a.connTok = nil
	if a.helloTimer != nil {
		a.helloTimer.Stop()
		a.helloTimer = nil
	}
	a.gen.Add(1)
	a.resetLink()
	if a.client != nil {
		// A clean DISCONNECT discards the last will: say offline first.
		if a.client.IsConnectionOpen() {
			tok := a.client.Publish(a.statusTopic(), 1, true, statusPayload(false, a.conn.Load()))
			if !tok.WaitTimeout(a.cfg.PublishTimeout) || tok.Error() != nil {
				a.logger().Debug("offline status not acknowledged", "err", tok.Error())
			}
		}
		a.client.Disconnect(quiesce)
		a.client = nil
	}
	a.updateStats(func(s *Stats) { s.Connected = false })
}

// connect boots into a pending version, if any, and starts connecting a new
// client. The loop learns the outcome from the connect token and from the
// on-connect handler.
func (a *Agent) connect() {
	a.boot()
	if a.dev != nil && a.dev.ctx.Err() != nil {
		return // closed while the Device decided what booted: nothing is said
	}
	gen := a.gen.Add(1)
	jitter := &reconnectJitter{base: a.cfg.RetryInterval, stale: func() bool { return a.gen.Load() != gen }}
	opts := mqtt.NewClientOptions().
		SetStore(pahostore.New()). // paho's MemoryStore races on reconnect (pahostore)
		SetClientID(a.cfg.ID).
		SetCleanSession(true).
		SetOrderMatters(true). // chunks must reach the queue in order
		SetAutoReconnect(true).
		SetConnectRetry(false). // the loop retries, so Close never waits on a retry sleep
		SetMaxReconnectInterval(5 * time.Second).
		SetConnectTimeout(a.cfg.DialTimeout).
		SetWriteTimeout(10 * time.Second).
		SetKeepAlive(max(a.cfg.KeepAlive, 0)).
		SetOnConnectHandler(func(mqtt.Client) {
			jitter.connected()
			a.notifyConnected(gen)
		}).
		SetReconnectingHandler(func(_ mqtt.Client, o *mqtt.ClientOptions) {
			jitter.pause()
			// Each connection its own number and will: the broker may
			// publish the old connection's will after the new one said
			// hello, and the orchestrator then knows it is stale. paho
			// reads the will from o at each attempt, on this goroutine.
			conn := newConn()
			o.WillPayload = statusPayload(false, conn)
			if a.gen.Load() == gen {
				a.conn.Store(conn)
			}
		}).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) {
			if a.gen.Load() == gen {
				a.logger().Info("connection lost", "err", err)
				a.updateStats(func(s *Stats) { s.Connected = false })
			}
		})
	for _, u := range strings.Split(a.cfg.Broker, ",") {
		if u = strings.TrimSpace(u); u != "" {
			opts.AddBroker(u)
		}
	}
	// Presence for brokers without connection hooks: the broker publishes
	// this when the connection ends without a DISCONNECT.
	conn := newConn()
	a.conn.Store(conn)
	opts.SetBinaryWill(a.statusTopic(), statusPayload(false, conn), 1, true)
	a.setCredentials(opts)
	a.client = mqtt.NewClient(opts)
	a.online = true
	a.connTok = a.client.Connect()
}

// boot switches to the version installed before a reboot, if any.
func (a *Agent) boot() {
	if a.pendingVersion == "" {
		return
	}
	target, image := a.pendingVersion, a.pendingImage
	a.pendingVersion, a.pendingImage = "", ""
	if d := a.cfg.Device; d != nil {
		// The device says what runs: the target, or the old version
		// after a rollback (its hello reports either, §10).
		v := d.Booted(a.dev.ctx, target)
		if a.dev.ctx.Err() != nil {
			a.pendingVersion, a.pendingImage = target, image // undecided: decided again at the next start
			return
		}
		if v != "" { // empty: unknown, keep the version read at start
			a.version = v
		}
		a.logger().Info("booted", "version", a.version, "target", target)
	} else {
		a.version = target
	}
	v, ok := a.version, a.version == target
	if ok && image != "" {
		a.image = image
	}
	img := a.image
	a.updateStats(func(s *Stats) { s.Version = v; s.Updated = ok; s.Failed = !ok; s.LastReason = ""; s.Image = img })
}

// onConnectResult handles the outcome of a connection attempt.
func (a *Agent) onConnectResult() {
	tok := a.connTok
	a.connTok = nil
	if err := tok.Error(); err != nil {
		a.retries++
		// Jitter spreads a fleet's reconnection storm.
		d := a.cfg.RetryInterval/2 + time.Duration(a.rng.Int64N(int64(a.cfg.RetryInterval)))
		a.logger().Debug("connect failed", "err", err, "retry_in", d, "attempt", a.retries)
		if a.client != nil {
			a.client.Disconnect(0)
			a.client = nil
		}
		a.online = false
		a.gen.Add(1)
		a.reconnTimer = time.NewTimer(d)
		return
	}
	a.retries = 0
}

// notifyConnected runs in paho's on-connect goroutine: it only tells the loop.
func (a *Agent) notifyConnected(gen uint64) {
	if a.gen.Load() != gen {
		return
	}
	select {
	case a.connected <- gen:
	default: // a notification is pending; the loop will say hello
	}
}

// handler is paho's message handler for one client generation. It must not
// block: it hands the message to the loop or drops it when the queue is full.
func (a *Agent) handler(gen uint64) mqtt.MessageHandler {
	return func(_ mqtt.Client, m mqtt.Message) {
		kind, ok := strings.CutPrefix(m.Topic(), a.downPrefix)
		if !ok || strings.Contains(kind, "/") {
			return
		}
		if !a.in.put(&inbound{gen: gen, kind: kind, payload: m.Payload()}) {
			a.updateStats(func(s *Stats) { s.QueueDropped++ })
		}
	}
}

// onConnected subscribes (CleanSession: every connection starts without
// subscriptions) and then says hello. It runs on the loop, so it may wait.
func (a *Agent) onConnected() {
	c := a.client
	tok := c.Subscribe(protocol.DownFilter(a.cfg.ID), a.downQoS(), a.handler(a.gen.Load()))
	if !tok.WaitTimeout(a.cfg.PublishTimeout) || tok.Error() != nil {
		a.logger().Warn("subscribe failed", "err", tok.Error())
		a.helloTimer = time.NewTimer(a.cfg.RetryInterval)
		return
	}
	if a.cfg.ResubscribeAfter > 0 {
		a.resubGen, a.resubDelay = a.gen.Load(), a.cfg.ResubscribeAfter
		a.armResubscribe()
	}
	a.updateStats(func(s *Stats) { s.Connected = true })
	// Retained, so that an orchestrator connecting later learns it too;
	// QoS 1 from one client keeps it ahead of the hello.
	c.Publish(a.statusTopic(), 1, true, statusPayload(true, a.conn.Load()))
	a.sayHello(a.heldHello())
	a.readyOnce.Do(func() { close(a.ready) })
}

// downQoS is the QoS of the subscription to the down topics.
func (a *Agent) downQoS() byte {
	if a.cfg.SubscribeQoS0 {
		return 0
	}
	return 1
}

// armResubscribe schedules the next resubscribe after resubDelay, plus up
// to half as much at random.
func (a *Agent) armResubscribe() {
	if a.resubTimer != nil {
		a.resubTimer.Stop()
	}
	d := a.resubDelay
	a.resubTimer = time.NewTimer(d + time.Duration(a.rng.Int64N(int64(d/2)+1)))
}

// resubscribe sends the connection's SUBSCRIBE again (ResubscribeAfter),
// then its online status and hello: a cluster may deliver the will of the
// device's previous connection (offline) after this connection's online
// status, and the orchestrator then waits for a hello. It does not wait for
// the SUBACK: a broker that lost the subscription's queue closes the
// connection, and the agent reconnects.
func (a *Agent) resubscribe() {
	if !a.online || a.client == nil || a.resubGen != a.gen.Load() || !a.client.IsConnectionOpen() {
		return
	}
	c := a.client
	c.Subscribe(protocol.DownFilter(a.cfg.ID), a.downQoS(), a.handler(a.resubGen))
	c.Publish(a.statusTopic(), 1, true, statusPayload(true, a.conn.Load()))
	a.sayHello(a.heldHello())
	a.resubDelay = min(2*a.resubDelay, 16*a.cfg.ResubscribeAfter)
	a.armResubscribe()
}

// statusTopic is the device's retained presence topic.
func (a *Agent) statusTopic() string { return protocol.UpTopic(a.cfg.ID, protocol.KindStatus) }

// clientPublish publishes with the current client.
func (a *Agent) clientPublish(topic string, qos byte, payload []byte) waiter {
	if a.client == nil {
		return doneToken{errOffline}
	}
	return a.client.Publish(topic, qos, false, payload)
}
