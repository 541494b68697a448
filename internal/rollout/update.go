package rollout

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
	"github.com/flotaio/flota/internal/sqlite"
)

var contextBG = context.Background()

// CreateUpdate selects the target devices and starts (or schedules) a new
// update. Devices that do not need the firmware are recorded as skipped with
// a reason: already on the target version (already_current), on a newer one
// (version_not_newer, unless the policy allows downgrades or forces), of
// another model (incompatible_model). A device is in at most one active
// update: when selected devices that need the firmware are already in one,
// the update is refused with fleet.ErrDeviceBusy. A selector that matches no
// device is refused with fleet.ErrNoTargets.
func (e *Engine) CreateUpdate(ctx context.Context, req CreateRequest) (fleet.Update, error) {
	if err := e.refuseWhileHeld(); err != nil {
		return fleet.Update{}, err
	}
	pol := req.Policy.WithDefaults()
	if err := pol.Validate(); err != nil {
		return fleet.Update{}, err
	}
	if err := req.Selector.Validate(); err != nil {
		return fleet.Update{}, err
	}
	matcher, err := req.Selector.Compile()
	if err != nil {
		return fleet.Update{}, err
	}
	if req.FirmwareID == "" {
		return fleet.Update{}, fleet.Errorf(fleet.ErrInvalidInput, "firmware is required")
	}
	blob, fw, err := e.openBlob(ctx, req.FirmwareID)
	if err != nil {
		return fleet.Update{}, err
	}
	devices, err := e.Store.SelectDevices(ctx, req.Selector)
	if err != nil {
		blob.Close()
		return fleet.Update{}, fmt.Errorf("select devices: %w", err)
	}
	if len(devices) == 0 && !pol.Dynamic {
		blob.Close()
		return fleet.Update{}, fleet.Errorf(fleet.ErrNoTargets, "selector matches no registered device")
	}
	r := newRun(fleet.Update{Policy: pol}, fw, blob, matcher)
	if err := e.wantPayloads(ctx, r, devices); err != nil {
		blob.Close()
		return fleet.Update{}, err
	}
	now := e.now().UTC()
	u := fleet.Update{ID: fleet.NewID("u"), FirmwareID: fw.ID, Selector: req.Selector, Policy: pol,
		State: fleet.UpdateRunning, CreatedAt: now, StartedAt: &now, CreatedBy: req.CreatedBy}
	if pol.StartAt != nil && pol.StartAt.After(now) {
		u.State, u.StartedAt = fleet.UpdateScheduled, nil
	}

	var createErr error
	err = e.do(ctx, func() {
		targets := make([]fleet.Progress, 0, len(devices))
		busy := map[string]int{}
		queued := 0
		// A fleet has few distinct model and version pairs: compare each
		// pair's versions once, not once per device.
		skips := map[[2]string]fleet.Reason{}
		for _, d := range devices {
			if req.Selector.Online && !e.ready[d.ID] {
				continue
			}
			p := fleet.Progress{UpdateID: u.ID, DeviceID: d.ID, State: fleet.StateQueued, UpdatedAt: now}
			key := [2]string{d.Model, d.Version}
			reason, ok := skips[key]
			if !ok {
				reason = skipReason(d, fw, pol)
				skips[key] = reason
			}
			if reason != "" {
				p.State, p.Reason, p.FinishedAt = fleet.StateSkipped, reason, &now
			} else if other := e.active[d.ID]; other != nil {
				busy[other.r.u.ID]++
				continue
			} else {
				queued++
			}
			targets = append(targets, p)
		}
		if len(busy) > 0 {
			n, ids := 0, make([]string, 0, len(busy))
			for id, c := range busy {
				n += c
				ids = append(ids, id)
			}
			slices.Sort(ids)
			createErr = fleet.Errorf(fleet.ErrDeviceBusy, "%d selected device(s) are in active update(s) %s: wait for it to end, cancel it, or narrow the selector",
				n, strings.Join(ids, ", "))
			return
		}
		if len(targets) == 0 && !pol.Dynamic {
			createErr = fleet.Errorf(fleet.ErrNoTargets, "no selected device is online")
			return
		}
		phases, err := fleet.ResolvePhases(pol.Phases, queued)
		if err != nil {
			createErr = err
			return
		}
		if createErr = e.Store.CreateUpdate(ctx, u, targets); createErr != nil {
			return
		}
		r.u = u
		r.phases = phases
		e.runs[u.ID] = r
		for _, p := range targets {
			t := r.add(p, 0)
			if p.State == fleet.StateQueued {
				e.active[p.DeviceID] = t
				if e.ready[p.DeviceID] {
					r.enqueue(t, false)
				}
			}
		}
		e.emit(fleet.Event{Type: fleet.EventUpdate, UpdateID: u.ID, State: string(u.State)})
		e.emitSkipped(r)
		if len(phases) > 1 {
			e.emit(fleet.Event{Type: fleet.EventPhase, UpdateID: u.ID, State: "started", Phase: 1})
		}
		r.maybeDone = !pol.Dynamic
		e.checkRun(r, e.now())
		e.finishRuns()
	})
	if err == nil {
		err = createErr
	}
	if err != nil {
		blob.Close()
		return fleet.Update{}, err
	}
	return u, nil
}

