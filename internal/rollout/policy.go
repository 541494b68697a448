package rollout

import (
	"math"
	"time"

	"github.com/flotaio/flota/internal/fleet"
)

// Gate states of a run's current phase.
const (
	gateOpen     = ""                 // the phase admits devices
	gateSoak     = "soaking"          // passed; waiting out the soak time
	gateApproval = "waiting_approval" // passed; waiting for an operator (manual gates)
	gateFailed   = "failed"           // cannot pass; the rollout stopped here
)

// enqueue puts a target that waits for a slot into its queue: devices that
// started already (a resumed transfer, a retry) go to againQ, resumed ones
// first since they hold bytes; new devices to readyQ.
func (r *run) enqueue(t *target, front bool) {
	if t.queued || t.slot {
		return
	}
	t.queued = true
	switch {
	case !t.started:
		r.readyQ = append(r.readyQ, t)
	case front:
		r.againQ = append([]*target{t}, r.againQ...)
	default:
		r.againQ = append(r.againQ, t)
	}
}

// waiting says why the run starts no new device now, or "" if it may.
func (e *Engine) waiting(r *run, now time.Time) string {
	pol := r.u.Policy
	switch {
	case e.storeWaiting() != "":
		return waitingStore
	case r.blobErr != nil:
		return string(fleet.ReasonFirmwareDamaged)
	case r.u.State == fleet.UpdateScheduled:
		return "scheduled"
	case r.u.State != fleet.UpdateRunning:
		return string(r.u.State)
	case r.gate != gateOpen:
		return "gate"
	case pol.Maintenance != nil && !pol.Maintenance.Contains(now):
		return "maintenance_window"
	case pol.Rate > 0 && now.Before(r.nextStart):
		return "rate"
	}
	return ""
}

// admit offers the update to ready devices while slots are free: first the
// devices that started already (resumes go on whatever the window; retries
// wait for their backoff and the window), then new devices within the
// current phase, the rate and the maintenance window.
func (e *Engine) admit(r *run) {
	if r.u.State != fleet.UpdateRunning || r.blobErr != nil {
		return
	}
	now := e.now()
	pol := r.u.Policy
	inWindow := pol.Maintenance == nil || pol.Maintenance.Contains(now)
	kept := r.againQ[:0]
	for i, t := range r.againQ {
		if r.slots >= pol.MaxInFlight {
			kept = append(kept, r.againQ[i:]...)
			break
		}
		if !e.eligible(t) {
			t.queued = false
			continue
		}
		retry := t.p.State == fleet.StateQueued && !t.resume
		if retry && (!inWindow || now.Before(t.notBefore)) {
			kept = append(kept, t)
			continue
		}
		if e.waitsForPayload(t, now) {
			continue // in the run's payload wait queue (choose.go)
		}
		t.queued = false
		e.start(t)
	}
	clear(r.againQ[len(kept):])
	r.againQ = kept

	for r.slots < pol.MaxInFlight && len(r.readyQ) > 0 && r.started < r.phases[r.phase] && e.waiting(r, now) == "" {
		t := r.readyQ[0]
		r.readyQ[0] = nil
		r.readyQ = r.readyQ[1:]
		t.queued = false
		if !e.eligible(t) {
			continue
		}
		if e.waitsForPayload(t, now) {
			continue // in the run's payload wait queue (choose.go)
		}
		t.started, t.phase = true, r.phase
		r.started++
		if pol.Rate > 0 {
			r.nextStart = now.Add(time.Minute / time.Duration(pol.Rate))
		}
		e.start(t)
	}
}

// eligible reports whether t can be offered now.
func (e *Engine) eligible(t *target) bool {
	return e.ready[t.p.DeviceID] && !t.p.State.Terminal() && !t.slot && e.active[t.p.DeviceID] == t
}

// start offers t: a new attempt from queued, or the current attempt again
// for a resumed transfer.
func (e *Engine) start(t *target) {
	switch {
	case t.p.State == fleet.StateQueued:
		if !t.resume {
			t.p.Attempts++
			t.picked = false // a new attempt chooses its payload
		}
		e.offer(t)
	case t.resume && t.p.State.Transferring():
		e.offer(t)
	}
}

// checkRun applies the run's policy after its devices changed or time
// passed: the schedule, the failure threshold and the phase gate.
func (e *Engine) checkRun(r *run, now time.Time) {
	pol := r.u.Policy
	if r.u.State == fleet.UpdateScheduled && pol.StartAt != nil && !now.Before(*pol.StartAt) {
		e.setUpdateState(r, fleet.UpdateRunning, fleet.ReasonScheduled)
	}
	if !r.u.State.Active() {
		return
	}
	if th := pol.FailureThreshold; !th.IsZero() {
		failed := r.counts[fleet.StateFailed]
		finished := failed + r.counts[fleet.StateSucceeded] + r.counts[fleet.StateRejected]
		if finished >= pol.FailureMinFinished && th.Reached(failed, finished) {
			e.Logger.Warn("failure threshold reached: aborting", "update", r.u.ID, "failed", failed, "finished", finished, "threshold", th.String())
			e.stop(r, fleet.UpdateAborted, fleet.ReasonAborted, fleet.ReasonFailureThreshold)
			return
		}
	}
	e.checkGate(r, now)
	e.admit(r)
}

