package rollout

import (
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/logsafe"
	"github.com/flotaio/flota/internal/protocol"
	"github.com/flotaio/flota/internal/sqlite"
)

// run is one active update, owned by the loop.
type run struct {
	u       fleet.Update
	fw      fleet.Firmware
	blob    blob  // shared by every session: ReadAt, never a copy per device
	blobErr error // why the image failed its check (brokenBlob); nil when it is sound
	targets map[string]*target
	live    map[*target]struct{} // targets past queued and not ended: what the timers watch
	readyQ  []*target            // new devices that said hello and wait for a slot
	againQ  []*target            // started devices waiting: resumed transfers first, then retries
	slots   int                  // targets holding an in-flight slot
	counts  map[fleet.DeviceState]int

	bytesSent, bytesAcked, resends int64
	savedCounters                  sqlite.Counters // last written to the store

	// rate estimation: acknowledged bytes at the last status publish
	rateBytes int64
	rateAt    time.Time
	rate      float64

	// offline_after (liveness.go): the clock's start, the last scan, and
	// the queued devices not connected with the latest of their deadlines
	seenFrom, unseenAt time.Time
	unseen             int
	unseenUntil        time.Time

	// pl: the run's payloads besides its image (choose.go); retired:
	// payloads replaced while sessions may read them, closed with the run;
	// encodings: started devices by the payload of their current attempt.
	pl        runPayloads
	retired   []*payload
	encodings map[string]int

	remaining   int64     // bytes the unfinished devices still need, as of remainingAt
	remainingAt time.Time // zero: never counted

	dirty     bool // summary changed since the last status publish
	maybeDone bool // a target ended: check whether the whole run did

	matcher    *fleet.Matcher     // the selector, for devices joining a dynamic update
	phases     []int              // cumulative device counts of the phases
	phase      int                // index of the current phase
	started    int                // targets ever offered in this update
	gate       string             // the current phase's gate (gateOpen, gateSoak, ...)
	stopReason fleet.Reason       // why a cancelled or aborted update stopped its devices
	gateUntil  time.Time          // end of the soak
	gateSeen   *fleet.GateFigures // the figures the current gate was decided on
	pausedBy   fleet.Reason       // who paused the update (operator, manual_gate, gate_failed)
	nextStart  time.Time          // earliest start of the next new device (rate)
}

// target is one device of a run: its progress and, while it transfers, its
// session state.
type target struct {
	r *run
	p fleet.Progress

	handle    uint32
	started   bool      // offered at least once in this update
	phase     int       // index of the phase it started in
	notBefore time.Time // a retry waits for its backoff
	// cancelling: a cancel was sent (with this reason); the device's
	// answer, or the offer timeout, ends it.
	cancelling fleet.Reason
	slot       bool // holds one of the run's in-flight slots
	queued     bool // sits in readyQ
	resume     bool // re-offer the current attempt instead of starting a new one
	offerAt    time.Time
	progress   time.Time // last ack progress, or the offer
	resentAt   time.Time // last resend on the ack timeout
	deadline   time.Time // confirm deadline while rebooting
	declined   int       // hellos that answered a forced offer of the running version (liveness.go)
	leftAt     time.Time // when its device last went away during this run

	sent, acked int64 // next offset to send; every byte before acked is held
	// sentHigh: no byte at or past it was sent under the current handle,
	// so no ack may pass it. An offer and the accept's offset start it; a
	// target restored from the store has the image size until its offer.
	sentHigh  int64
	dups      dupAcks
	recoverAt int64 // acked offset of the last go-back on a duplicate ack; -1 none
	saved     int64 // offset last written to the store
	// credited: the bytes of the current attempt counted in the run's
	// bytes acked; sentMax: the offset up to which chunks of the current
	// attempt were sent, under any handle (counters.go).
	credited, sentMax int64

	rtt rttClock // ack round trip and resend backoff (rto.go)

	illegalAt     int64 // unix nanoseconds of its last illegal change recorded as an event; 0 none
	chunk, window int   // of the current offer: the update's, lowered to the device's limits (limits.go)

	// pl is the payload of the current attempt (choose.go), nil for the
	// image itself; picked: it was chosen (or restored) for this attempt.
	// waitSince: when it began waiting for a delta being built.
	// restored: picked, loaded from the store, pl not resolved yet.
	pl        *payload
	picked    bool
	restored  bool
	waitSince time.Time
}