// loadRun rebuilds the run of a stored update: its targets with their
// progress, its counters, and the phase it reached (devices are assigned to
// phases in the order they started).
func (e *Engine) loadRun(ctx context.Context, u fleet.Update) (*run, error) {
	blob, fw, blobErr := e.openBlob(ctx, u.FirmwareID)
	switch {
	case errors.Is(blobErr, fleet.ErrFirmwareDamaged):
		blob = brokenBlob{blobErr} // the run loads, paused (damagedRun)
	case blobErr != nil:
		return nil, blobErr
	}
	fail := func(err error) (*run, error) {
		blob.Close()
		return nil, err
	}
	matcher, err := u.Selector.Compile()
	if err != nil {
		return fail(err)
	}
	rows, err := e.Store.AllProgress(ctx, u.ID)
	if err != nil {
		return fail(err)
	}
	c, err := e.Store.UpdateCounters(ctx, u.ID)
	if err != nil {
		return fail(err)
	}
	r := newRun(u, fw, blob, matcher)
	r.blobErr = blobErr
	if err := e.loadPayloads(ctx, r); err != nil {
		return fail(err)
	}
	r.bytesSent, r.bytesAcked, r.resends, r.savedCounters = c.BytesSent, c.BytesAcked, c.Resends, c
	need := 0
	var started []*target
	for _, row := range rows {
		t := r.add(row.Progress, row.Handle)
		if row.State != fleet.StateSkipped {
			need++
		}
		if row.Attempts > 0 {
			t.started = true
			started = append(started, t)
		}
	}
	if r.phases, err = fleet.ResolvePhases(u.Policy.Phases, need); err != nil {
		return fail(err)
	}
	slices.SortFunc(started, func(a, b *target) int {
		return cmpTime(a.p.StartedAt, b.p.StartedAt)
	})
	for i, t := range started {
		for t.phase < len(r.phases)-1 && i >= r.phases[t.phase] {
			t.phase++
		}
		r.phase = max(r.phase, t.phase)
	}
	r.started = len(started)
	r.restoreCounters()
	return r, nil
}

func cmpTime(a, b *time.Time) int {
	switch {
	case a == nil && b == nil:
		return 0
	case a == nil:
		return 1
	case b == nil:
		return -1
	}
	return a.Compare(*b)
}