// checkGate decides the current phase's gate once all its devices started:
// it passes when SuccessThreshold of them succeeded, and fails when so many
// ended otherwise that the threshold is out of reach.
func (e *Engine) checkGate(r *run, now time.Time) {
	if r.phase >= len(r.phases)-1 || r.started < r.phases[r.phase] {
		return
	}
	pol := r.u.Policy
	switch r.gate {
	case gateSoak:
		if !now.Before(r.gateUntil) {
			e.nextPhase(r)
		}
		return
	case gateApproval, gateFailed:
		return // an operator decides (Resume)
	}
	size, ok, lost := 0, 0, 0
	for _, t := range r.targets {
		if !t.started || t.phase != r.phase || t.p.State == fleet.StateOffline {
			continue // an offline device never took part
		}
		size++
		switch {
		case t.p.State == fleet.StateSucceeded:
			ok++
		case t.p.State.Terminal():
			lost++
		}
	}
	need := int(math.Ceil(pol.SuccessThreshold * float64(size)))
	phase := r.phase + 1
	if ok >= need || size-lost < need {
		r.gateSeen = &fleet.GateFigures{Succeeded: ok, Needed: need, Size: size}
	}
	switch {
	case ok >= need:
		e.emit(fleet.Event{Type: fleet.EventPhase, UpdateID: r.u.ID, State: "passed", Reason: fleet.ReasonGatePassed, Phase: phase})
		switch {
		case pol.ManualGates:
			r.gate = gateApproval
			e.emit(fleet.Event{Type: fleet.EventPhase, UpdateID: r.u.ID, State: gateApproval, Reason: fleet.ReasonManualGate, Phase: phase})
			e.setUpdateState(r, fleet.UpdatePaused, fleet.ReasonManualGate)
		case pol.Soak > 0:
			r.gate, r.gateUntil = gateSoak, now.Add(pol.Soak.D())
			e.emit(fleet.Event{Type: fleet.EventPhase, UpdateID: r.u.ID, State: gateSoak, Phase: phase})
		default:
			e.nextPhase(r)
		}
	case size-lost < need:
		r.gate = gateFailed
		e.Logger.Warn("phase gate failed: the rollout stops", "update", r.u.ID, "phase", phase, "succeeded", ok, "needed", need, "of", size)
		e.emit(fleet.Event{Type: fleet.EventPhase, UpdateID: r.u.ID, State: gateFailed, Reason: fleet.ReasonGateFailed, Phase: phase})
		e.setUpdateState(r, fleet.UpdatePaused, fleet.ReasonGateFailed)
	}
}

// nextPhase opens the next phase.
func (e *Engine) nextPhase(r *run) {
	r.phase++
	r.gate, r.gateSeen = gateOpen, nil
	r.dirty = true
	e.emit(fleet.Event{Type: fleet.EventPhase, UpdateID: r.u.ID, State: "started", Phase: r.phase + 1})
	e.Logger.Info("phase started", "update", r.u.ID, "phase", r.phase+1, "devices", r.phases[r.phase])
	e.admit(r)
}

// stop ends an update early (cancel or abort): devices still downloading,
// or not started, are cancelled (those transferring are told so). Devices
// that hold the whole image go on: a device installs right after its
// download checks out, so one reported downloaded or verified is most likely
// installing already, and a cancel must never interrupt an install. The run
// ends when they have finished.
func (e *Engine) stop(r *run, state fleet.UpdateState, deviceReason, updateReason fleet.Reason) {
	e.setUpdateState(r, state, updateReason)
	r.stopReason = deviceReason
	for _, t := range r.targets {
		switch t.p.State {
		case fleet.StateDownloaded, fleet.StateVerified, fleet.StateInstalling, fleet.StateRebooting:
			continue
		}
		st := t.p.State
		if st.Terminal() {
			continue
		}
		if st.Transferring() && t.slot {
			// The device answers with a cancelled report (or, if it had
			// started installing after all, with its progress); the
			// timers give up on it after the offer timeout.
			e.sendCancel(t, deviceReason)
			t.cancelling, t.offerAt = deviceReason, e.now()
			continue
		}
		e.setState(t, fleet.StateCancelled, deviceReason)
	}
	clear(r.readyQ)
	clear(r.againQ)
	r.readyQ, r.againQ = nil, nil
	r.maybeDone = true
}
