package broker

import (
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/flotaio/flota/internal/protocol"
)

// Device statuses.
//
// The engine publishes the status of every device it updates retained on
// flota/status/devices/{id} (docs/PROTOCOL.md §14.3). mochi would keep each
// one as an 800-byte packet in its retained map, with a topic-tree particle
// of four maps, and copy that map whole every second to look for expired
// messages: with 100,000 devices, the orchestrator's memory grows with the
// fleet. Worse, mochi delivers retained messages to a new subscription by
// pushing them all into the client's bounded outbound queue without waiting
// and drops what does not fit (even at QoS 1), and drops QoS 1 messages
// past the client's inflight limit: a monitor that subscribes to
// flota/status/# on a fleet of more than a few thousand devices loses most
// of their statuses.
//
// So the broker keeps these statuses itself. Broker.Publish stores a
// retained one in statusStore (its topic and a copy of its payload: about
// 280 bytes a device with the engine's payload, against about 1,620 in
// mochi; BenchmarkDeviceStatusStore_100k) and publishes it through mochi
// without the retain flag, so that current subscribers get it as before and
// mochi keeps nothing. When a client's subscription that matches stored
// statuses is granted, a goroutine sends them to it as retained messages
// after the SUBACK, written straight to the connection, so paced by the
// socket, and at QoS 1 by the client's acknowledgements too: nothing is
// dropped, and the client's read loop, which receives the
// acknowledgements, never waits for the client. Every other topic,
// including the update summaries under flota/status/updates/, is retained
// by mochi as before.

// deviceStatusPrefix is the topic tree whose retained messages the broker
// keeps itself.
const deviceStatusPrefix = protocol.StatusRoot + "devices/"

// statusStore holds the latest retained payload of each device status topic.
// The zero value is empty and ready.
type statusStore struct {
	mu sync.RWMutex      // guards m
	m  map[string]string // topic -> payload
}

// storedStatus is one entry of a snapshot of the store.
type storedStatus struct{ topic, payload string }

// put stores a copy of payload as topic's status (the caller may reuse
// payload); an empty payload removes it, as MQTT says of retained messages.
// The map keeps a topic string the caller gave as its key, not a copy: a
// status change allocates its payload and nothing else.
func (s *statusStore) put(topic string, payload []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(payload) == 0 {
		delete(s.m, topic)
		return
	}
	if s.m == nil {
		s.m = make(map[string]string)
	}
	s.m[topic] = string(payload)
}

// get returns topic's stored payload.
func (s *statusStore) get(topic string) (string, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	p, ok := s.m[topic]
	return p, ok
}

// len returns the number of stored statuses.
func (s *statusStore) len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.m)
}

// match returns the stored statuses on topics that filter matches, at one
// instant, in no order. It copies string headers, not payloads.
func (s *statusStore) match(filter string) []storedStatus {
	if !mayMatchDeviceStatus(filter) {
		return nil
	}
	var out []storedStatus
	s.mu.RLock()
	if !strings.ContainsAny(filter, "+#") {
		if p, ok := s.m[filter]; ok {
			out = []storedStatus{{filter, p}}
		}
	} else {
		for t, p := range s.m {
			if protocol.MatchTopic(filter, t) {
				out = append(out, storedStatus{t, p})
			}
		}
	}
	s.mu.RUnlock()
	return out
}

// sortStatuses sorts a snapshot by topic, for people reading a monitor.
func sortStatuses(entries []storedStatus) {
	slices.SortFunc(entries, func(a, b storedStatus) int { return strings.Compare(a.topic, b.topic) })
}