// restore reloads the active updates after a restart. Transfers that were in
// flight resume when their device says hello: the device's offset decides.
func (e *Engine) restore(ctx context.Context) error {
	updates, err := e.Store.ActiveUpdates(ctx)
	if err != nil {
		return fmt.Errorf("rollout: load active updates: %w", err)
	}
	stopping, err := e.Store.StoppingUpdates(ctx)
	if err != nil {
		return fmt.Errorf("rollout: load stopping updates: %w", err)
	}
	updates = append(updates, stopping...)
	now := e.now()
	for _, u := range updates {
		r, err := e.loadRun(ctx, u)
		if err != nil {
			return fmt.Errorf("rollout: restore update %s: %w", u.ID, err)
		}
		for _, t := range r.targets {
			if t.p.State.Terminal() {
				continue
			}
			e.active[t.p.DeviceID] = t
			t.progress = now
			switch {
			case t.p.State == fleet.StateInstalling || t.p.State == fleet.StateRebooting:
				t.deadline = now.Add(u.Policy.ConfirmTimeout.D())
			case t.p.State.Transferring():
				t.resume = true
			}
		}
		e.restoreSlots(r)
		if !u.State.Active() {
			r.stopReason = fleet.ReasonOperator
			if u.State == fleet.UpdateAborted {
				r.stopReason = fleet.ReasonAborted
			}
		}
		r.maybeDone = true
		e.runs[u.ID] = r
		if r.blobErr != nil {
			e.damagedRun(r)
		}
		e.Logger.Info("resumed update", "update", u.ID, "state", u.State, "devices", len(r.targets), "phase", r.phase+1)
	}
	return nil
}

// finishRuns completes every run whose devices all ended.
func (e *Engine) finishRuns() {
	for id, r := range e.runs {
		if !r.maybeDone {
			continue
		}
		r.maybeDone = false
		e.checkRun(r, e.now()) // thresholds and gates move when devices end
		if r.u.State == fleet.UpdateScheduled || r.u.Policy.Dynamic && r.u.State.Active() {
			continue // a dynamic update runs until an operator ends it
		}
		done := true
		for _, t := range r.targets {
			if !t.p.State.Terminal() {
				done = false
				break
			}
		}
		if !done {
			continue
		}
		state := r.u.State
		if !state.Terminal() {
			state = fleet.UpdateCompleted
			if r.counts[fleet.StateFailed] > 0 || r.counts[fleet.StateRejected] > 0 || r.counts[fleet.StateOffline] > 0 {
				state = fleet.UpdateCompletedWithFailures
			}
			e.setUpdateState(r, state, "")
		}
		r.checkpoint(e, true)
		r.publishStatus(e, e.now(), true)
		e.remember(e.summary(r, e.now()))
		r.closeBlob()
		delete(e.runs, id)
	}
}

// setUpdateState moves the update through its state machine and records the
// change as an event.
func (e *Engine) setUpdateState(r *run, state fleet.UpdateState, reason fleet.Reason) {
	if r.u.State == state {
		return
	}
	if !fleet.CanUpdateTransition(r.u.State, state) {
		e.Logger.Error("illegal update transition", "update", r.u.ID, "from", r.u.State, "to", state)
		return
	}
	now := e.now().UTC()
	from := r.u.State
	r.u.State = state
	if state == fleet.UpdatePaused {
		r.pausedBy = reason
	}
	if state == fleet.UpdateRunning && r.u.StartedAt == nil {
		r.u.StartedAt = &now
	}
	r.u.FinishedAt = nil
	if state.Terminal() {
		r.u.FinishedAt = &now
	}
	if err := e.Store.SetUpdateState(r.u.ID, state, now); err != nil {
		e.Logger.Error("save update state", "update", r.u.ID, "err", err)
	}
	e.emit(fleet.Event{Type: fleet.EventUpdate, UpdateID: r.u.ID, From: string(from), State: string(state), Reason: reason, Phase: r.phase + 1})
	r.dirty = true
	e.Logger.Info("update state", "update", r.u.ID, "state", state, "reason", reason)
}

// maxEnded bounds the summaries of ended updates kept in memory.
const maxEnded = 256