func newRun(u fleet.Update, fw fleet.Firmware, b blob, m *fleet.Matcher) *run {
	return &run{
		matcher: m,
		u:       u,
		fw:      fw,
		blob:    b,
		targets: map[string]*target{},
		live:    map[*target]struct{}{},
		counts:  map[fleet.DeviceState]int{},
		rateAt:  time.Now(),

		encodings: map[string]int{},
		dirty:     true,
	}
}

func (r *run) closeBlob() {
	r.closePayloads()
	if r.blob != nil {
		r.blob.Close()
		r.blob = nil
	}
}

// add registers a target with its stored progress.
func (r *run) add(p fleet.Progress, handle uint32) *target {
	size := r.fw.Size
	if p.PayloadSize > 0 {
		size = p.PayloadSize // restored: the payload its offset counts
	}
	t := &target{r: r, p: p, handle: handle, recoverAt: -1, acked: p.Offset, sent: p.Offset, saved: p.Offset, sentHigh: size}
	t.credited = restoredCredit(p, size)
	if p.Encoding != "" {
		// Resolved against the run's payloads once its device said
		// which image it runs (resolveRestored).
		r.encodings[p.Encoding]++
		t.picked, t.restored = true, true
	}
	t.sentMax = t.credited
	r.targets[p.DeviceID] = t
	r.counts[p.State]++
	r.track(t)
	return t
}

// setState moves t through the state machine, recording and publishing the
// change. An illegal change is refused, counted and recorded as an event.
func (e *Engine) setState(t *target, to fleet.DeviceState, reason fleet.Reason) bool {
	from := t.p.State
	if _, err := fleet.Transition(from, to); err != nil {
		e.stats.illegal.Add(1)
		e.Logger.Warn("illegal device transition", "update", t.r.u.ID, "device", t.p.DeviceID, "from", from, "to", to)
		e.recordIllegal(t, from, to, reason)
		return false
	}
	now := e.now().UTC()
	r := t.r
	r.counts[from]--
	r.counts[to]++
	t.p.State = to
	t.p.Reason = reason
	r.track(t)
	t.p.UpdatedAt = now
	if to == fleet.StateOffered && from == fleet.StateQueued {
		t.p.StartedAt = &now
	}
	if to.Terminal() {
		t.p.FinishedAt = &now
	} else {
		t.p.FinishedAt = nil
	}
	if !to.Transferring() && t.slot {
		t.slot = false
		r.slots--
	}
	r.dirty = true
	if to == fleet.StateFailed {
		e.failures.add(reason)
	}
	t.p.Offset = t.acked // the device's word: a resume may start below the last checkpoint
	t.saved = t.p.Offset
	e.record(t.p, t.handle, fleet.Event{Type: fleet.EventDevice, UpdateID: r.u.ID, DeviceID: t.p.DeviceID, From: string(from),
		State: string(to), Reason: reason, Offset: t.p.Offset, Attempt: t.p.Attempts})
	e.publishDeviceStatus(t)
	if to.Terminal() {
		if e.active[t.p.DeviceID] == t {
			delete(e.active, t.p.DeviceID)
		}
		r.maybeDone = true
	}
	return true
}

// track keeps r.live in step with t's state, so that the timers visit
// only the devices that can time out, not a whole fleet each tick.
func (r *run) track(t *target) {
	if t.p.State.Terminal() || t.p.State == fleet.StateQueued {
		delete(r.live, t)
		return
	}
	r.live[t] = struct{}{}
}