// replay calls send for each entry of a snapshot that is still the stored
// status of its topic, and skips the others: a status replaced or removed
// since the snapshot was published after the subscription existed, so the
// subscriber gets it live. If the status changes while send runs, the live
// copy may have gone out before the stored one; replay then sends the
// current status (or an empty, non-retained payload if it was removed)
// until the last thing sent for a topic is what the store holds. replay
// stops at the first error of send.
func (s *statusStore) replay(entries []storedStatus, send func(topic string, payload []byte, retained bool) error) error {
	for _, e := range entries {
		cur, ok := s.get(e.topic)
		if !ok || cur != e.payload {
			continue
		}
		for {
			var payload []byte
			if ok {
				payload = []byte(cur) // mochi's packet wants bytes; a copy for each send
			}
			if err := send(e.topic, payload, ok); err != nil {
				return err
			}
			now, nowOK := s.get(e.topic)
			if now == cur && nowOK == ok {
				break
			}
			cur, ok = now, nowOK
		}
	}
	return nil
}

// mayMatchDeviceStatus reports whether filter can match a topic below
// flota/status/devices/.
func mayMatchDeviceStatus(filter string) bool {
	rest := filter
	for _, want := range [...]string{"flota", "status", "devices"} {
		level, more, found := strings.Cut(rest, "/")
		switch {
		case level == "#":
			return true
		case level != "+" && level != want, !found:
			return false
		}
		rest = more
	}
	return true
}

// wantsStoredStatuses reports whether a granted subscription gets the
// stored statuses it matches: not a shared subscription (MQTT 5 §4.8.2), not
// with retain handling 2 ("do not send"; OnSubscribe turns 1, "only if the
// subscription is new", into 2 for a subscription that existed).
func wantsStoredStatuses(sub packets.Subscription) bool {
	return sub.RetainHandling != 2 && !mqtt.IsSharedFilter(sub.Filter) && mayMatchDeviceStatus(sub.Filter)
}

// How a delivery runs. The snapshot is taken in OnSubscribed, which mochi
// calls on the client's read goroutine after making the subscription and
// before sending the SUBACK; a writer goroutine waits for the SUBACK
// (OnPacketSent) and writes the statuses with Client.WritePacket, which is
// safe for concurrent use and blocks while the socket is full.
//
// At QoS 0 the writer does all the work (replay). At QoS 1 each message
// needs a packet ID and an entry in the client's inflight store, as mochi's
// publishToClient makes them, and those entries may only be added on the
// client's read goroutine: on any other goroutine, adding one while the read
// goroutine runs Inflight.NextImmediate (after every packet of an MQTT 5
// client with a receive maximum) deadlocks mochi, which read-locks the
// inflight store twice there (mochi's own publishers to such a client run
// that risk; a delivery, which adds one right after each PUBACK, would meet
// it at once). So the read goroutine grants the messages, a window at a
// time (grant): in OnSubscribed, then after each PUBACK or PUBCOMP
// (OnPacketProcessed); the writer writes what it was granted, in order.
// grant never waits for the writer: the channel between them holds a whole
// window. feedsMu is never held while calling into mochi.

// feed is one connection's deliveries of stored statuses in progress. Its
// fields are guarded by Broker.feedsMu.
type feed struct {
	cl      *mqtt.Client
	gone    chan struct{}        // closed when the connection ends
	running map[string]*delivery // filter -> its delivery
	suback  chan struct{}        // closed once the SUBACK of the SUBSCRIBE being processed is sent
}

// delivery is the delivery of stored statuses to one subscription.
type delivery struct {
	filter string
	subID  int           // MQTT 5 subscription identifier, 0 if none
	qos    byte          // 0 or 1
	stop   chan struct{} // QoS 0: closed to end the delivery early

	// QoS 1 only; the client's read goroutine owns these fields.
	entries []storedStatus          // the snapshot
	next    int                     // entries[next:] are not granted yet
	redo    []string                // topics to send again (see acked)
	unacked map[uint16]storedStatus // packet ID -> what it carried ("" payload: a removal)
	out     chan packets.Packet     // granted packets for the writer; closed when the delivery ends
}

