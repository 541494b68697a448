package agent

import (
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"math"
	"strings"
	"time"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
)

// transfer is the update the device holds: the offset it has and a running
// SHA-256 of the bytes before it. The bytes themselves are not kept.
type transfer struct {
	update    string
	handle    uint32
	fw        protocol.FirmwareInfo
	expected  int64
	hash      hash.Hash
	state     fleet.DeviceState // downloading, downloaded, verified, installing or rebooting
	ackEvery  int               // in-order chunks per ack: half the offer's window
	unacked   int               // in-order chunks received since the last ack
	faultAt   int64             // disconnect once expected passes it; -1: no fault
	cutAt     int64             // power cut once expected passes it; -1: none (power.go)
	offeredAt time.Time
	// enc is the decoding side of an encoded payload (payload.go); nil
	// for the image itself. expected then counts payload bytes.
	enc *encoded
	// copy, when not nil, is the image a simulated device copies into
	// Config.Images (payload.go).
	copy []byte
}

// completed remembers the last update the device rebooted into, so that a
// re-offer of it is answered with a hello rather than a new download.
type completed struct {
	update   string
	handle   uint32
	size     int64  // the transfer's size: payload bytes with an encoding
	encoding string // its payload encoding
	version  string
}

// handleDown handles one down message. It touches the network only through
// a.out; the loop performs the action it leaves in a.action.
func (a *Agent) handleDown(kind string, payload []byte) {
	switch kind {
	case protocol.KindOffer:
		a.handleOffer(payload)
	case protocol.KindChunk:
		a.handleChunk(payload)
	case protocol.KindCancel:
		a.handleCancel(payload)
	default:
		a.bad(kind, nil)
	}
}

func (a *Agent) bad(kind string, err error) {
	a.logger().Debug("bad down message", "kind", kind, "err", err)
	a.updateStats(func(s *Stats) { s.BadFrames++ })
}

func (a *Agent) handleOffer(b []byte) {
	o, err := protocol.DecodeOffer(b)
	if err != nil {
		a.bad(protocol.KindOffer, err)
		return
	}
	if a.held != nil && a.held.state == fleet.StateRebooting {
		a.settle() // rebooted already; the hello's confirmation was not seen
	}
	t := a.held
	if t == nil && a.done != nil && a.done.update == o.Update && a.version == o.Firmware.Version {
		// Already running it: confirm again.
		a.done.handle = o.Handle
		a.sayHello(&protocol.Held{Update: o.Update, Handle: o.Handle, Offset: a.done.size, State: fleet.StateRebooting, Encoding: a.done.encoding})
		return
	}
	if t != nil && t.update != o.Update {
		a.report(protocol.Report{Update: o.Update, Handle: o.Handle, State: fleet.StateRejected, Reason: fleet.ReasonBusy})
		return
	}
	if st, reason := a.refusal(o.Firmware); reason != "" {
		a.report(protocol.Report{Update: o.Update, Handle: o.Handle, State: st, Reason: reason})
		return
	}
	if o.Firmware.Model != "" && o.Firmware.Model != a.cfg.Model {
		a.report(protocol.Report{Update: o.Update, Handle: o.Handle, State: fleet.StateRejected, Reason: fleet.ReasonIncompatibleModel})
		return
	}
	if o.Firmware.Size > math.MaxUint32 || o.PayloadSize > math.MaxUint32 || (a.cfg.MaxImageSize > 0 && o.Firmware.Size > a.cfg.MaxImageSize) {
		a.report(protocol.Report{Update: o.Update, Handle: o.Handle, State: fleet.StateRejected, Reason: fleet.ReasonNoSpace})
		return
	}
	if a.tooLarge(o) {
		a.report(protocol.Report{Update: o.Update, Handle: o.Handle, State: fleet.StateRejected, Reason: fleet.ReasonChunkTooLarge})
		return
	}
	if reason := a.encodingRefusal(o); reason != "" {
		a.report(protocol.Report{Update: o.Update, Handle: o.Handle, State: fleet.StateRejected, Reason: reason})
		return
	}
	if t != nil && t.fw.Size == o.Firmware.Size && strings.EqualFold(t.fw.SHA256, o.Firmware.SHA256) && (sameEncoding(t, o) || t.state != fleet.StateDownloading) {
		// The same update again (a re-offer, or after an orchestrator
		// restart): keep the bytes, adopt the handle.
		t.handle = o.Handle
		t.ackEvery, t.unacked = ackEvery(o.Window), 0
		a.updateStats(func(s *Stats) { s.Encoding = t.encoding() })
		st := t.state
		if st == fleet.StateDownloading {
			st = fleet.StateAccepted
		}
		a.report(protocol.Report{Update: t.update, Handle: t.handle, State: st, Offset: t.expected})
		return
	}
	if t != nil && t.state != fleet.StateDownloading {
		// Another image under the same update while this one installs:
		// the device finishes what it started.
		a.report(protocol.Report{Update: o.Update, Handle: o.Handle, State: fleet.StateRejected, Reason: fleet.ReasonBusy})
		return
	}
	t = &transfer{
		update:    o.Update,
		handle:    o.Handle,
		fw:        o.Firmware,
		hash:      sha256.New(),
		state:     fleet.StateDownloading,
		ackEvery:  ackEvery(o.Window),
		faultAt:   -1,
		offeredAt: time.Now(),
	}
	if o.Encoding != "" {
		t.enc = newEncoded(o)
	}
	if p := a.cfg.Faults.Disconnect; p > 0 && t.size() > 0 && a.rng.Float64() < p {
		t.faultAt = a.rng.Int64N(t.size())
	}
	a.armPowerCut(t)
	a.setHeld(t)
	a.startCopy(t)
	a.updateStats(func(s *Stats) { s.Encoding = o.Encoding })
	a.report(protocol.Report{Update: t.update, Handle: t.handle, State: fleet.StateAccepted, Offset: 0})
	if t.size() == 0 {
		a.complete()
	}
}