// deviceStatus is the retained per-device status message.
type deviceStatus struct {
	Device  string            `json:"device"`
	Update  string            `json:"update"`
	State   fleet.DeviceState `json:"state"`
	Offset  int64             `json:"offset"`
	Size    int64             `json:"size"`
	Attempt int               `json:"attempt"`
	Reason  fleet.Reason      `json:"reason,omitempty"`
	Version string            `json:"target_version"`
	Time    time.Time         `json:"time"`
	// Encoding names the payload Offset and Size count: full, deflate or
	// delta; absent before the first offer.
	Encoding string `json:"encoding,omitempty"`
}

// AppendJSON appends st's JSON encoding, as encoding/json writes it.
func (st deviceStatus) AppendJSON(b []byte) []byte {
	b = append(b, `{"device":`...)
	b = protocol.AppendJSONString(b, st.Device)
	b = append(b, `,"update":`...)
	b = protocol.AppendJSONString(b, st.Update)
	b = append(b, `,"state":`...)
	b = protocol.AppendJSONString(b, string(st.State))
	b = append(b, `,"offset":`...)
	b = strconv.AppendInt(b, st.Offset, 10)
	b = append(b, `,"size":`...)
	b = strconv.AppendInt(b, st.Size, 10)
	b = append(b, `,"attempt":`...)
	b = strconv.AppendInt(b, int64(st.Attempt), 10)
	if st.Reason != "" {
		b = append(b, `,"reason":`...)
		b = protocol.AppendJSONString(b, string(st.Reason))
	}
	b = append(b, `,"target_version":`...)
	b = protocol.AppendJSONString(b, st.Version)
	b = append(b, `,"time":`...)
	b, ok := protocol.AppendJSONTime(b, st.Time)
	if !ok {
		panic(fmt.Sprintf("rollout: device status time out of range: %v", st.Time))
	}
	if st.Encoding != "" {
		b = append(b, `,"encoding":`...)
		b = protocol.AppendJSONString(b, st.Encoding)
	}
	return append(b, '}')
}

func (e *Engine) publishDeviceStatus(t *target) {
	st := deviceStatus{Device: t.p.DeviceID, Update: t.r.u.ID, State: t.p.State, Offset: t.p.Offset, Size: t.size(), Encoding: t.p.Encoding,
		Attempt: t.p.Attempts, Reason: t.p.Reason, Version: t.r.fw.Version, Time: t.p.UpdatedAt}
	// Appended into one allocation: through Encode, st would be boxed and
	// the encoding copied once more. Inline subscribers may keep the payload.
	if err := e.Transport.Publish(protocol.DeviceStatusTopic(t.p.DeviceID), st.AppendJSON(make([]byte, 0, 256)), true, 1); err != nil {
		e.Logger.Warn("publish device status", "device", t.p.DeviceID, "err", err)
	}
}

// offer sends (or sends again) the offer of t's current attempt with a new
// handle; the device answers with the offset it holds.
func (e *Engine) offer(t *target) {
	r := t.r
	if !t.slot {
		t.slot = true
		r.slots++
	}
	t.resume = false
	e.resolveRestored(t)
	if !t.picked {
		e.pick(t)
	}
	t.handle = e.newHandle(t.handle)
	now := e.now()
	t.offerAt, t.progress = now, now
	t.recoverAt = -1
	t.sentHigh = t.acked // nothing sent under the new handle yet
	t.rtt.reset()
	e.sizeOffer(t)
	if t.p.State != fleet.StateOffered {
		if !e.setState(t, fleet.StateOffered, "") {
			return
		}
	} else if err := e.Store.SaveProgress(t.p, t.handle); err != nil {
		e.Logger.Error("save progress", "device", t.p.DeviceID, "err", err)
	}
	msg := protocol.Offer{
		V: protocol.Version, Update: r.u.ID, Handle: t.handle, Attempt: t.p.Attempts,
		Firmware:  protocol.FirmwareInfoOf(r.fw),
		ChunkSize: t.chunk, Window: t.window,
	}
	if t.pl != nil {
		msg.Encoding, msg.PayloadSize, msg.Base = protocolEncoding(t.pl.encoding), t.pl.size, t.pl.base
	}
	if err := e.Transport.Publish(protocol.DownTopic(t.p.DeviceID, protocol.KindOffer), protocol.Encode(msg), false, 1); err != nil {
		e.Logger.Warn("publish offer", "device", t.p.DeviceID, "err", err)
	}
}