// OnSubscribe turns retain handling 1 ("send retained messages only if the
// subscription is new") into 2 ("do not send") for a filter the client is
// already subscribed to. This is the question mochi asks itself, and it can
// no longer be asked once the subscription is made, when OnSubscribed runs.
// First, it refuses the filters over the client's limits (limits.go).
func (h *hook) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if cl.Net.Inline {
		return pk
	}
	pk = h.b.limitSubscribe(cl, pk)
	copied := false
	for i, sub := range pk.Filters {
		if sub.RetainHandling != 1 {
			continue
		}
		if _, existed := cl.State.Subscriptions.Get(sub.Filter); !existed {
			continue
		}
		if !copied {
			pk.Filters, copied = slices.Clone(pk.Filters), true
		}
		pk.Filters[i].RetainHandling = 2
	}
	return pk
}

// OnSubscribed starts the delivery of the stored statuses that each granted
// subscription matches, in place of a delivery still running for the same
// filter (a subscription made again gets every stored status again).
func (h *hook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, reasonCodes []byte) {
	if cl.Net.Inline {
		return // Broker.Subscribe delivers them itself
	}
	for i, sub := range pk.Filters {
		if i >= len(reasonCodes) || reasonCodes[i] >= packets.ErrUnspecifiedError.Code || !wantsStoredStatuses(sub) {
			continue
		}
		entries := h.b.statuses.match(sub.Filter)
		sortStatuses(entries)
		h.b.startDelivery(cl, sub, min(1, reasonCodes[i]), entries)
	}
}

// OnUnsubscribed ends the deliveries of the filters the client left.
func (h *hook) OnUnsubscribed(cl *mqtt.Client, pk packets.Packet) {
	if cl.Net.Inline || h.b.feedCount.Load() == 0 {
		return
	}
	for _, sub := range pk.Filters {
		h.b.endDelivery(cl, sub.Filter)
	}
}

// OnPacketSent lets the deliveries waiting for a SUBACK begin.
func (h *hook) OnPacketSent(cl *mqtt.Client, pk packets.Packet, _ []byte) {
	if pk.FixedHeader.Type != packets.Suback || h.b.feedCount.Load() == 0 {
		return
	}
	h.b.feedsMu.Lock()
	defer h.b.feedsMu.Unlock()
	if f := h.b.feeds[cl]; f != nil && f.suback != nil {
		close(f.suback)
		f.suback = nil
	}
}

// OnPacketProcessed continues the QoS 1 deliveries to a client that
// acknowledged a message: a PUBACK (or the PUBCOMP of a QoS 2 one) frees
// room in its inflight store. It runs on the client's read goroutine for
// every packet a client sends, so the packet type is tested first.
func (h *hook) OnPacketProcessed(cl *mqtt.Client, pk packets.Packet, err error) {
	if (pk.FixedHeader.Type != packets.Puback && pk.FixedHeader.Type != packets.Pubcomp) || err != nil ||
		h.b.feedCount.Load() == 0 {
		return
	}
	h.b.feedsMu.Lock()
	f := h.b.feeds[cl]
	var ds []*delivery
	if f != nil {
		for _, d := range f.running {
			if d.qos > 0 {
				ds = append(ds, d)
			}
		}
	}
	h.b.feedsMu.Unlock()
	for _, d := range ds {
		if pk.FixedHeader.Type == packets.Puback {
			h.b.acked(d, pk.PacketID)
		}
		h.b.grant(f, d)
	}
}

// startDelivery starts sending entries to cl for sub at qos, ending a
// delivery still running for the same filter. It runs on cl's read goroutine.
func (b *Broker) startDelivery(cl *mqtt.Client, sub packets.Subscription, qos byte, entries []storedStatus) {
	b.endDelivery(cl, sub.Filter)
	if len(entries) == 0 {
		return
	}
	d := &delivery{filter: sub.Filter, subID: sub.Identifier, qos: qos}
	if qos == 0 {
		d.stop = make(chan struct{})
	} else {
		d.entries = entries
		d.unacked = make(map[uint16]storedStatus)
		d.out = make(chan packets.Packet, b.statusWindow(cl))
	}

	b.feedsMu.Lock()
	f := b.feeds[cl]
	if f == nil {
		f = &feed{cl: cl, gone: make(chan struct{}), running: make(map[string]*delivery)}
		b.feeds[cl] = f
		b.feedCount.Add(1)
	}
	if f.suback == nil {
		f.suback = make(chan struct{})
	}
	suback := f.suback
	f.running[sub.Filter] = d
	b.feedWG.Add(1)
	b.feedsMu.Unlock()

	if qos == 0 {
		go b.writeSnapshot(f, d, suback, entries)
		return
	}
	go b.writeGranted(f, d, suback)
	b.grant(f, d)
}

