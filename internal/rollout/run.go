package rollout

import (
	"os"
	"time"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
	"github.com/flotaio/flota/internal/sqlite"
)

// run is one active update, owned by the loop.
type run struct {
	u       fleet.Update
	fw      fleet.Firmware
	blob    *os.File // shared by every session: ReadAt, never a copy per device
	targets map[string]*target
	readyQ  []*target // devices that said hello and wait for a slot
	slots   int       // targets holding an in-flight slot
	counts  map[fleet.DeviceState]int

	bytesSent, bytesAcked, resends int64
	savedCounters                  sqlite.Counters // last written to the store

	// rate estimation: acknowledged bytes at the last status publish
	rateBytes int64
	rateAt    time.Time
	rate      float64

	dirty     bool // summary changed since the last status publish
	maybeDone bool // a target ended: check whether the whole run did
}

// target is one device of a run: its progress and, while it transfers, its
// session state.
type target struct {
	r *run
	p fleet.Progress

	handle   uint32
	slot     bool // holds one of the run's in-flight slots
	queued   bool // sits in readyQ
	resume   bool // re-offer the current attempt instead of starting a new one
	offerAt  time.Time
	progress time.Time // last ack progress, or the offer
	deadline time.Time // confirm deadline while rebooting

	sent, acked int64 // next offset to send; every byte before acked is held
	recoverAt   int64 // acked offset of the last go-back on a duplicate ack; -1 none
	saved       int64 // offset last written to the store
}

func newRun(u fleet.Update, fw fleet.Firmware, blob *os.File) *run {
	return &run{
		u:       u,
		fw:      fw,
		blob:    blob,
		targets: map[string]*target{},
		counts:  map[fleet.DeviceState]int{},
		rateAt:  time.Now(),
		dirty:   true,
	}
}

func (r *run) closeBlob() {
	if r.blob != nil {
		r.blob.Close()
		r.blob = nil
	}
}

// add registers a target with its stored progress.
func (r *run) add(p fleet.Progress, handle uint32) *target {
	t := &target{r: r, p: p, handle: handle, recoverAt: -1, acked: p.Offset, sent: p.Offset, saved: p.Offset}
	r.targets[p.DeviceID] = t
	r.counts[p.State]++
	return t
}