// remember keeps the final summary of an ended run, so that it is served
// at once, before the store's writer has committed the last changes.
func (e *Engine) remember(s fleet.UpdateSummary) {
	if _, ok := e.ended[s.ID]; !ok {
		e.endedOrder = append(e.endedOrder, s.ID)
	}
	e.ended[s.ID] = s
	for len(e.endedOrder) > maxEnded {
		delete(e.ended, e.endedOrder[0])
		e.endedOrder = e.endedOrder[1:]
	}
}

// Summary returns an update's live summary, or the stored one of an update
// that ended.
func (e *Engine) Summary(ctx context.Context, updateID string) (fleet.UpdateSummary, error) {
	var s fleet.UpdateSummary
	found := false
	if err := e.do(ctx, func() {
		if r := e.runs[updateID]; r != nil {
			s, found = e.summary(r, e.now()), true
		} else {
			s, found = e.ended[updateID]
		}
	}); err != nil {
		return s, err
	}
	if found {
		return s, nil
	}
	u, err := e.Store.Update(ctx, updateID)
	if err != nil {
		return s, err
	}
	fw, err := e.Store.Firmware(ctx, u.FirmwareID)
	if err != nil {
		return s, err
	}
	counts, err := e.Store.CountProgress(ctx, updateID)
	if err != nil {
		return s, err
	}
	c, err := e.Store.UpdateCounters(ctx, updateID)
	if err != nil {
		return s, err
	}
	encodings, err := e.Store.CountEncodings(ctx, updateID)
	if err != nil {
		return s, err
	}
	s = fleet.UpdateSummary{Update: u, Firmware: fw, Counts: counts, Time: e.now().UTC(),
		BytesSent: c.BytesSent, BytesAcked: c.BytesAcked, Resends: c.Resends, Encodings: encodings}
	for _, n := range encodings {
		s.ImageBytes += int64(n) * fw.Size
	}
	for _, c := range counts {
		s.Total += c
	}
	return s, nil
}

func (e *Engine) summary(r *run, now time.Time) fleet.UpdateSummary {
	counts := make(map[fleet.DeviceState]int, len(r.counts))
	for st, c := range r.counts {
		if c != 0 {
			counts[st] = c
		}
	}
	s := fleet.UpdateSummary{Update: r.u, Firmware: r.fw, Total: len(r.targets), Counts: counts, InFlight: r.slots,
		BytesSent: r.bytesSent, BytesAcked: r.bytesAcked, Resends: r.resends, RateBps: r.rate, Time: now.UTC(),
		Phase: r.phase + 1, Phases: slices.Clone(r.phases), Gate: r.gate, Waiting: e.waiting(r, now),
		Encodings: r.encodingCounts(), PayloadsPending: len(r.pl.waitQ)}
	for _, n := range s.Encodings {
		s.ImageBytes += int64(n) * r.fw.Size
	}
	if len(r.phases) <= 1 {
		s.Phase, s.Phases = 0, nil
	}
	e.explain(r, &s)
	return s
}

// remainingBytes is what the unfinished devices still need, counted at most
// once per interval: it walks every target, and the summary is asked for on
// every status publish and API read (an estimate, like the rate it divides).
func (r *run) remainingBytes(now time.Time, interval time.Duration) int64 {
	if !r.remainingAt.IsZero() && now.Sub(r.remainingAt) < interval && now.After(r.remainingAt) {
		return r.remaining
	}
	remaining := int64(0)
	for _, t := range r.targets {
		if !t.p.State.Terminal() {
			remaining += t.size() - t.acked
		}
	}
	r.remaining, r.remainingAt = remaining, now
	return remaining
}

// maxETA bounds an estimate; a longer one is no estimate (0).
const maxETA = 365 * 24 * time.Hour

// eta returns the seconds that remaining bytes take at rate bytes/s, or 0
// when that is beyond maxETA. The smoothed rate of a stalled update halves
// every second down to subnormal numbers, where the quotient overflows to
// +Inf, which JSON cannot encode: every summary would fail.
func eta(remaining int64, rate float64) float64 {
	secs := float64(remaining) / rate
	if rate <= 0 || math.IsNaN(secs) || secs > maxETA.Seconds() {
		return 0
	}
	return secs
}