// endDelivery ends cl's delivery for filter, if one runs. It runs on cl's
// read goroutine.
func (b *Broker) endDelivery(cl *mqtt.Client, filter string) {
	b.feedsMu.Lock()
	defer b.feedsMu.Unlock()
	if f := b.feeds[cl]; f != nil {
		if d := f.running[filter]; d != nil {
			b.end(f, d)
		}
	}
}

// end ends d, if it still runs. At QoS 1 the writer still writes what was
// granted: it is in the inflight store. The caller holds feedsMu.
func (b *Broker) end(f *feed, d *delivery) {
	if f.running[d.filter] != d {
		return
	}
	if d.qos == 0 {
		close(d.stop)
	} else {
		close(d.out)
	}
	b.forget(f, d)
}

// forget removes d from f's deliveries, and f from the broker's once it has
// none. The caller holds feedsMu.
func (b *Broker) forget(f *feed, d *delivery) {
	if f.running[d.filter] == d {
		delete(f.running, d.filter)
	}
	if len(f.running) == 0 && b.feeds[f.cl] == f {
		delete(b.feeds, f.cl)
		b.feedCount.Add(-1)
	}
}

// endFeeds ends the deliveries to a connection that ended.
func (b *Broker) endFeeds(cl *mqtt.Client) {
	if b.feedCount.Load() == 0 {
		return
	}
	b.feedsMu.Lock()
	defer b.feedsMu.Unlock()
	if f := b.feeds[cl]; f != nil {
		close(f.gone)
		delete(b.feeds, cl)
		b.feedCount.Add(-1)
	}
}

// waitSuback waits until the SUBACK is sent; false if the delivery ended first.
func waitSuback(f *feed, stop <-chan struct{}, suback <-chan struct{}) bool {
	select {
	case <-suback:
		return true
	case <-f.gone:
	case <-stop:
	}
	return false
}

// writeSnapshot is the writer of a QoS 0 delivery.
func (b *Broker) writeSnapshot(f *feed, d *delivery, suback <-chan struct{}, entries []storedStatus) {
	defer b.feedWG.Done()
	defer func() {
		b.feedsMu.Lock()
		defer b.feedsMu.Unlock()
		b.forget(f, d)
	}()
	if !waitSuback(f, d.stop, suback) {
		return
	}
	err := b.statuses.replay(entries, func(topic string, payload []byte, retained bool) error {
		return b.writeStatus(f, d, topic, payload, retained)
	})
	b.log.Debug("stored statuses written", "client", f.cl.ID, "filter", d.filter, "qos", 0, "statuses", len(entries), "end", err)
}

// writeStatus writes one status of the QoS 0 delivery d, if the ACL lets
// the client read it.
func (b *Broker) writeStatus(f *feed, d *delivery, topic string, payload []byte, retained bool) error {
	select {
	case <-d.stop:
		return errDeliveryEnded
	case <-f.gone:
		return errDeliveryEnded
	default:
	}
	if !b.aclCheck(f.cl, topic, false) {
		return nil
	}
	return f.cl.WritePacket(b.statusPacket(d, topic, payload, retained))
}

// writeGranted is the writer of a QoS 1 delivery: it writes the packets the
// read goroutine granted, until the delivery or the connection ends.
func (b *Broker) writeGranted(f *feed, d *delivery, suback <-chan struct{}) {
	defer b.feedWG.Done()
	if !waitSuback(f, nil, suback) {
		return
	}
	n := 0
	for {
		select {
		case pk, ok := <-d.out:
			if !ok {
				b.log.Debug("stored statuses written", "client", f.cl.ID, "filter", d.filter, "qos", 1, "packets", n)
				return
			}
			if err := f.cl.WritePacket(pk); err != nil {
				return // the connection is ending
			}
			n++
		case <-f.gone:
			return
		}
	}
}

