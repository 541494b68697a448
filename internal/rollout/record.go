package rollout

import "github.com/flotaio/flota/internal/fleet"

// record saves t's progress row and appends ev, the event of the change
// that led to it, as one write (sqlite.Store.SaveProgressEvent): a crash or
// a full disk can lose both, never one. A row saved without its event
// would, after a restart, hold a state the log never recorded, and nothing
// would record it later: the engine takes the row as the device's state.
func (e *Engine) record(p fleet.Progress, handle uint32, ev fleet.Event) {
	e.seq++
	ev.Seq = e.seq
	if ev.Time.IsZero() {
		ev.Time = e.now().UTC()
	}
	if err := e.Store.SaveProgressEvent(p, handle, ev); err != nil {
		e.Logger.Error("save progress", "device", p.DeviceID, "seq", ev.Seq, "err", err)
	}
}