// publishStatus publishes the retained summary when it changed.
func (r *run) publishStatus(e *Engine, now time.Time, force bool) {
	if dt := now.Sub(r.rateAt).Seconds(); dt >= 1 {
		inst := float64(r.bytesAcked-r.rateBytes) / dt
		if r.rate == 0 {
			r.rate = inst
		} else {
			r.rate = 0.5*r.rate + 0.5*inst
		}
		r.rateBytes, r.rateAt = r.bytesAcked, now
	}
	if !r.dirty && !force {
		return
	}
	r.dirty = false
	if err := e.Transport.Publish(protocol.UpdateStatusTopic(r.u.ID), protocol.Encode(e.summary(r, now)), true, 1); err != nil {
		e.Logger.Warn("publish update status", "update", r.u.ID, "err", err)
	}
}

// checkpoint writes the acknowledged offsets of transfers that moved since
// their last save. A crash loses at most the progress since the last
// checkpoint, which the devices supply again when they accept the re-offer.
func (r *run) checkpoint(e *Engine, all bool) {
	for _, t := range r.targets {
		if t.acked != t.saved && (all || t.p.State.Transferring()) {
			r.checkpointOne(e, t)
		}
	}
	c := sqlite.Counters{BytesSent: r.bytesSent, BytesAcked: r.bytesAcked, Resends: r.resends}
	if c != r.savedCounters {
		r.savedCounters = c
		if err := e.Store.SaveUpdateCounters(r.u.ID, c); err != nil {
			e.Logger.Error("checkpoint update counters", "update", r.u.ID, "err", err)
		}
	}
}

func (r *run) checkpointOne(e *Engine, t *target) {
	if t.acked == t.saved {
		return
	}
	t.p.Offset, t.saved = t.acked, t.acked
	t.p.UpdatedAt = time.Now().UTC()
	if err := e.Store.SaveProgress(t.p, t.handle); err != nil {
		e.Logger.Error("checkpoint progress", "device", t.p.DeviceID, "err", err)
	}
}

// Pause stops admitting devices; transfers in flight finish.
func (e *Engine) Pause(ctx context.Context, updateID string) error {
	return e.control(ctx, updateID, func(r *run) error {
		if r.u.State != fleet.UpdateRunning {
			return fleet.Errorf(fleet.ErrIllegalTransition, "update is %s", r.u.State)
		}
		e.setUpdateState(r, fleet.UpdatePaused, fleet.ReasonOperator)
		return nil
	})
}

// Resume admits devices again. At a gate that waits for approval, or that
// failed, resuming is the operator's decision to go on: the next phase
// starts.
func (e *Engine) Resume(ctx context.Context, updateID string) error {
	return e.control(ctx, updateID, func(r *run) error {
		if r.u.State != fleet.UpdatePaused {
			return fleet.Errorf(fleet.ErrIllegalTransition, "update is %s", r.u.State)
		}
		if err := e.reopenBlob(r); err != nil {
			return err
		}
		atGate := r.gate == gateApproval || r.gate == gateFailed ||
			(r.gate == gateOpen && r.phase < len(r.phases)-1 && r.started >= r.phases[r.phase] && e.phaseSettled(r))
		e.setUpdateState(r, fleet.UpdateRunning, fleet.ReasonOperator)
		if atGate {
			e.nextPhase(r)
		}
		e.admit(r)
		return nil
	})
}

// phaseSettled reports whether every device of the current phase ended: an
// update restored in paused state at a gate it had stopped at.
func (e *Engine) phaseSettled(r *run) bool {
	for _, t := range r.targets {
		if t.started && t.phase == r.phase && !t.p.State.Terminal() {
			return false
		}
	}
	return true
}

