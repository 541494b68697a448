package rollout

import (
	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
)

// An engine that starts while the devices stay connected (an orchestrator
// restarted, or a standby that took over, on an external broker) hears no
// hello: a device says hello when it connects, and these did before. The
// external broker's client tells it instead of every device whose retained
// status says online when it subscribes (mqttclient.OnFoundOnline): such a
// device is connected and subscribed (it publishes its status after its
// SUBACK, docs/PROTOCOL.md §6). The engine takes it as ready and does what
// a hello without a transfer would lead to, letting the device say the
// rest: a queued device is admitted; a transfer that was in progress is
// offered again (the device answers with the bytes it holds, or with a
// hello if it already runs the target, §5.4 rules 2 and 7); a device that
// was rebooting is sent its offer again, which it answers with a hello
// that confirms the boot. The device's limits (max_chunk, max_window) are
// known only from a hello: until its next one, offers use the update's.

// kindFound is the inbox pseudo-kind of DeviceFoundOnline.
const kindFound = "\x00found"

// DeviceFoundOnline tells the engine that a device was connected and
// subscribed before the engine's transport subscribed. It is safe to call
// from any goroutine and never blocks for long.
func (e *Engine) DeviceFoundOnline(deviceID string) {
	if e.closed.Load() || !e.opened.Load() {
		return
	}
	select {
	case e.inbox <- inbound{device: deviceID, kind: kindFound}:
	default:
		e.stats.drops.Add(1)
		e.logDrop(deviceID, &e.presenceDrops, dropFull)
	}
}

// foundOnline runs on the loop for DeviceFoundOnline.
func (e *Engine) foundOnline(device string) {
	if e.ready[device] {
		return // it said hello since
	}
	e.ready[device] = true
	t := e.active[device]
	if t == nil {
		return
	}
	r := t.r
	if !r.u.State.Active() || t.cancelling != "" {
		return // its hello, at its next connection, ends its part
	}
	switch st := t.p.State; {
	case st == fleet.StateQueued:
		r.enqueue(t, t.resume)
		e.admit(r)
	case st == fleet.StateRebooting:
		e.reoffer(t)
	case st.Transferring():
		if t.slot {
			e.offer(t)
			return
		}
		t.resume = true
		r.enqueue(t, true)
		e.admit(r)
	}
}

// reoffer sends t's offer again, under its handle, without a change of
// state: a device that rebooted into it answers with its hello.
func (e *Engine) reoffer(t *target) {
	e.sizeOffer(t)
	msg := protocol.Offer{
		V: protocol.Version, Update: t.r.u.ID, Handle: t.handle, Attempt: t.p.Attempts,
		Firmware:  protocol.FirmwareInfoOf(t.r.fw),
		ChunkSize: t.chunk, Window: t.window,
	}
	if err := e.Transport.Publish(protocol.DownTopic(t.p.DeviceID, protocol.KindOffer), protocol.Encode(msg), false, 1); err != nil {
		e.Logger.Warn("publish offer", "device", t.p.DeviceID, "err", err)
	}
}
