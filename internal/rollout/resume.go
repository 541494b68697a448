package rollout

import (
	"cmp"
	"slices"
)

// restoreSlots gives the transfers that were in progress when the engine
// stopped their in-flight slots back, at most max_in_flight of them, those
// furthest along first. They resume first: a new device can start only when
// a slot is free, and the slots are held for the devices that already hold
// bytes until each says hello (and is offered again at once) or stays away
// for the idle timeout (and goes back to the queue, freeing its slot).
// Without it, the first hellos after a restart, mostly from devices that
// never started, would take the slots, and the devices already half-way
// would wait behind them in a state that still reads as transferring.
func (e *Engine) restoreSlots(r *run) {
	var held []*target
	for _, t := range r.targets {
		if t.p.State.Transferring() && !t.slot && e.active[t.p.DeviceID] == t {
			held = append(held, t)
		}
	}
	slices.SortFunc(held, func(a, b *target) int {
		if c := cmp.Compare(happyIndex(b.p.State), happyIndex(a.p.State)); c != 0 {
			return c
		}
		if c := cmp.Compare(b.acked, a.acked); c != 0 {
			return c
		}
		return cmp.Compare(a.p.DeviceID, b.p.DeviceID)
	})
	for _, t := range held {
		if r.slots >= r.u.Policy.MaxInFlight {
			break
		}
		t.slot = true
		r.slots++
	}
}