func (a *Agent) handleChunk(b []byte) {
	f, err := protocol.DecodeFrame(b)
	if err != nil {
		a.bad(protocol.KindChunk, err)
		return
	}
	t := a.held
	if t == nil || f.Handle != t.handle {
		return // another transfer's: drop silently
	}
	if t.state != fleet.StateDownloading {
		a.ack(t) // complete already: tell where it stands
		return
	}
	if p := a.cfg.Faults.DropChunks; p > 0 && a.rng.Float64() < p {
		a.updateStats(func(s *Stats) { s.ChunksDropped++ })
		return
	}
	if a.cfg.MaxChunk > 0 && len(f.Payload) > a.cfg.MaxChunk {
		// Over the buffer: a real device could not receive it at all.
		a.updateStats(func(s *Stats) { s.OversizedFrames++ })
		return
	}
	off, n := int64(f.Offset), int64(len(f.Payload))
	if off != t.expected || n == 0 || off+n > t.size() {
		a.ack(t) // a gap or a duplicate: the duplicate ack tells the expected offset
		return
	}
	if t.enc != nil {
		if !a.decode(t, f.Payload) {
			return
		}
	} else {
		if !a.writeImage(t, off, f.Payload) {
			return
		}
		t.hash.Write(f.Payload)
		t.copyOut(f.Payload)
	}
	if r := a.cfg.FlashRate; r > 0 {
		time.Sleep(time.Duration(n * int64(time.Second) / r))
	}
	t.expected += n
	a.updateStats(func(s *Stats) { s.BytesReceived += n })
	a.checkpoint(t)
	if t.unacked++; t.unacked >= t.ackEvery || t.expected == t.size() {
		a.ack(t)
	}
	if t.cutAt >= 0 && t.expected > t.cutAt {
		// Before the completion: power may go with the last chunk too.
		t.cutAt = -1
		a.action = actPowerCut
		return
	}
	if t.expected == t.size() {
		a.complete()
		return
	}
	if t.faultAt >= 0 && t.expected > t.faultAt {
		t.faultAt = -1
		a.action = actFaultDisconnect
	}
}