// setState moves t through the state machine, recording and publishing the
// change. An illegal change is refused, counted and recorded as an event.
func (e *Engine) setState(t *target, to fleet.DeviceState, reason fleet.Reason) bool {
	from := t.p.State
	if _, err := fleet.Transition(from, to); err != nil {
		e.stats.illegal.Add(1)
		e.Logger.Warn("illegal device transition", "update", t.r.u.ID, "device", t.p.DeviceID, "from", from, "to", to)
		e.emit(fleet.Event{Type: "illegal_transition", UpdateID: t.r.u.ID, DeviceID: t.p.DeviceID, From: string(from), State: string(to), Reason: reason})
		return false
	}
	now := time.Now().UTC()
	r := t.r
	r.counts[from]--
	r.counts[to]++
	t.p.State = to
	t.p.Reason = reason
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
	if t.acked > t.p.Offset {
		t.p.Offset = t.acked
	}
	t.saved = t.p.Offset
	if err := e.Store.SaveProgress(t.p, t.handle); err != nil {
		e.Logger.Error("save progress", "device", t.p.DeviceID, "err", err)
	}
	e.emit(fleet.Event{Type: fleet.EventDevice, UpdateID: r.u.ID, DeviceID: t.p.DeviceID, From: string(from),
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
}

func (e *Engine) publishDeviceStatus(t *target) {
	st := deviceStatus{Device: t.p.DeviceID, Update: t.r.u.ID, State: t.p.State, Offset: t.p.Offset, Size: t.r.fw.Size,
		Attempt: t.p.Attempts, Reason: t.p.Reason, Version: t.r.fw.Version, Time: t.p.UpdatedAt}
	if err := e.Transport.Publish(protocol.DeviceStatusTopic(t.p.DeviceID), protocol.Encode(st), true, 1); err != nil {
		e.Logger.Warn("publish device status", "device", t.p.DeviceID, "err", err)
	}
}

// enqueue puts a target that waits for a slot into the ready queue. Resumed
// transfers go first: they already hold bytes.
func (r *run) enqueue(t *target, front bool) {
	if t.queued || t.slot {
		return
	}
	t.queued = true
	if front {
		r.readyQ = append([]*target{t}, r.readyQ...)
		return
	}
	r.readyQ = append(r.readyQ, t)
}

// admit offers the update to ready devices while slots are free.
func (e *Engine) admit(r *run) {
	if r.u.State != fleet.UpdateRunning {
		return
	}
	for r.slots < r.u.Policy.MaxInFlight && len(r.readyQ) > 0 {
		t := r.readyQ[0]
		r.readyQ[0] = nil
		r.readyQ = r.readyQ[1:]
		t.queued = false
		if !e.ready[t.p.DeviceID] || t.p.State.Terminal() || t.slot {
			continue
		}
		switch {
		case t.p.State == fleet.StateQueued:
			if !t.resume {
				t.p.Attempts++ // a new attempt; a resumed one keeps its number
			}
			e.offer(t)
		case t.resume && t.p.State.Transferring():
			e.offer(t)
		}
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
	t.handle = e.newHandle(t.handle)
	now := time.Now()
	t.offerAt, t.progress = now, now
	t.recoverAt = -1
	if t.p.State != fleet.StateOffered {
		if !e.setState(t, fleet.StateOffered, "") {
			return
		}
	} else if err := e.Store.SaveProgress(t.p, t.handle); err != nil {
		e.Logger.Error("save progress", "device", t.p.DeviceID, "err", err)
	}
	msg := protocol.Offer{
		V: protocol.Version, Update: r.u.ID, Handle: t.handle, Attempt: t.p.Attempts,
		Firmware: protocol.FirmwareInfo{ID: r.fw.ID, Name: r.fw.Name, Version: r.fw.Version, Model: r.fw.Model,
			Size: r.fw.Size, SHA256: r.fw.SHA256},
		ChunkSize: r.u.Policy.ChunkSize, Window: r.u.Policy.Window,
	}
	if err := e.Transport.Publish(protocol.DownTopic(t.p.DeviceID, protocol.KindOffer), protocol.Encode(msg), false, 1); err != nil {
		e.Logger.Warn("publish offer", "device", t.p.DeviceID, "err", err)
	}
}

// pump sends chunks while the window has room.
func (e *Engine) pump(t *target) {
	r := t.r
	size := r.fw.Size
	chunk := int64(r.u.Policy.ChunkSize)
	limit := t.acked + chunk*int64(r.u.Policy.Window)
	topic := ""
	for t.sent < size && t.sent < limit {
		n := min(chunk, size-t.sent)
		buf := e.frameBuf(protocol.HeaderSize + int(n))
		if _, err := r.blob.ReadAt(buf[protocol.HeaderSize:], t.sent); err != nil {
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
		t.sent += n
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
	if t.sent > t.acked {
		chunk := int64(t.r.u.Policy.ChunkSize)
		n := (t.sent - t.acked + chunk - 1) / chunk
		t.r.resends += n
		e.stats.resends.Add(n)
	}
	t.sent = t.acked
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
	if a.Offset > r.fw.Size {
		e.bad(inbound{device: device, kind: protocol.KindAck}, fleet.Errorf(fleet.ErrInvalidInput, "ack offset %d past image size %d", a.Offset, r.fw.Size))
		return
	}
	if t.p.State != fleet.StateAccepted && t.p.State != fleet.StateDownloading {
		e.stale(device, "ack outside a download", "state", t.p.State)
		return
	}
	if t.p.State == fleet.StateAccepted {
		e.setState(t, fleet.StateDownloading, "")
	}
	switch {
	case a.Offset > t.acked:
		r.bytesAcked += a.Offset - t.acked
		t.acked = a.Offset
		t.progress = time.Now()
		if t.sent < t.acked {
			t.sent = t.acked
		}
		r.dirty = true
		e.pump(t)
	case a.Offset == t.acked && t.sent > t.acked && t.recoverAt != a.Offset:
		// A duplicate ack: the device saw a gap. Go back once per gap.
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
		e.stale(device, "report for an update the device is not active in", "update", rep.Update)
		return
	}
	if rep.Handle != t.handle {
		e.stale(device, "report for an older offer", "handle", rep.Handle, "state", rep.State)
		return
	}
	r := t.r
	switch rep.State {
	case fleet.StateAccepted:
		if t.p.State != fleet.StateOffered {
			e.stale(device, "duplicate accept", "state", t.p.State)
			return
		}
		if rep.Offset > r.fw.Size {
			e.bad(inbound{device: device, kind: protocol.KindReport}, fleet.Errorf(fleet.ErrInvalidInput, "accepted offset %d past image size %d", rep.Offset, r.fw.Size))
			return
		}
		// The device's offset is authoritative.
		t.acked, t.sent, t.recoverAt = rep.Offset, rep.Offset, -1
		t.progress = time.Now()
		if !e.setState(t, fleet.StateAccepted, "") {
			return
		}
		if t.acked < r.fw.Size {
			e.setState(t, fleet.StateDownloading, "")
			e.pump(t)
		}
	case fleet.StateRejected, fleet.StateCancelled:
		e.setState(t, rep.State, rep.Reason)
		e.admit(r)
	case fleet.StateFailed:
		e.fail(t, rep.Reason)
	default: // downloaded, verified, installing, rebooting: forward progress
		e.advance(t, rep.State)
		if rep.State == fleet.StateRebooting || rep.State == fleet.StateInstalling {
			t.deadline = time.Now().Add(e.ConfirmTimeout)
		}
		e.admit(r)
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
		if t.p.State == to {
			e.stale(t.p.DeviceID, "duplicate report", "state", to)
			return
		}
		e.setState(t, to, "") // refused and recorded as illegal
		return
	}
	if want >= happyIndex(fleet.StateDownloaded) && t.acked < t.r.fw.Size {
		t.r.bytesAcked += t.r.fw.Size - t.acked
		t.acked = t.r.fw.Size
	}
	for i := from + 1; i <= want; i++ {
		if !e.setState(t, happy[i], "") {
			return
		}
	}
}

// fail ends the current attempt. Transfer problems are retried while
// attempts remain; a device's own install or boot failure is final.
func (e *Engine) fail(t *target, reason fleet.Reason) {
	r := t.r
	if !e.setState(t, fleet.StateFailed, reason) {
		return
	}
	retry := false
	switch reason {
	case fleet.ReasonBadDigest, fleet.ReasonStorageError, fleet.ReasonTransferTimeout, fleet.ReasonDeviceReset:
		retry = true
	}
	if retry && t.p.Attempts < r.u.Policy.MaxAttempts && r.u.State == fleet.UpdateRunning {
		t.acked, t.sent = 0, 0
		e.active[t.p.DeviceID] = t
		e.setState(t, fleet.StateQueued, reason)
		r.enqueue(t, false)
	}
	e.admit(r)
}

func (e *Engine) onHello(device string, h protocol.Hello) {
	now := time.Now().UTC()
	d := fleet.Device{ID: device, Model: h.Model, Version: h.Version, Tags: h.Tags, FirstSeen: now, LastSeen: now, Online: true}
	if err := e.Store.SaveDevice(d); err != nil {
		e.Logger.Error("save device", "device", device, "err", err)
	}
	e.ready[device] = true
	t := e.active[device]
	if t == nil {
		return
	}
	r := t.r
	switch st := t.p.State; {
	case st != fleet.StateQueued && h.Version == r.fw.Version:
		// Running the target: a confirmed boot, also when the reports in
		// between were lost (an orchestrator crash while the device
		// installed and rebooted). The walk records each step.
		e.advance(t, fleet.StateSucceeded)
	case st == fleet.StateInstalling || st == fleet.StateRebooting:
		holds := h.Transfer != nil && h.Transfer.Update == r.u.ID
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
	case st == fleet.StateQueued:
		if h.Version == r.fw.Version {
			// Already there (updated by other means): nothing to do.
			e.setState(t, fleet.StateSkipped, fleet.ReasonAlreadyCurrent)
			return
		}
		r.enqueue(t, false)
		e.admit(r)
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

func (e *Engine) deviceOffline(device string) {
	delete(e.ready, device)
	if err := e.Store.SetDeviceOnline(device, false, time.Now().UTC()); err != nil {
		e.Logger.Error("save device presence", "device", device, "err", err)
	}
	t := e.active[device]
	if t == nil {
		return
	}
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
		for _, t := range r.targets {
			if t.p.State.Terminal() || t.p.State == fleet.StateQueued {
				continue
			}
			switch t.p.State {
			case fleet.StateOffered:
				if t.slot && now.Sub(t.offerAt) > e.OfferTimeout {
					e.offer(t)
				}
			case fleet.StateAccepted, fleet.StateDownloading:
				if t.slot && t.sent > t.acked && now.Sub(t.progress) > e.AckTimeout {
					t.recoverAt = -1
					t.progress = now
					e.goBack(t)
				}
			case fleet.StateInstalling, fleet.StateRebooting:
				if !t.deadline.IsZero() && now.After(t.deadline) {
					e.fail(t, fleet.ReasonConfirmTimeout)
					continue
				}
			}
			if t.p.State.Transferring() && t.p.State != fleet.StateInstalling && now.Sub(t.progress) > e.IdleTimeout && !t.progress.IsZero() {
				if !e.ready[t.p.DeviceID] {
					// Away for longer than the idle timeout: back to the
					// queue, without spending an attempt; the transfer
					// resumes from the device's offset when it returns.
					t.resume = true
					e.setState(t, fleet.StateQueued, fleet.ReasonTransferTimeout)
					continue
				}
				e.fail(t, fleet.ReasonTransferTimeout)
			}
		}
	}
}
