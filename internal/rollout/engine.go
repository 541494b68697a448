package rollout

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/logsafe"
	"github.com/flotaio/flota/internal/protocol"
	"github.com/flotaio/flota/internal/sqlite"
)

// Defaults of the engine's timers and queues.
const (
	DefaultAckTimeout     = 2 * time.Second
	DefaultOfferTimeout   = 10 * time.Second
	DefaultTickInterval   = 100 * time.Millisecond
	DefaultStatusInterval = 250 * time.Millisecond
	DefaultCheckpoint     = 2 * time.Second
	DefaultQueueSize      = 64 * 1024
	// DefaultIllegalEventInterval: a device's illegal state changes in an
	// update are recorded as an event at most once per interval.
	DefaultIllegalEventInterval = time.Minute
)

// Engine runs updates. Create it with New, start it with Open, stop it with
// Close. Every field below the settings is owned by the loop goroutine.
type Engine struct {
	Store     *sqlite.Store
	Transport Transport
	Logger    *slog.Logger

	// AckTimeout is the least time without ack progress after which the
	// engine resends from the acknowledged offset; the timeout in use adapts
	// to the measured ack round trip, with backoff (rto.go).
	AckTimeout time.Duration
	// OfferTimeout: an offer unanswered for this long is sent again.
	OfferTimeout time.Duration
	// Now is the engine's clock (time.Now); tests set a fake one. Timers
	// still tick in real time; every decision reads Now.
	Now func() time.Time
	// TickInterval is how often timers are checked.
	TickInterval time.Duration
	// StatusInterval bounds how often an update's retained summary is
	// published.
	StatusInterval time.Duration
	// Checkpoint is how often acknowledged offsets of in-flight devices are
	// written to the store.
	Checkpoint time.Duration
	// QueueSize bounds the device messages waiting for the loop; its last
	// quarter is kept for presence changes.
	QueueSize int
	// IllegalEventInterval bounds the event log rows a device can cause
	// with illegal state changes: one event per device and update per
	// interval, the rest only counted (Stats.IllegalEventsSuppressed).
	IllegalEventInterval time.Duration
	// LogLimit bounds the log lines (info and above) each device causes
	// (logsafe.Limiter); Open wraps Logger with it.
	LogLimit logsafe.Limit
	// AckQuota and MessageQuota bound the acks and the other messages one
	// device may have waiting for the loop (fair.go); over them, that
	// device's messages are dropped (Stats.QuotaDrops).
	AckQuota     int
	MessageQuota int
	// Builder, when set, builds the payloads an update wants (deltas from
	// the images its devices run); PayloadWait bounds how long a device
	// waits for a delta being built (choose.go).
	Builder     *Builder
	PayloadWait time.Duration

	inbox  chan inbound
	shared int    // how full device messages may make the inbox (fair.go)
	quotas quotas // device ID -> its messages waiting (fair.go)
	// presenceDrops throttles the log of dropped presence changes.
	presenceDrops quota
	cmds          chan func()
	cancel        context.CancelCauseFunc
	wg            sync.WaitGroup
	once          sync.Once
	closed        atomic.Bool
	opened        atomic.Bool // inbox and cmds exist: presence and commands may flow
	logs          *logsafe.Limiter
	// payloadsDirty: the builder finished a payload; the loop reloads
	// the runs' payloads at its next tick (choose.go).
	payloadsDirty atomic.Bool

	stats struct {
		chunks, bytes, resends, acks, bad, stale, drops, quotaDrops, illegal, storeHolds atomic.Int64

		beyondSent        atomic.Int64 // acks refused past the bytes sent
		illegalSuppressed atomic.Int64 // illegal changes not recorded as events
	}
	failures failureCounts // attempts that ended failed, by reason (failures.go)

	// Loop-owned state.
	runs       map[string]*run                // active updates by ID
	active     map[string]*target             // device ID -> its target in an active update
	ready      map[string]bool                // devices that said hello on their current connection
	limits     map[string]deviceLimits        // limits stated in the hello of connected devices (limits.go)
	seq        int64                          // last event sequence number
	ended      map[string]fleet.UpdateSummary // final summaries of recently ended updates
	endedOrder []string                       // ended's keys, oldest first
	frame      []byte                         // chunk frame buffer, reused for every chunk
	fleetRTT   rttEstimator                   // ack round trip over all devices, for devices without samples yet
	rng        *rand.Rand
	heldSince  time.Time // when the store stopped writing; zero while it writes (storehold.go)
}