// complete checks the received image and starts the install.
func (a *Agent) complete() {
	t := a.held
	if t.enc != nil && !a.finishDecode(t) {
		return
	}
	if !a.syncImage() {
		a.setHeld(nil)
		a.report(protocol.Report{Update: t.update, Handle: t.handle, State: fleet.StateFailed, Reason: fleet.ReasonStorageError})
		return
	}
	sum := hex.EncodeToString(t.hash.Sum(nil))
	t.hash = nil
	a.updateStats(func(s *Stats) { s.ImageSHA256 = sum })
	ok := strings.EqualFold(sum, t.fw.SHA256)
	a.endCopy(t, ok)
	// Where the steps below end is what the first report saves (persist.go).
	if ok {
		t.state = fleet.StateInstalling
	} else {
		a.setHeld(nil)
	}
	a.report(protocol.Report{Update: t.update, Handle: t.handle, State: fleet.StateDownloaded, Offset: t.expected})
	if !ok {
		a.logger().Info("image digest mismatch", "update", t.update, "got", sum, "want", t.fw.SHA256)
		a.report(protocol.Report{Update: t.update, Handle: t.handle, State: fleet.StateFailed, Reason: fleet.ReasonBadDigest})
		return
	}
	a.report(protocol.Report{Update: t.update, Handle: t.handle, State: fleet.StateVerified, Offset: t.expected})
	a.report(protocol.Report{Update: t.update, Handle: t.handle, State: fleet.StateInstalling, Offset: t.expected})
	a.action = actInstall
}

// finishInstall ends the install, simulated or done by the Device with
// the result err: a failure keeps the old version, a success reboots into
// the new one.
func (a *Agent) finishInstall(err error) {
	t := a.held
	if t == nil || t.state != fleet.StateInstalling {
		return
	}
	if p := a.cfg.Faults.FailInstall; err == nil && p > 0 && a.rng.Float64() < p {
		err = errInjectedInstall
	}
	if err != nil {
		a.logger().Warn("install failed", "update", t.update, "err", err)
		a.setHeld(nil)
		a.report(protocol.Report{Update: t.update, Handle: t.handle, State: fleet.StateFailed, Reason: fleet.ReasonInstallFailed})
		return
	}
	a.updateStats(func(s *Stats) { s.Installs++ })
	t.state = fleet.StateRebooting
	a.report(protocol.Report{Update: t.update, Handle: t.handle, State: fleet.StateRebooting, Offset: t.expected, Version: t.fw.Version})
	a.pendingVersion, a.pendingImage = t.fw.Version, strings.ToLower(t.fw.SHA256)
	a.action = actReboot
}

func (a *Agent) handleCancel(b []byte) {
	c, err := protocol.DecodeCancel(b)
	if err != nil {
		a.bad(protocol.KindCancel, err)
		return
	}
	t := a.held
	switch {
	case t != nil && t.update == c.Update:
		if t.state != fleet.StateDownloading {
			return // installing or rebooting: too late to cancel
		}
		a.setHeld(nil)
		reason := c.Reason
		if reason == fleet.ReasonNone {
			reason = fleet.ReasonOperator
		}
		a.logger().Info("transfer cancelled", "update", t.update, "offset", t.expected, "reason", reason)
		a.report(protocol.Report{Update: t.update, Handle: c.Handle, State: fleet.StateCancelled, Offset: t.expected, Reason: reason})
	case a.done != nil && a.done.update == c.Update:
		// Already running it: nothing to cancel.
	default:
		a.report(protocol.Report{Update: c.Update, Handle: c.Handle, State: fleet.StateCancelled, Reason: fleet.ReasonUnknownUpdate})
	}
}

// heldHello is the transfer a hello announces, if any.
func (a *Agent) heldHello() *protocol.Held {
	t := a.held
	if t == nil {
		return nil
	}
	return &protocol.Held{Update: t.update, Handle: t.handle, Offset: t.expected, State: t.state, Encoding: t.encoding()}
}

