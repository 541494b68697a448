package rollout

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/flotaio/flota/internal/protocol"
)

// Defaults of the per-device quotas of the engine's inbox. A device at
// full speed has a few messages waiting at most: one ack per half window,
// a duplicate ack per chunk after a gap (a window of them, 64 at most),
// and a handful of reports around an install. A device over its quota
// loses its own newest messages; every other device keeps its place.
const (
	DefaultAckQuota     = 32
	DefaultMessageQuota = 16
)

// Intervals of the inbox's bookkeeping.
const (
	// dropLogInterval: a device whose messages are dropped is logged at
	// most once per interval, with the count of drops since its last line.
	dropLogInterval = time.Minute
	// quotaSweepInterval: how often the loop forgets devices with nothing
	// waiting, so that the quota map holds only recent publishers.
	quotaSweepInterval = time.Minute
)

// Reasons a device message is dropped before the loop (Stats.QuotaDrops,
// Stats.QueueDrops).
const (
	dropQuota = "device_quota" // the device has its quota of messages waiting
	dropFull  = "queue_full"   // the inbox is full
)

// quota counts one device's messages waiting in the inbox. The broker's
// handler raises a counter before it queues a message and the loop lowers
// it when it takes one, so the counters need no lock.
type quota struct {
	acks   atomic.Int32 // acks waiting
	others atomic.Int32 // hellos, reports and unknown kinds waiting

	dropped atomic.Int64 // drops since the last log line
	logged  atomic.Int64 // time of the last log line, Unix nanoseconds
}

// counter returns the counter and the limit of a message of kind.
func (e *Engine) counter(q *quota, kind string) (*atomic.Int32, int32) {
	if kind == protocol.KindAck {
		return &q.acks, int32(e.AckQuota)
	}
	return &q.others, int32(e.MessageQuota)
}

// quotas maps device IDs to their *quota. A sync.Map, since the
// handlers of every device connection read it and entries change rarely.
type quotas struct{ m sync.Map }

func (qs *quotas) get(device string) *quota {
	if v, ok := qs.m.Load(device); ok {
		return v.(*quota)
	}
	v, _ := qs.m.LoadOrStore(device, new(quota))
	return v.(*quota)
}

// sweep forgets the devices with nothing waiting and no drop left to log.
// A handler that holds an entry being forgotten still queues through it
// and the loop lowers it; the device's next message makes a new entry, so
// for a moment its quota counts twice. Runs on the loop.
func (qs *quotas) sweep(now time.Time) {
	qs.m.Range(func(k, v any) bool {
		q := v.(*quota)
		if q.acks.Load() == 0 && q.others.Load() == 0 &&
			(q.dropped.Load() == 0 || now.UnixNano()-q.logged.Load() >= int64(dropLogInterval)) {
			qs.m.CompareAndDelete(k, v)
		}
		return true
	})
}

// enqueue hands a device message to the loop without blocking: it is
// dropped, counted and (throttled) logged when the device already has its
// quota of that kind waiting, or when the shared part of the inbox is full.
// The last quarter of the inbox is kept for presence changes, which no
// device flood may crowd out.
func (e *Engine) enqueue(device, kind string, payload []byte) {
	q := e.quotas.get(device)
	n, limit := e.counter(q, kind)
	if n.Add(1) > limit {
		n.Add(-1)
		e.stats.quotaDrops.Add(1)
		e.logDrop(device, q, dropQuota)
		return
	}
	if len(e.inbox) < e.shared {
		select {
		case e.inbox <- inbound{device: device, kind: kind, payload: payload, q: q}:
			return
		default:
		}
	}
	n.Add(-1)
	e.stats.drops.Add(1)
	e.logDrop(device, q, dropFull)
}

// taken lowers the quota counter of a message the loop took from the inbox.
func (e *Engine) taken(m inbound) {
	if m.q == nil {
		return // presence
	}
	n, _ := e.counter(m.q, m.kind)
	n.Add(-1)
}

// logDrop logs a device's drops at most once per dropLogInterval, with
// how many there were since its last line.
func (e *Engine) logDrop(device string, q *quota, reason string) {
	q.dropped.Add(1)
	now := time.Now().UnixNano()
	last := q.logged.Load()
	if now-last < int64(dropLogInterval) || !q.logged.CompareAndSwap(last, now) {
		return
	}
	e.Logger.Warn("device messages dropped before the engine", "device", device, "reason", reason,
		"dropped", q.dropped.Swap(0), "ack_quota", e.AckQuota, "message_quota", e.MessageQuota)
}
