package agent

import (
	"time"
)

// The simulated network link (Config.Bandwidth, Config.Latency). A real
// device on a slow radio (NB-IoT, LTE-M) receives a window of chunks one
// after the other at the link's rate, and each message takes the link's
// latency to arrive. The agent models that inside its own loop, with no
// goroutine per message and nothing blocking in paho's callbacks: paho's
// handler still hands every down message to the loop at once; the loop puts
// it in the downlink queue with the time it would have arrived, and handles
// it when the downlink timer fires. Up messages (acks, reports, hellos) wait
// in the uplink queue and are published when their time comes.
//
// Each direction is a FIFO with its own rate (full duplex): a message of n
// bytes (topic and payload) occupies the link for n/Bandwidth after the
// previous one left it, then takes Latency to arrive. Since the latency is
// the same for every message, arrival times grow with queue order, so one
// timer per direction, set for the head of the queue, is enough.
//
// What is not delayed: the presence status (online/offline) and the
// subscription, which are connection housekeeping rather than protocol
// messages. A disconnect (injected, reboot, power cut) empties both queues:
// what was on the air is lost, as on a real link.

// link is the state of both directions. Owned by the loop goroutine.
type link struct {
	down linkDir[*inbound]
	up   linkDir[*linkMsg]
}

// linkDir is one direction of the link.
type linkDir[T any] struct {
	rate    int64         // bytes per second; 0: unlimited
	latency time.Duration // one-way delay
	free    time.Time     // when the link finishes sending what is queued
	q       []queued[T]   // FIFO by arrival time
	timer   *time.Timer   // fires at the head's arrival; nil when q is empty
}

// queued is a message on the link and the time it arrives.
type queued[T any] struct {
	at  time.Time
	msg T
}

// linkMsg is an up message waiting on the uplink.
type linkMsg struct {
	topic   string
	qos     byte
	payload []byte
	tok     *linkToken
}

// newLink returns the link of cfg, or nil when it adds nothing.
func newLink(cfg Config) *link {
	if cfg.Bandwidth <= 0 && cfg.Latency <= 0 {
		return nil
	}
	l := &link{}
	l.down.rate, l.down.latency = cfg.Bandwidth, cfg.Latency
	l.up.rate, l.up.latency = cfg.Bandwidth, cfg.Latency
	return l
}

// transmitTime is how long n bytes occupy a link of rate bytes/s.
func transmitTime(n int, rate int64) time.Duration {
	if rate <= 0 || n <= 0 {
		return 0
	}
	return time.Duration(int64(n) * int64(time.Second) / rate)
}

// arrival books n bytes on the link at now and returns when they arrive.
func (d *linkDir[T]) arrival(now time.Time, n int) time.Time {
	start := now
	if d.free.After(start) {
		start = d.free
	}
	d.free = start.Add(transmitTime(n, d.rate))
	return d.free.Add(d.latency)
}

// push queues msg of n bytes and arms the timer if it is the head.
func (d *linkDir[T]) push(now time.Time, n int, msg T) {
	at := d.arrival(now, n)
	d.q = append(d.q, queued[T]{at, msg})
	if len(d.q) == 1 {
		d.arm(now)
	}
}

// arm sets the timer for the head of the queue.
func (d *linkDir[T]) arm(now time.Time) {
	if d.timer != nil {
		d.timer.Stop()
		d.timer = nil
	}
	if len(d.q) > 0 {
		d.timer = time.NewTimer(d.q[0].at.Sub(now))
	}
}

// pop removes and returns the messages that arrived by now, and re-arms the
// timer for the next one.
func (d *linkDir[T]) pop(now time.Time) []T {
	var out []T
	i := 0
	for ; i < len(d.q) && !d.q[i].at.After(now); i++ {
		out = append(out, d.q[i].msg)
		var zero queued[T]
		d.q[i] = zero // let the payload go
	}
	d.q = d.q[i:]
	if len(d.q) == 0 {
		d.q = nil // do not keep a grown array for an idle device
	}
	d.arm(now)
	return out
}

// reset drops everything on the link and returns it.
func (d *linkDir[T]) reset() []queued[T] {
	q := d.q
	d.q = nil
	d.free = time.Time{}
	if d.timer != nil {
		d.timer.Stop()
		d.timer = nil
	}
	return q
}

// receive takes a down message from paho's handler: handled at once without
// a link, else queued until it arrives. The downlink holds at most
// QueueSize messages (the orchestrator's window keeps it far below).
func (a *Agent) receive(m *inbound) {
	if a.link == nil {
		a.handleDown(m.kind, m.payload)
		return
	}
	d := &a.link.down
	if len(d.q) >= a.cfg.QueueSize {
		a.updateStats(func(s *Stats) { s.QueueDropped++ })
		return
	}
	d.push(time.Now(), len(a.downPrefix)+len(m.kind)+len(m.payload), m)
}

// deliverDown handles the down messages that arrived. Messages of an
// earlier connection were dropped when it ended; the generation check
// guards the same rule as the loop's.
func (a *Agent) deliverDown() {
	for _, m := range a.link.down.pop(time.Now()) {
		if !a.online || m.gen != a.gen.Load() {
			continue
		}
		a.handleDown(m.kind, m.payload)
		if a.action != actNone {
			// A disconnect or reboot empties the link: perform it
			// before the next message.
			a.perform()
		}
	}
}

// linkPublish is Agent.out with a link: the message waits on the uplink.
func (a *Agent) linkPublish(topic string, qos byte, payload []byte) waiter {
	if a.client == nil {
		return doneToken{errOffline}
	}
	tok := &linkToken{a: a}
	a.link.up.push(time.Now(), len(topic)+len(payload), &linkMsg{topic, qos, payload, tok})
	return tok
}

// sendUp publishes the up messages whose time came.
func (a *Agent) sendUp() {
	for _, m := range a.link.up.pop(time.Now()) {
		m.tok.sent = a.clientPublish(m.topic, m.qos, m.payload)
	}
}

// resetLink empties both directions: messages on the air are lost.
func (a *Agent) resetLink() {
	if a.link == nil {
		return
	}
	a.link.down.reset()
	for _, q := range a.link.up.reset() {
		q.msg.tok.sent = doneToken{errOffline}
	}
}

// linkTimers returns the channels of the link's timers (nil: never ready).
func (a *Agent) linkTimers() (down, up <-chan time.Time) {
	if a.link == nil {
		return nil, nil
	}
	return timerC(a.link.down.timer), timerC(a.link.up.timer)
}

// linkToken is the publish result of a message on the uplink. It is only
// used on the loop goroutine.
type linkToken struct {
	a    *Agent
	sent waiter // paho's token once published; nil while on the link
}

// WaitTimeout waits for the message's PUBACK. A message still on the link
// is sent first, with those ahead of it, each at its time: the loop waits,
// as a device does while its radio sends.
func (t *linkToken) WaitTimeout(d time.Duration) bool {
	deadline := time.Now().Add(d)
	for t.sent == nil {
		up := &t.a.link.up
		if len(up.q) == 0 {
			return false // not reachable: the queue is emptied with sent set
		}
		wait := time.Until(up.q[0].at)
		if time.Now().Add(wait).After(deadline) {
			return false
		}
		time.Sleep(wait)
		t.a.sendUp()
	}
	return t.sent.WaitTimeout(time.Until(deadline))
}

// Error is the publish error; nil while the message is on the link.
func (t *linkToken) Error() error {
	if t.sent == nil {
		return nil
	}
	return t.sent.Error()
}