// pump sends chunks while the window has room.
func (e *Engine) pump(t *target) {
	r := t.r
	size, src := r.fw.Size, io.ReaderAt(r.blob)
	if t.pl != nil {
		size, src = t.pl.size, t.pl.blob
	}
	if t.chunk == 0 {
		// Acked before its first offer since a restart: the limits of the
		// device's latest hello, if it said one, else the update's.
		e.sizeOffer(t)
	}
	chunk := int64(t.chunk)
	limit := t.acked + chunk*int64(t.window)
	topic := ""
	now := e.now() // one clock read per burst: it times the chunk the rtt clock picks
	for t.sent < size && t.sent < limit {
		n := min(chunk, size-t.sent)
		buf := e.frameBuf(protocol.HeaderSize + int(n))
		if _, err := src.ReadAt(buf[protocol.HeaderSize:], t.sent); err != nil {
			e.Logger.Error("read firmware", "firmware", r.fw.ID, "offset", t.sent, "err", err)
			return
		}
		var flags byte
		if t.sent+n == size {
			flags = protocol.FlagLast
		}
		protocol.PutFrameHeader(buf, flags, t.handle, uint32(t.sent))
		if topic == "" {
			topic = protocol.DownTopic(t.p.DeviceID, protocol.KindChunk)
		}
		// QoS 0: the window's acks and resends make delivery reliable, and
		// a broker-level ack per chunk would only double the packets.
		if err := e.Transport.Publish(topic, buf, false, 0); err != nil {
			e.Logger.Warn("publish chunk", "device", t.p.DeviceID, "err", err)
			return
		}
		if t.sent < t.sentMax {
			r.resends++ // sent before in this attempt: after a gap, a timeout or a re-offer
			e.stats.resends.Add(1)
		}
		t.sent += n
		t.sentHigh = max(t.sentHigh, t.sent)
		t.sentMax = max(t.sentMax, t.sent)
		t.rtt.sent(now, t.sent)
		t.p.WireBytes += n
		r.bytesSent += n
		e.stats.chunks.Add(1)
		e.stats.bytes.Add(n)
	}
}

// frameBuf returns the loop's chunk buffer, n bytes long. Transports do not
// keep a payload after Publish returns, so one buffer serves every chunk.
func (e *Engine) frameBuf(n int) []byte {
	if cap(e.frame) < n {
		e.frame = make([]byte, n)
	}
	return e.frame[:n]
}

// goBack resends from the acknowledged offset.
func (e *Engine) goBack(t *target) {
	t.sent = t.acked // pump counts the chunks it sends again as resends
	t.rtt.resent(false)
	e.pump(t)
}