// sayHello publishes a hello. After a reboot (transfer state rebooting) it
// waits for the PUBACK and then forgets the transfer.
func (a *Agent) sayHello(held *protocol.Held) {
	h := protocol.Hello{V: protocol.Version, Model: a.cfg.Model, Version: a.version, Tags: a.cfg.Tags, Transfer: held, Image: a.image, Conn: a.conn.Load()}
	if !a.cfg.QuietLimits {
		h.MaxChunk, h.MaxWindow, h.Caps = a.cfg.MaxChunk, a.cfg.MaxWindow, a.caps()
	}
	tok := a.out(protocol.UpTopic(a.cfg.ID, protocol.KindHello), 1, protocol.Encode(h))
	a.resumeHeld()
	if held == nil || held.State != fleet.StateRebooting || a.held == nil || a.held.update != held.Update {
		return
	}
	if !tok.WaitTimeout(a.cfg.PublishTimeout) || tok.Error() != nil {
		// Said again after RetryInterval (or on the next connect): a
		// device that stayed connected must not hold the transfer forever.
		a.logger().Warn("hello after reboot not acknowledged; saying it again", "err", tok.Error())
		if a.helloTimer == nil {
			a.helloTimer = time.NewTimer(a.cfg.RetryInterval)
		}
		return
	}
	a.settle()
}

// setHeld replaces the held transfer; a Device discards the image of the
// one it replaces.
func (a *Agent) setHeld(t *transfer) {
	if prev := a.held; prev != nil && prev != t {
		stopDecoder(prev)
		a.endCopy(prev, false)
		if a.cfg.Device != nil {
			a.cfg.Device.Discard(prev.update)
		}
	}
	a.held = t
	a.updateStats(func(s *Stats) { s.Holding = t != nil })
}

// settle forgets a transfer the device rebooted into.
func (a *Agent) settle() {
	t := a.held
	a.setHeld(nil)
	a.done = &completed{update: t.update, handle: t.handle, size: t.size(), encoding: t.encoding(), version: t.fw.Version}
	d := time.Since(t.offeredAt)
	a.updateStats(func(s *Stats) { s.UpdateTime, s.EndTime = d, d })
	a.saveState(false) // lost in a crash: the reboot hello is said again
}

// report publishes a state change (QoS 1, not waited for here) and records
// it in the stats.
func (a *Agent) report(r protocol.Report) {
	r.V = protocol.Version
	if r.Version == "" {
		r.Version = a.version
	}
	a.saveState(true) // never report a state the device has not saved
	a.lastReport = a.out(protocol.UpTopic(a.cfg.ID, protocol.KindReport), 1, protocol.Encode(r))
	if r.Reason == fleet.ReasonBusy || r.Reason == fleet.ReasonUnknownUpdate {
		return // about an update the device does not hold
	}
	end := a.endTime(r)
	a.updateStats(func(s *Stats) {
		if end > 0 {
			s.EndTime = end
		}
		s.State = r.State
		switch r.State {
		case fleet.StateAccepted:
			if r.Offset == 0 {
				s.Failed, s.LastReason = false, ""
			}
		case fleet.StateFailed, fleet.StateRejected:
			s.Failed, s.LastReason = true, r.Reason
		case fleet.StateCancelled:
			s.LastReason = r.Reason
		}
	})
}

// ackEvery is how many in-order chunks the agent takes before it acks:
// half the window, so that the orchestrator always has room to send while
// the ack travels, and half the ack messages of acking every chunk.
func ackEvery(window int) int {
	return max(1, window/2)
}

// ack publishes the cumulative ack of t (QoS 0: the orchestrator's timeout
// recovers a lost one).
func (a *Agent) ack(t *transfer) {
	t.unacked = 0
	a.out(protocol.UpTopic(a.cfg.ID, protocol.KindAck), 0,
		protocol.Encode(protocol.Ack{V: protocol.Version, Handle: t.handle, Offset: t.expected}))
}

// offerMark is when the newest transfer's update was offered.
type offerMark struct {
	update string
	at     time.Time
}

// endTime is the time from the offer to r, when r ends the newest transfer
// with a failure or cancel; else 0.
func (a *Agent) endTime(r protocol.Report) time.Duration {
	if r.State != fleet.StateFailed && r.State != fleet.StateCancelled {
		return 0
	}
	if r.Update != a.lastOffer.update || a.lastOffer.at.IsZero() {
		return 0
	}
	return time.Since(a.lastOffer.at)
}

// tooLarge reports whether an offer's chunk size or window is over the
// device's limits (docs/PROTOCOL.md §5.4 rule 6).
func (a *Agent) tooLarge(o protocol.Offer) bool {
	return a.cfg.MaxChunk > 0 && o.ChunkSize > a.cfg.MaxChunk || a.cfg.MaxWindow > 0 && o.Window > a.cfg.MaxWindow
}