// inbound is one device message handed from the broker to the loop.
type inbound struct {
	device, kind string
	payload      []byte
	q            *quota // the device's quota it counts in; nil for presence
	conn         uint32 // presence: the connection a status names; 0: not stated
}

// New returns an engine with default settings.
func New(store *sqlite.Store, tr Transport, logger *slog.Logger) *Engine {
	if logger == nil {
		logger = slog.Default()
	}
	return &Engine{
		Store:          store,
		Transport:      tr,
		Logger:         logger,
		AckTimeout:     DefaultAckTimeout,
		OfferTimeout:   DefaultOfferTimeout,
		Now:            time.Now,
		TickInterval:   DefaultTickInterval,
		StatusInterval: DefaultStatusInterval,
		Checkpoint:     DefaultCheckpoint,
		QueueSize:      DefaultQueueSize,
		AckQuota:       DefaultAckQuota,
		MessageQuota:   DefaultMessageQuota,

		IllegalEventInterval: DefaultIllegalEventInterval,
	}
}

// Open loads active updates from the store, subscribes to device reports and
// starts the loop.
func (e *Engine) Open(ctx context.Context) error {
	if e.Store == nil || e.Transport == nil {
		return errors.New("rollout: engine needs a store and a transport")
	}
	e.QueueSize = max(e.QueueSize, 4)
	e.AckQuota, e.MessageQuota = max(e.AckQuota, 1), max(e.MessageQuota, 1)
	e.logs = logsafe.NewLimiter(e.LogLimit)
	e.logs.Now = e.now
	e.Logger = e.logs.Logger(e.Logger)
	e.inbox = make(chan inbound, e.QueueSize)
	e.shared = e.QueueSize - e.QueueSize/4
	e.cmds = make(chan func())
	e.runs = map[string]*run{}
	e.active = map[string]*target{}
	e.ready = map[string]bool{}
	e.ended = map[string]fleet.UpdateSummary{}
	e.rng = rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 0x666c6f7461))

	seq, err := e.Store.MaxEventSeq(ctx)
	if err != nil {
		return fmt.Errorf("rollout: load event sequence: %w", err)
	}
	if err := e.openBuilder(ctx); err != nil {
		return err
	}
	e.seq = seq
	if err := e.restore(ctx); err != nil {
		return err
	}
	e.opened.Store(true)
	e.Store.OnEventsCommitted(e.publishEvents)
	if err := e.Transport.Subscribe(protocol.UpFilter, e.handle); err != nil {
		return fmt.Errorf("rollout: subscribe %s: %w", protocol.UpFilter, err)
	}
	loopCtx, cancel := context.WithCancelCause(context.Background())
	e.cancel = cancel
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		e.loop(loopCtx)
	}()
	return nil
}