// errDeliveryEnded ends a QoS 0 delivery early.
var errDeliveryEnded = errors.New("delivery ended")

// statusPacket is the PUBLISH of a stored status for d.
func (b *Broker) statusPacket(d *delivery, topic string, payload []byte, retained bool) packets.Packet {
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: d.qos, Retain: retained},
		TopicName:   topic,
		Payload:     payload,
		Created:     time.Now().Unix(),
	}
	if d.subID > 0 {
		pk.Properties.SubscriptionIdentifier = []int{d.subID} // MQTT 5 only [MQTT-3.3.4-3]
	}
	return pk
}

// statusWindow is how many unacknowledged messages a client may have for a
// QoS 1 delivery to go on: half its inflight limit (mochi's MaximumInflight,
// or the client's MQTT 5 receive maximum if lower), so that live messages
// still find room.
func (b *Broker) statusWindow(cl *mqtt.Client) int {
	limit := int(b.srv.Options.Capabilities.MaximumInflight)
	if rm := int(cl.Properties.Props.ReceiveMaximum); rm > 0 {
		limit = min(limit, rm)
	}
	return max(1, limit/2)
}

// grant hands the writer of the QoS 1 delivery d its next statuses, each
// with a packet ID and an inflight entry, while the client has fewer
// unacknowledged messages than its window: first the topics to send again,
// then the snapshot's entries still current (replay's rule). It ends the
// delivery once everything is acknowledged. It runs on the client's read
// goroutine; it never waits for the client (NextPacketID takes a lock of
// its own, not the client's write lock: mochi patch 25).
func (b *Broker) grant(f *feed, d *delivery) {
	cl := f.cl
	window := b.statusWindow(cl)
	for cl.State.Inflight.Len() < window {
		var e storedStatus
		present := true
		if len(d.redo) > 0 {
			e.topic, d.redo = d.redo[0], d.redo[1:]
			e.payload, present = b.statuses.get(e.topic)
		} else if d.next < len(d.entries) {
			e = d.entries[d.next]
			d.next++
			if cur, ok := b.statuses.get(e.topic); !ok || cur != e.payload {
				continue // replaced or removed since the snapshot: the client got that live
			}
		} else {
			break
		}
		if !b.aclCheck(cl, e.topic, false) {
			continue
		}
		id, err := cl.NextPacketID()
		if err != nil {
			b.log.Warn("no packet ID for a stored status", "client", cl.ID, "err", err)
			break // retried at the next acknowledgement
		}
		var payload []byte
		if present {
			payload = []byte(e.payload)
		}
		pk := b.statusPacket(d, e.topic, payload, present)
		pk.PacketID = uint16(id)
		if cl.State.Inflight.Set(pk) {
			atomic.AddInt64(&b.srv.Info.Inflight, 1)
			cl.State.Inflight.DecreaseSendQuota()
		}
		d.unacked[pk.PacketID] = e
		d.out <- pk // never blocks: out holds a window, and every packet in it is unacknowledged
	}
	if d.next == len(d.entries) && len(d.redo) == 0 && len(d.unacked) == 0 {
		b.feedsMu.Lock()
		b.end(f, d)
		b.feedsMu.Unlock()
	}
}

// acked records the acknowledgement of packet id, if it is d's. If the
// status it carried has changed since, its live copy may have reached the
// client before it: the topic is sent again (replay's rule).
func (b *Broker) acked(d *delivery, id uint16) {
	e, ok := d.unacked[id]
	if !ok {
		return
	}
	delete(d.unacked, id)
	if cur, _ := b.statuses.get(e.topic); cur != e.payload { // a stored payload is never empty
		d.redo = append(d.redo, e.topic)
	}
}
