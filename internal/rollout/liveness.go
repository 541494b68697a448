package rollout

import (
	"time"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
)

// maxDeclines is how many hellos on the target version may answer a forced
// offer before the device counts as having declined the reinstall. The first
// may be a reconnect that crossed the offer: it is offered once more.
const maxDeclines = 2

// declinedReinstall handles the hello of an offered device that already
// runs the target version of a forced update and holds nothing of it. A
// device that follows docs/PROTOCOL.md §5.4 rule 2 answers such an offer
// with its hello instead of a report; offering again would only bring the
// same hello back, forever. After maxDeclines such hellos the device is
// skipped (already_current) and its slot goes to the next device. It
// reports whether the hello was used up.
func (e *Engine) declinedReinstall(t *target, h protocol.Hello) bool {
	r := t.r
	if !r.u.Policy.Force || t.p.State != fleet.StateOffered || t.cancelling != "" || h.Version != r.fw.Version {
		return false
	}
	t.declined++
	if t.declined < maxDeclines {
		return false // offered again by the caller
	}
	e.setState(t, fleet.StateSkipped, fleet.ReasonAlreadyCurrent)
	e.admit(r)
	return true
}

// requeue queues a failed device for its next attempt, after the backoff.
func (e *Engine) requeue(t *target, reason fleet.Reason) {
	e.queueAgain(t, reason)
	t.r.enqueue(t, false)
	e.admit(t.r)
}

// queueAgain moves a failed device back to queued for its next attempt,
// which waits for the backoff.
func (e *Engine) queueAgain(t *target, reason fleet.Reason) {
	r := t.r
	t.acked, t.sent, t.credited, t.sentMax = 0, 0, 0, 0 // a new attempt counts its bytes anew
	t.picked = false                                    // and chooses its payload
	t.notBefore = e.now().Add(fleet.Backoff(r.u.Policy.RetryBackoff.D(), t.p.Attempts, e.rng))
	e.active[t.p.DeviceID] = t
	e.setState(t, fleet.StateQueued, reason)
}

// retryReturned queues again a device that failed, with a retried reason,
// while it was away (a confirm_timeout after its reboot), and that said hello
// while its update is still active with attempts left; nil if there is none.
// It looks at every active run: there are few.
func (e *Engine) retryReturned(device string) *target {
	for _, r := range e.runs {
		t := r.targets[device]
		if t == nil || t.p.State != fleet.StateFailed || !t.p.Reason.Retried() ||
			t.p.Attempts >= r.u.Policy.MaxAttempts || !r.u.State.Active() {
			continue
		}
		e.queueAgain(t, t.p.Reason) // the hello admits it
		return t
	}
	return nil
}

// unseenScan bounds how often a run's queued devices are checked against
// its offline_after: the check walks every target.
const unseenScan = time.Second

// expireUnseen ends offline (not_seen) the queued devices of a running
// update that are not connected and have not been for the update's
// offline_after, counted from when the update last started running in this
// process (created, resumed, restarted) or from when the device went away,
// whichever is later. Without it, an update with a target that never
// connects would never end. It also counts, for the summary, the devices
// still awaited and when the last of them would end offline.
func (e *Engine) expireUnseen(r *run, now time.Time) {
	if r.u.State != fleet.UpdateRunning {
		// Paused or scheduled: nobody is waited for; the clock starts
		// again when the update runs.
		r.seenFrom, r.unseenAt, r.unseen, r.unseenUntil = time.Time{}, time.Time{}, 0, time.Time{}
		return
	}
	if r.seenFrom.IsZero() {
		r.seenFrom = now
	}
	if !r.unseenAt.IsZero() && now.Sub(r.unseenAt) < unseenScan && now.After(r.unseenAt) {
		return
	}
	r.unseenAt = now
	after := r.u.Policy.OfflineAfter.D()
	if after <= 0 {
		after = fleet.DefaultOfflineAfter // an update stored before the setting
	}
	n, until := 0, time.Time{}
	for _, t := range r.targets {
		if t.p.State != fleet.StateQueued || e.ready[t.p.DeviceID] || e.active[t.p.DeviceID] != t {
			continue
		}
		since := r.seenFrom
		if t.leftAt.After(since) {
			since = t.leftAt
		}
		deadline := since.Add(after)
		if now.Before(deadline) {
			n++
			if deadline.After(until) {
				until = deadline
			}
			continue
		}
		if !t.started {
			// It takes its place in the current phase, so that the phase
			// can fill and its gate be decided without it.
			t.started, t.phase = true, r.phase
			r.started++
		}
		e.setState(t, fleet.StateOffline, fleet.ReasonNotSeen)
	}
	if n != r.unseen || !until.Equal(r.unseenUntil) {
		r.dirty = true
	}
	r.unseen, r.unseenUntil = n, until
}

// explain fills what the summary says about waiting: the devices still
// awaited, and an ETA only while something moves (a transfer holds a slot):
// a rate measured before a pause, or while the last devices are away,
// promises nothing.
func (e *Engine) explain(r *run, s *fleet.UpdateSummary) {
	if r.unseen > 0 {
		s.Unseen = r.unseen
		until := r.unseenUntil.UTC()
		s.UnseenUntil = &until
	}
	if r.rate > 0 && r.slots > 0 && r.u.State == fleet.UpdateRunning {
		s.ETASeconds = eta(r.remainingBytes(s.Time, e.StatusInterval), r.rate)
	}
	if s.Waiting == "" && r.slots == 0 && len(r.readyQ) == 0 && len(r.againQ) == 0 && r.unseen > 0 {
		s.Waiting = "offline_devices"
	}
	if r.u.State == fleet.UpdatePaused {
		s.PausedReason = r.pausedBy
	}
	s.GateFigures = r.gateSeen
	var until time.Time
	pol := r.u.Policy
	switch {
	case r.gate == gateSoak:
		until = r.gateUntil
	case s.Waiting == "scheduled" && pol.StartAt != nil:
		until = *pol.StartAt
	case s.Waiting == "maintenance_window":
		until = pol.Maintenance.NextOpen(s.Time)
	case s.Waiting == "rate":
		until = r.nextStart
	}
	if !until.IsZero() {
		until = until.UTC()
		s.WaitingUntil = &until
	}
	s.WaitingDetail = s.Explain()
}

// emitSkipped records a device event for every target of a new update that
// was skipped at its creation (already_current, version_not_newer,
// incompatible_model): the event stream holds every device's part, also of
// the devices that were never offered.
func (e *Engine) emitSkipped(r *run) {
	for _, t := range r.targets {
		if t.p.State == fleet.StateSkipped {
			e.emit(fleet.Event{Type: fleet.EventDevice, UpdateID: r.u.ID, DeviceID: t.p.DeviceID, State: string(fleet.StateSkipped), Reason: t.p.Reason})
		}
	}
}