// Close stops the loop, checkpoints in-flight progress and flushes the store.
// It is idempotent.
func (e *Engine) Close() error {
	var err error
	e.once.Do(func() {
		e.closed.Store(true)
		e.closeBuilder()
		if e.cancel == nil {
			return
		}
		e.cancel(fleet.ErrClosed)
		e.wg.Wait()
		held := e.Store.Unavailable() != nil // a checkpoint could block on the full write queue
		for _, r := range e.runs {
			if !held {
				r.checkpoint(e, true)
			}
			r.closeBlob()
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		err = e.Store.Flush(ctx)
		e.Store.OnEventsCommitted(nil)
	})
	return err
}

// handle is the transport's handler. It runs on a device connection's read
// goroutine, so it only hands the message to the loop, never blocking: a
// device over its quota, or a full queue, drops the message (acks are
// recovered by the resend timer, reports and hellos by the device's own
// retries and the offer timer). See enqueue.
func (e *Engine) handle(topic string, payload []byte) {
	id, kind, ok := protocol.ParseUpTopic(topic)
	if !ok {
		e.stats.bad.Add(1)
		e.Logger.Warn("bad device topic", "device", topicDevice(topic), "topic", logsafe.Clean(topic, 128))
		return
	}
	if kind == protocol.KindStatus {
		// A device's retained online/offline status: presence comes from
		// the transport (broker hooks, or the transport reading these), so
		// it need not wait in the inbox.
		return
	}
	e.enqueue(id, kind, payload)
}

// DevicePresence tells the engine a device connected or disconnected. It is
// safe to call from any goroutine and never blocks for long.
func (e *Engine) DevicePresence(deviceID string, online bool) {
	e.DeviceStatus(deviceID, online, 0)
}

// DeviceStatus is DevicePresence from a device's status message, which may
// name its connection (protocol 1.1 "conn"; 0: not stated). An offline
// status naming another connection than the device's last hello did is
// stale (an external broker published the will of a connection it closed
// after the device's new one said hello) and changes nothing.
func (e *Engine) DeviceStatus(deviceID string, online bool, conn uint32) {
	if e.closed.Load() || !e.opened.Load() {
		return
	}
	kind := kindOffline
	if online {
		kind = kindOnline
	}
	// Presence may fill the whole inbox; device messages stop at e.shared.
	select {
	case e.inbox <- inbound{device: deviceID, kind: kind, conn: conn}:
	default:
		e.stats.drops.Add(1)
		e.logDrop(deviceID, &e.presenceDrops, dropFull)
	}
}

// Presence pseudo-kinds travel through the inbox so they stay ordered with
// the device's messages.
const (
	kindOnline  = "\x00online"
	kindOffline = "\x00offline"
)

// do runs fn on the loop and waits for it.
func (e *Engine) do(ctx context.Context, fn func()) error {
	if e.closed.Load() || !e.opened.Load() {
		return fleet.ErrClosed
	}
	done := make(chan struct{})
	select {
	case e.cmds <- func() { fn(); close(done) }:
	case <-ctx.Done():
		return ctx.Err()
	}
	// The loop took fn and runs it to the end: wait for it whatever ctx
	// does, or a caller could undo (close, discard) what fn handed over.
	<-done
	return nil
}

func (e *Engine) loop(ctx context.Context) {
	tick := time.NewTicker(e.TickInterval)
	defer tick.Stop()
	lastStatus, lastCheckpoint, lastSweep := e.now(), e.now(), time.Now()
	for {
		inbox := e.inbox
		if e.storeHeld() {
			inbox = nil // device messages wait while the store cannot record them
		}
		select {
		case <-ctx.Done():
			return
		case fn := <-e.cmds:
			fn()
		case m := <-inbox:
			e.taken(m)
			e.dispatch(m)
			// Drain what is waiting before looking at timers: acks come in
			// bursts and each one may release more chunks.
			for i := 0; i < 256; i++ {
				select {
				case m = <-e.inbox:
					e.taken(m)
					e.dispatch(m)
					continue
				default:
				}
				break
			}
			e.finishRuns()
		case <-tick.C:
			now := e.now()
			e.logs.Sweep()
			if inbox == nil {
				if now.Sub(lastStatus) >= e.StatusInterval {
					lastStatus = now
					for _, r := range e.runs {
						r.publishStatus(e, now, false)
					}
				}
				continue
			}
			e.timers(now)
			e.refreshPayloads(now)
			for _, r := range e.runs {
				e.checkRun(r, now)
			}
			e.finishRuns()
			if now.Sub(lastStatus) >= e.StatusInterval {
				lastStatus = now
				for _, r := range e.runs {
					r.publishStatus(e, now, false)
				}
			}
			if now.Sub(lastCheckpoint) >= e.Checkpoint {
				lastCheckpoint = now
				for _, r := range e.runs {
					r.checkpoint(e, false)
				}
			}
			if wall := time.Now(); wall.Sub(lastSweep) >= quotaSweepInterval {
				lastSweep = wall
				e.quotas.sweep(wall)
			}
		}
	}
}

func (e *Engine) dispatch(m inbound) {
	switch m.kind {
	case kindOnline:
		// A connection alone proves nothing: wait for the hello, which the
		// device sends after subscribing.
	case kindOffline:
		if cur := e.limits[m.device].conn; m.conn != 0 && cur != 0 && m.conn != cur {
			e.stale(m.device, "offline status of an earlier connection", "conn", m.conn, "current", cur)
			return
		}
		e.deviceOffline(m.device)
	case kindFound:
		e.foundOnline(m.device) // takeover.go
	case protocol.KindStatus:
		// A device's retained online/offline status: presence comes from
		// the transport (broker hooks, or the transport reading these).
	case protocol.KindAck:
		a, err := protocol.DecodeAck(m.payload)
		if err != nil {
			e.bad(m, err)
			return
		}
		e.onAck(m.device, a)
	case protocol.KindReport:
		r, err := protocol.DecodeReport(m.payload)
		if err != nil {
			e.bad(m, err)
			return
		}
		e.onReport(m.device, r)
	case protocol.KindHello:
		h, err := protocol.DecodeHello(m.payload)
		if err != nil {
			e.bad(m, err)
			return
		}
		e.onHello(m.device, h)
	default:
		e.bad(m, fmt.Errorf("unknown message kind %q", m.kind))
	}
}

// bad counts and logs a device message that could not be used.
func (e *Engine) bad(m inbound, err error) {
	e.stats.bad.Add(1)
	e.Logger.Warn("bad device message", "device", m.device, "kind", logsafe.Clean(m.kind, 32), "size", len(m.payload), "err", logsafe.Clean(err.Error(), 200))
}

// stale counts a valid message that belongs to another update, handle or
// attempt: late, duplicated or replayed. It changes nothing.
func (e *Engine) stale(device, what string, args ...any) {
	e.stats.stale.Add(1)
	e.Logger.Debug("stale device message", append([]any{"device", device, "msg", what}, args...)...)
}

// Stats returns the engine's counters.
func (e *Engine) Stats() Stats {
	return Stats{
		ChunksSent:     e.stats.chunks.Load(),
		BytesSent:      e.stats.bytes.Load(),
		Resends:        e.stats.resends.Load(),
		Acks:           e.stats.acks.Load(),
		BadMessages:    e.stats.bad.Load(),
		StaleMessages:  e.stats.stale.Load(),
		QueueDrops:     e.stats.drops.Load(),
		QuotaDrops:     e.stats.quotaDrops.Load(),
		IllegalChanges: e.stats.illegal.Load(),
		AcksBeyondSent: e.stats.beyondSent.Load(),

		IllegalEventsSuppressed: e.stats.illegalSuppressed.Load(),
		LogLinesSuppressed:      e.logLinesSuppressed(),
		StoreHolds:              e.stats.storeHolds.Load(),
	}.withBuilder(e.Builder)
}

// newHandle returns a non-zero transfer handle different from old.
func (e *Engine) newHandle(old uint32) uint32 {
	for {
		h := e.rng.Uint32()
		if h != 0 && h != old {
			return h
		}
	}
}

// emit appends an event to the log and publishes it.
func (e *Engine) emit(ev fleet.Event) {
	e.seq++
	ev.Seq = e.seq
	if ev.Time.IsZero() {
		ev.Time = e.now().UTC()
	}
	if err := e.Store.AppendEvent(ev); err != nil {
		e.Logger.Error("append event", "seq", ev.Seq, "err", err)
	}
}

// publishEvents publishes events once the store committed them (it runs on
// the store's writer goroutine): what MQTT shows, the log holds, so a monitor
// that missed messages catches up from the log with nothing missing, and
// after a crash no published sequence number is used again.
func (e *Engine) publishEvents(evs []fleet.Event) {
	for _, ev := range evs {
		if ev.UpdateID == "" {
			continue
		}
		// One allocation per event (publishDeviceStatus); the event stream's
		// inline subscriber keeps it.
		if err := e.Transport.Publish(protocol.UpdateEventsTopic(ev.UpdateID), protocol.Event(ev).AppendJSON(make([]byte, 0, 256)), false, 1); err != nil {
			e.Logger.Warn("publish event", "seq", ev.Seq, "err", err)
		}
	}
}

// now reads the engine's clock.
func (e *Engine) now() time.Time {
	if e.Now == nil {
		return time.Now()
	}
	return e.Now()
}

// memBlobMax is the largest image a run reads into memory once, instead of
// reading every chunk from the file: a read from memory saves a system call
// per chunk. A run holds its image for its whole life (scheduled, paused and
// dynamic updates too), so the bound is small; larger images are read from
// the file (and the kernel's page cache).
const memBlobMax = 1 << 20

// blob is the image every session of a run reads its chunks from: one
// file, or one buffer, shared, never a copy per device.
type blob interface {
	io.ReaderAt
	io.Closer
}

// memBlob is an image held in memory; ReadAt is safe for concurrent use.
type memBlob struct{ *bytes.Reader }

func (memBlob) Close() error { return nil }

// openBlob opens a firmware image for ReadAt by every session of a run, in
// memory when it is at most memBlobMax bytes. An image whose file is
// missing, or whose size or SHA-256 differs from the stored firmware's, is
// refused with fleet.ErrFirmwareDamaged (checkImage): no device is sent
// bytes that do not match.
func (e *Engine) openBlob(ctx context.Context, id string) (blob, fleet.Firmware, error) {
	f, fw, err := e.Store.OpenFirmware(ctx, id)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fw, fleet.Errorf(fleet.ErrFirmwareDamaged, "firmware %s: %v", id, err)
	}
	if err != nil {
		return nil, fleet.Firmware{}, err
	}
	var b []byte
	if fw.Size <= memBlobMax {
		b = make([]byte, fw.Size)
	}
	if err := checkImage(f, fw, b); err != nil {
		f.Close()
		return nil, fw, err
	}
	if b == nil {
		return f, fw, nil
	}
	f.Close()
	return memBlob{bytes.NewReader(b)}, fw, nil
}