func (e *Engine) onAck(device string, a protocol.Ack) {
	e.stats.acks.Add(1)
	t := e.active[device]
	if t == nil || a.Handle != t.handle {
		e.stale(device, "ack for another transfer", "handle", a.Handle)
		return
	}
	r := t.r
	if a.Offset > t.size() {
		e.bad(inbound{device: device, kind: protocol.KindAck}, fleet.Errorf(fleet.ErrInvalidInput, "ack offset %d past payload size %d", a.Offset, t.size()))
		return
	}
	if t.p.State != fleet.StateAccepted && t.p.State != fleet.StateDownloading || t.cancelling != "" {
		e.stale(device, "ack outside a download", "state", t.p.State)
		return
	}
	if a.Offset > t.sentHigh {
		// The device cannot hold bytes it was never sent: applied, the
		// ack would inflate bytes acked, the rate and the ETA. The
		// transfer goes on from the last true ack.
		e.stats.beyondSent.Add(1)
		e.Logger.Debug("ack beyond the bytes sent", "device", device, "offset", a.Offset, "sent", t.sentHigh)
		return
	}
	if t.p.State == fleet.StateAccepted {
		e.setState(t, fleet.StateDownloading, "")
	}
	switch {
	case a.Offset > t.acked:
		r.credit(t, a.Offset)
		t.acked = a.Offset
		t.progress = e.now()
		if d, ok := t.rtt.acked(t.progress, a.Offset); ok {
			e.fleetRTT.add(d)
		}
		if t.sent < t.acked {
			t.sent = t.acked
		}
		r.dirty = true
		e.pump(t)
	case a.Offset == t.acked && t.sent > t.acked && t.recoverAt != a.Offset && e.gapSignalled(t):
		// Duplicate acks enough to mean a gap (dupacks.go). Go back once
		// per gap.
		t.recoverAt = a.Offset
		e.goBack(t)
	}
}

func (e *Engine) onReport(device string, rep protocol.Report) {
	t := e.active[device]
	if t == nil || t.r.u.ID != rep.Update {
		if _, known := e.runs[rep.Update]; !known && !e.knownFinished(rep.Update) {
			e.bad(inbound{device: device, kind: protocol.KindReport}, fleet.Errorf(fleet.ErrUpdateNotFound, "report for unknown update %q", rep.Update))
			return
		}
		e.stale(device, "report for an update the device is not active in", "update", logsafe.Clean(rep.Update, 64))
		return
	}
	if rep.Handle != t.handle {
		e.stale(device, "report for an older offer", "handle", rep.Handle, "state", rep.State)
		return
	}
	r := t.r
	switch rep.State {
	case fleet.StateAccepted:
		if t.p.State != fleet.StateOffered || t.cancelling != "" {
			e.stale(device, "duplicate accept", "state", t.p.State)
			return
		}
		if rep.Offset > t.size() {
			e.bad(inbound{device: device, kind: protocol.KindReport}, fleet.Errorf(fleet.ErrInvalidInput, "accepted offset %d past payload size %d", rep.Offset, t.size()))
			return
		}
		// The device's offset is authoritative.
		t.acked, t.sent, t.sentHigh, t.recoverAt = rep.Offset, rep.Offset, rep.Offset, -1
		r.credit(t, rep.Offset) // bytes it got before (a lost ack, a restart): once per attempt
		t.progress = e.now()
		t.rtt.reset()
		if !e.setState(t, fleet.StateAccepted, "") {
			return
		}
		if t.acked < t.size() {
			e.setState(t, fleet.StateDownloading, "")
			e.pump(t)
		}
	case fleet.StateRejected, fleet.StateCancelled:
		if rep.State == fleet.StateRejected && e.reofferWhole(t, rep.Reason) {
			return
		}
		reason := rep.Reason
		if rep.State == fleet.StateCancelled && t.cancelling != "" {
			// The cancel says why; the device only echoes it, or says
			// unknown_update if it never held the transfer.
			reason = t.cancelling
		}
		e.setState(t, rep.State, reason)
	case fleet.StateFailed:
		e.fail(t, rep.Reason)
	default: // downloaded, verified, installing, rebooting: forward progress
		e.advance(t, rep.State)
		if rep.State == fleet.StateRebooting || rep.State == fleet.StateInstalling {
			t.deadline = e.now().Add(r.u.Policy.ConfirmTimeout.D())
		}
		if !t.slot {
			e.admit(r) // the device gave its slot up
		}
	}
}