// Cancel stops the update: devices not yet installing are cancelled (those
// transferring get a cancel message); devices already installing finish.
func (e *Engine) Cancel(ctx context.Context, updateID string) error {
	return e.control(ctx, updateID, func(r *run) error {
		if !r.u.State.Active() {
			return fleet.Errorf(fleet.ErrUpdateFinished, "update is %s", r.u.State)
		}
		e.stop(r, fleet.UpdateCancelled, fleet.ReasonOperator, fleet.ReasonOperator)
		return nil
	})
}

// sendCancel tells a transferring device to stop and discard its download.
func (e *Engine) sendCancel(t *target, reason fleet.Reason) {
	msg := protocol.Cancel{V: protocol.Version, Update: t.r.u.ID, Handle: t.handle, Reason: reason}
	if err := e.Transport.Publish(protocol.DownTopic(t.p.DeviceID, protocol.KindCancel), protocol.Encode(msg), false, 1); err != nil {
		e.Logger.Warn("publish cancel", "device", t.p.DeviceID, "err", err)
	}
}

// RetryFailed admits an update's failed devices again, with fresh attempts.
// An update that ended with failures (or was aborted) runs again. Devices
// now in another active update are left failed. It returns how many devices
// were re-admitted.
func (e *Engine) RetryFailed(ctx context.Context, updateID string) (int, error) {
	if err := e.refuseWhileHeld(); err != nil {
		return 0, err
	}
	// An update that just ended may still have writes queued: the run is
	// rebuilt from the store.
	if err := e.Store.Flush(ctx); err != nil {
		return 0, err
	}
	u, err := e.Store.Update(ctx, updateID)
	if err != nil {
		return 0, err
	}
	n := 0
	var ferr error
	err = e.do(ctx, func() {
		r := e.runs[updateID]
		if r == nil {
			if s, ok := e.ended[updateID]; ok {
				u.State = s.State
			}
			if u.State != fleet.UpdateCompletedWithFailures && u.State != fleet.UpdateAborted {
				ferr = fleet.Errorf(fleet.ErrUpdateFinished, "update is %s: nothing to retry", u.State)
				return
			}
			if r, ferr = e.loadRun(ctx, u); ferr != nil {
				return
			}
		}
		for _, t := range r.targets {
			if t.p.State != fleet.StateFailed && t.p.State != fleet.StateOffline || e.active[t.p.DeviceID] != nil {
				continue
			}
			t.p.Attempts, t.notBefore, t.acked, t.sent, t.credited, t.sentMax = 0, time.Time{}, 0, 0, 0, 0
			t.picked, t.restored = false, false
			t.started = true
			e.active[t.p.DeviceID] = t
			e.setState(t, fleet.StateQueued, fleet.ReasonRetry)
			if e.ready[t.p.DeviceID] {
				r.enqueue(t, false)
			}
			n++
		}
		if n == 0 {
			ferr = fleet.Errorf(fleet.ErrInvalidInput, "update %s has no failed device to retry", updateID)
			if e.runs[updateID] == nil {
				r.closeBlob()
			}
			return
		}
		if e.runs[updateID] == nil {
			e.runs[updateID] = r
			delete(e.ended, updateID)
		}
		if r.u.State.Terminal() {
			e.setUpdateState(r, fleet.UpdateRunning, fleet.ReasonRetry)
		}
		e.Logger.Info("retrying failed devices", "update", updateID, "devices", n)
		e.admit(r)
	})
	if err != nil {
		return 0, err
	}
	return n, ferr
}

// control runs fn on an active update in the loop.
func (e *Engine) control(ctx context.Context, updateID string, fn func(*run) error) error {
	if err := e.refuseWhileHeld(); err != nil {
		return err
	}
	var ferr error
	found := false
	if err := e.do(ctx, func() {
		r := e.runs[updateID]
		if r == nil {
			return
		}
		found = true
		ferr = fn(r)
		r.dirty = true
		e.finishRuns()
	}); err != nil {
		return err
	}
	if found {
		return ferr
	}
	if _, err := e.Store.Update(ctx, updateID); err != nil {
		return err
	}
	return fleet.Errorf(fleet.ErrUpdateFinished, "update %s has ended", updateID)
}
