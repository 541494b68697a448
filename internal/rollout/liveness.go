package rollout

import (
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
	t.acked, t.sent = 0, 0
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