// happy is the success path in order; advance walks it so that a report
// lost on the way does not stall a device.
var happy = []fleet.DeviceState{
	fleet.StateOffered, fleet.StateAccepted, fleet.StateDownloading, fleet.StateDownloaded,
	fleet.StateVerified, fleet.StateInstalling, fleet.StateRebooting, fleet.StateSucceeded,
}

func happyIndex(s fleet.DeviceState) int {
	for i, h := range happy {
		if h == s {
			return i
		}
	}
	return -1
}

func (e *Engine) advance(t *target, to fleet.DeviceState) {
	from, want := happyIndex(t.p.State), happyIndex(to)
	if from < 0 || want <= from {
		if from >= 0 {
			// A state the device has passed already: a duplicate, or a
			// QoS 1 report the device's client sent again after a
			// reconnect (its PUBACK was lost with the connection).
			e.stale(t.p.DeviceID, "report of a state already passed", "state", to, "current", t.p.State)
			return
		}
		e.setState(t, to, "") // refused and recorded as illegal
		return
	}
	if size := t.size(); want >= happyIndex(fleet.StateDownloaded) && t.acked < size {
		// Counted as acked: the bytes sent that no ack covered (lost
		// acks), not the ones the device says it holds without having
		// been sent them; once per attempt however often it is offered.
		t.r.credit(t, min(t.sentHigh, size))
		t.acked = size
	}
	for i := from + 1; i <= want; i++ {
		if !e.setState(t, happy[i], "") {
			return
		}
	}
}

// fail ends the current attempt. fleet.Retries says which reasons are
// retried while attempts remain, after a backoff; a device that exhausts its
// attempts ends failed with the reason of its last one.
func (e *Engine) fail(t *target, reason fleet.Reason) {
	r := t.r
	wasTransferring := t.p.State.Transferring() && t.p.State != fleet.StateInstalling
	if !e.setState(t, fleet.StateFailed, reason) {
		return
	}
	t.resume = false // a retry is a new attempt, after its backoff
	if reason.Retried() && t.p.Attempts < r.u.Policy.MaxAttempts && r.u.State.Active() {
		if !e.ready[t.p.DeviceID] {
			// A retry needs the device: it stays failed until it says
			// hello again (retryReturned), and the update can end.
			e.admit(r)
			return
		}
		e.requeue(t, reason)
		return
	}
	if wasTransferring {
		// Given up for good: the device must not keep a transfer it
		// would answer later offers with "busy" for.
		e.sendCancel(t, reason)
	}
	e.admit(r)
}

