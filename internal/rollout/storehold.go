package rollout

import "time"

// While the store cannot write (a full disk, a read-only file system: see
// sqlite.Store.Unavailable), the engine changes nothing it could not
// record. The loop stops reading device messages, which wait in the
// bounded inbox (beyond it they are dropped and counted, and the devices'
// own retries and the offer timer recover them: docs/PROTOCOL.md §13); it
// runs no timer, so no device times out, is offered, resent to or failed,
// and no update starts a device, checkpoints or ends; the API's changes
// are refused with fleet.ErrStoreUnavailable. It still answers reads and
// publishes each update's status, whose Waiting says "store".
//
// What was queued before the store failed stays queued in the store's
// writer, which commits it, in order, once it can. Then the loop shifts
// every timer by the time it held, so that the wait counts against no
// device, and goes on where it stopped.

// waitingStore is UpdateSummary.Waiting while the store cannot write.
const waitingStore = "store"

// storeHeld reports whether the store cannot write now. It is called by
// the loop at every turn: it notices the store failing and recovering.
func (e *Engine) storeHeld() bool {
	err := e.Store.Unavailable()
	switch {
	case err != nil && e.heldSince.IsZero():
		e.heldSince = e.now()
		e.stats.storeHolds.Add(1)
		e.Logger.Warn("store cannot write: holding device messages, starting nothing", "err", err)
		e.markRunsDirty()
		return true
	case err != nil:
		return true
	case !e.heldSince.IsZero():
		d := e.now().Sub(e.heldSince)
		e.heldSince = time.Time{}
		e.shiftTimers(d)
		e.markRunsDirty()
		e.Logger.Info("store writes again: going on", "held_for", d.Round(time.Millisecond))
	}
	return false
}

func (e *Engine) markRunsDirty() {
	for _, r := range e.runs {
		r.dirty = true
	}
}

// shiftTimers moves every deadline of every run d later: time spent
// holding is no device's fault.
func (e *Engine) shiftTimers(d time.Duration) {
	shift := func(t *time.Time) {
		if !t.IsZero() {
			*t = t.Add(d)
		}
	}
	for _, r := range e.runs {
		shift(&r.gateUntil)
		shift(&r.nextStart)
		for _, t := range r.targets {
			shift(&t.notBefore)
			shift(&t.offerAt)
			shift(&t.progress)
			shift(&t.resentAt)
			shift(&t.deadline)
			shift(&t.rtt.start)
		}
	}
}

// refuseWhileHeld returns the store's error (fleet.ErrStoreUnavailable)
// while it cannot write: the API's changes are refused rather than queued behind writes that wait.
func (e *Engine) refuseWhileHeld() error {
	if err := e.Store.Unavailable(); err != nil {
		return err
	}
	return nil
}

// storeWaiting is the Waiting of every update while the store cannot write.
func (e *Engine) storeWaiting() string {
	if !e.heldSince.IsZero() {
		return waitingStore
	}
	return ""
}