func (e *Engine) onHello(device string, h protocol.Hello) {
	now := e.now().UTC()
	d := fleet.Device{ID: device, Model: h.Model, Version: h.Version, Tags: h.Tags, FirstSeen: now, LastSeen: now, Online: true,
		Image: h.Image, Caps: h.Caps}
	if err := e.Store.SaveDevice(d); err != nil {
		e.Logger.Error("save device", "device", device, "err", err)
	}
	e.ready[device] = true
	e.noteLimits(device, h)
	t := e.active[device]
	if held := h.Transfer; held != nil && (t == nil || t.r.u.ID != held.Update) {
		switch held.State {
		case fleet.StateAccepted, fleet.StateDownloading, fleet.StateDownloaded, fleet.StateVerified:
			// A transfer of an update the device is no longer in (it
			// ended, or this device left it): have the device drop it.
			msg := protocol.Cancel{V: protocol.Version, Update: held.Update, Handle: held.Handle, Reason: fleet.ReasonOperator}
			if err := e.Transport.Publish(protocol.DownTopic(device, protocol.KindCancel), protocol.Encode(msg), false, 1); err != nil {
				e.Logger.Warn("publish cancel", "device", device, "err", err)
			}
		}
	}
	if t == nil {
		t = e.retryReturned(device)
	}
	if t == nil {
		t = e.join(d)
		if t == nil {
			return
		}
	}
	r := t.r
	holds := h.Transfer != nil && h.Transfer.Update == r.u.ID
	e.keepPayload(t, h, holds)
	confirmed := h.Version == r.fw.Version && (!r.u.Policy.Force || (holds && h.Transfer.State == fleet.StateRebooting))
	if !holds && e.declinedReinstall(t, h) {
		return
	}
	switch st := t.p.State; {
	case st != fleet.StateQueued && confirmed:
		// Running the target: a confirmed boot, also when the reports in
		// between were lost (an orchestrator crash while the device
		// installed and rebooted). The walk records each step.
		e.advance(t, fleet.StateSucceeded)
	case st == fleet.StateInstalling || st == fleet.StateRebooting:
		switch {
		case st == fleet.StateRebooting:
			e.fail(t, fleet.ReasonBootFailed)
		case !holds:
			// Installing, back on the old version and holding nothing:
			// the device lost its state. Try again.
			e.fail(t, fleet.ReasonDeviceReset)
		}
		// Otherwise the device reconnected before rebooting: wait for its
		// reports.
	case st == fleet.StateQueued && confirmed:
		// Queued here but already running the target: back late from the
		// reboot of an attempt that timed out, after a crash that lost its
		// offer and reports, or updated by other means. The goal is
		// reached; the log records no offer or download that did not
		// happen.
		e.setState(t, fleet.StateSucceeded, "")
	case st == fleet.StateQueued:
		if skip := skipReason(d, r.fw, r.u.Policy); skip != "" && !t.started {
			// Updated (or moved) by other means since the update began.
			e.setState(t, fleet.StateSkipped, skip)
			return
		}
		r.enqueue(t, t.resume)
		e.admit(r)
	case st.Transferring() && (t.cancelling != "" || !r.u.State.Active()):
		// The update was stopped while this device transferred: tell it
		// again, and end its part.
		reason := t.cancelling
		if reason == "" {
			reason = r.stopReason
		}
		e.sendCancel(t, reason)
		e.setState(t, fleet.StateCancelled, reason)
	case st.Transferring():
		// Reconnected mid-transfer: offer again, the device says what it holds.
		if t.slot {
			e.offer(t)
			return
		}
		t.resume = true
		r.enqueue(t, true)
		e.admit(r)
	}
}

// join adds a device that is in no active update to the first dynamic
// update that selects it and that it needs; nil if none.
func (e *Engine) join(d fleet.Device) *target {
	for _, r := range e.runs {
		if !r.u.Policy.Dynamic || !r.u.State.Active() || r.targets[d.ID] != nil || !r.matcher.Match(d) {
			continue
		}
		if skipReason(d, r.fw, r.u.Policy) != "" {
			continue
		}
		now := e.now().UTC()
		t := r.add(fleet.Progress{UpdateID: r.u.ID, DeviceID: d.ID, State: fleet.StateQueued, UpdatedAt: now}, 0)
		e.active[d.ID] = t
		// The final phase grows with the fleet; earlier gates keep their
		// sizes.
		r.phases[len(r.phases)-1]++
		r.dirty = true
		e.record(t.p, 0, fleet.Event{Type: fleet.EventDevice, UpdateID: r.u.ID, DeviceID: d.ID, State: string(fleet.StateQueued)})
		e.Logger.Info("device joined a dynamic update", "update", r.u.ID, "device", d.ID)
		return t
	}
	return nil
}

// skipReason says why d does not get fw under pol, or "" if it does.
func skipReason(d fleet.Device, fw fleet.Firmware, pol fleet.Policy) fleet.Reason {
	if fw.Model != "" && d.Model != fw.Model {
		return fleet.ReasonIncompatibleModel
	}
	if pol.Force {
		return ""
	}
	if d.Version == fw.Version {
		return fleet.ReasonAlreadyCurrent
	}
	if cmp, ok := fleet.CompareVersions(d.Version, fw.Version); ok {
		switch {
		case cmp == 0:
			return fleet.ReasonAlreadyCurrent
		case cmp > 0 && !pol.AllowDowngrade:
			return fleet.ReasonVersionNotNewer
		}
	}
	return ""
}

func (e *Engine) deviceOffline(device string) {
	delete(e.ready, device)
	delete(e.limits, device)
	if err := e.Store.SetDeviceOnline(device, false, e.now().UTC()); err != nil {
		e.Logger.Error("save device presence", "device", device, "err", err)
	}
	t := e.active[device]
	if t == nil {
		return
	}
	t.leftAt = e.now()
	// A transfer whose device went away gives its slot to a device that is
	// here; it resumes from the device's offset when the device says hello.
	if t.slot && t.p.State != fleet.StateInstalling {
		t.slot = false
		t.r.slots--
		t.resume = true
		t.r.checkpointOne(e, t)
		e.admit(t.r)
	}
}

// knownFinished reports whether id names an update that is stored but no
// longer active, so a late report for it is stale rather than bad.
func (e *Engine) knownFinished(id string) bool {
	_, err := e.Store.Update(contextBG, id)
	return err == nil
}

// timers resends, re-offers and fails what waited too long.
func (e *Engine) timers(now time.Time) {
	for _, r := range e.runs {
		e.expireUnseen(r, now)
		for t := range r.live {
			if t.p.State.Terminal() || t.p.State == fleet.StateQueued {
				continue
			}
			if t.cancelling != "" && t.p.State.Transferring() && t.p.State != fleet.StateInstalling && now.Sub(t.offerAt) > e.OfferTimeout {
				e.setState(t, fleet.StateCancelled, t.cancelling) // no answer: it is cancelled all the same
				continue
			}
			switch t.p.State {
			case fleet.StateOffered:
				if t.slot && e.ready[t.p.DeviceID] && now.Sub(t.offerAt) > e.OfferTimeout && t.cancelling == "" {
					progress := t.progress // a re-offer is not progress
					e.offer(t)
					t.progress = progress
				}
			case fleet.StateAccepted, fleet.StateDownloading:
				last := t.progress
				if t.resentAt.After(last) {
					last = t.resentAt
				}
				// Bytes the device lacks, not bytes outstanding: a chunk
				// whose publish failed (an external broker's connection
				// was down) left nothing outstanding, and no ack will
				// come to pump again.
				if t.slot && e.ready[t.p.DeviceID] && t.acked < t.size() && now.Sub(last) > e.resendTimeout(t) && t.cancelling == "" {
					t.recoverAt = -1
					t.resentAt = now // a resend is not progress: the idle timeout still runs
					t.rtt.resent(true)
					e.goBack(t)
				}
			case fleet.StateInstalling, fleet.StateRebooting:
				if !t.deadline.IsZero() && now.After(t.deadline) {
					e.fail(t, fleet.ReasonConfirmTimeout)
					continue
				}
			}
			if t.p.State.Transferring() && t.p.State != fleet.StateInstalling && now.Sub(t.progress) > r.u.Policy.IdleTimeout.D() && !t.progress.IsZero() {
				switch {
				case !r.u.State.Active():
					// Stopped update, device silent: its part ends.
					e.setState(t, fleet.StateCancelled, r.stopReason)
				case !e.ready[t.p.DeviceID]:
					// Away for longer than the idle timeout: back to the
					// queue, without spending an attempt; the transfer
					// resumes from the device's offset when it returns.
					t.resume = true
					e.setState(t, fleet.StateQueued, fleet.ReasonTransferTimeout)
				case t.slot:
					e.fail(t, fleet.ReasonTransferTimeout)
				}
				// A device that is here but waits for a slot (or for a
				// paused update) is not idle.
			}
		}
	}
}
