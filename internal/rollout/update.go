package rollout

import (
	"context"
	"fmt"
	"time"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
	"github.com/flotaio/flota/internal/sqlite"
)

var contextBG = context.Background()

// CreateUpdate selects the target devices and starts a new update. Devices
// already on the target version, of another model than the firmware's, or in
// another active update are recorded as skipped with a reason; an update
// whose selector matches no device is refused with fleet.ErrNoTargets.
func (e *Engine) CreateUpdate(ctx context.Context, req CreateRequest) (fleet.Update, error) {
	pol := req.Policy.WithDefaults()
	if err := pol.Validate(); err != nil {
		return fleet.Update{}, err
	}
	for _, id := range req.Selector.Devices {
		if !fleet.ValidDeviceID(id) {
			return fleet.Update{}, fleet.Errorf(fleet.ErrInvalidInput, "device ID %q", id)
		}
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
	if len(devices) == 0 {
		blob.Close()
		return fleet.Update{}, fleet.Errorf(fleet.ErrNoTargets, "selector matches no registered device")
	}
	now := time.Now().UTC()
	u := fleet.Update{ID: fleet.NewID("u"), FirmwareID: fw.ID, Selector: req.Selector, Policy: pol,
		State: fleet.UpdateRunning, CreatedAt: now, StartedAt: &now}

	var createErr error
	err = e.do(ctx, func() {
		r := newRun(u, fw, blob)
		targets := make([]fleet.Progress, 0, len(devices))
		for _, d := range devices {
			p := fleet.Progress{UpdateID: u.ID, DeviceID: d.ID, State: fleet.StateQueued, UpdatedAt: now}
			switch {
			case d.Version == fw.Version:
				p.State, p.Reason = fleet.StateSkipped, fleet.ReasonAlreadyCurrent
			case fw.Model != "" && d.Model != fw.Model:
				p.State, p.Reason = fleet.StateSkipped, fleet.ReasonIncompatibleModel
			case e.active[d.ID] != nil:
				p.State, p.Reason = fleet.StateSkipped, fleet.ReasonBusy
			}
			if p.State == fleet.StateSkipped {
				p.FinishedAt = &now
			}
			targets = append(targets, p)
		}
		if createErr = e.Store.CreateUpdate(ctx, u, targets); createErr != nil {
			return
		}
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
		e.emit(fleet.Event{Type: fleet.EventUpdate, UpdateID: u.ID, State: string(fleet.UpdateRunning)})
		r.maybeDone = true
		e.admit(r)
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

// restore reloads the active updates after a restart. Transfers that were in
// flight resume when their device says hello: the device's offset decides.
func (e *Engine) restore(ctx context.Context) error {
	updates, err := e.Store.ActiveUpdates(ctx)
	if err != nil {
		return fmt.Errorf("rollout: load active updates: %w", err)
	}
	now := time.Now()
	for _, u := range updates {
		blob, fw, err := e.openBlob(ctx, u.FirmwareID)
		if err != nil {
			return fmt.Errorf("rollout: restore update %s: %w", u.ID, err)
		}
		rows, err := e.Store.AllProgress(ctx, u.ID)
		if err != nil {
			blob.Close()
			return fmt.Errorf("rollout: restore update %s: %w", u.ID, err)
		}
		c, err := e.Store.UpdateCounters(ctx, u.ID)
		if err != nil {
			blob.Close()
			return fmt.Errorf("rollout: restore update %s: %w", u.ID, err)
		}
		r := newRun(u, fw, blob)
		r.bytesSent, r.bytesAcked, r.resends, r.savedCounters = c.BytesSent, c.BytesAcked, c.Resends, c
		r.rateBytes = c.BytesAcked
		for _, row := range rows {
			t := r.add(row.Progress, row.Handle)
			if row.State.Terminal() {
				continue
			}
			e.active[row.DeviceID] = t
			t.progress = now
			switch {
			case row.State == fleet.StateInstalling || row.State == fleet.StateRebooting:
				t.deadline = now.Add(e.ConfirmTimeout)
			case row.State.Transferring():
				t.resume = true
			}
		}
		r.maybeDone = true
		e.runs[u.ID] = r
		e.Logger.Info("resumed update", "update", u.ID, "devices", len(rows))
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
		for _, t := range r.targets {
			if !t.p.State.Terminal() {
				goto next
			}
		}
		{
			state := fleet.UpdateCompleted
			if r.counts[fleet.StateFailed] > 0 || r.counts[fleet.StateRejected] > 0 {
				state = fleet.UpdateCompletedWithFailures
			}
			if r.u.State == fleet.UpdateCancelled {
				state = fleet.UpdateCancelled
			}
			e.setUpdateState(r, state)
			r.checkpoint(e, true)
			r.publishStatus(e, time.Now(), true)
			r.closeBlob()
			delete(e.runs, id)
		}
	next:
	}
}

func (e *Engine) setUpdateState(r *run, state fleet.UpdateState) {
	if r.u.State == state && !state.Terminal() {
		return
	}
	now := time.Now().UTC()
	r.u.State = state
	if state.Terminal() {
		r.u.FinishedAt = &now
	}
	if err := e.Store.SetUpdateState(r.u.ID, state, now); err != nil {
		e.Logger.Error("save update state", "update", r.u.ID, "err", err)
	}
	e.emit(fleet.Event{Type: fleet.EventUpdate, UpdateID: r.u.ID, State: string(state)})
	r.dirty = true
	e.Logger.Info("update state", "update", r.u.ID, "state", state)
}

// Summary returns an update's live summary, or the stored one of an update
// that ended.
func (e *Engine) Summary(ctx context.Context, updateID string) (fleet.UpdateSummary, error) {
	var s fleet.UpdateSummary
	found := false
	if err := e.do(ctx, func() {
		if r := e.runs[updateID]; r != nil {
			s, found = r.summary(time.Now()), true
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
	s = fleet.UpdateSummary{Update: u, Firmware: fw, Counts: counts, Time: time.Now().UTC(),
		BytesSent: c.BytesSent, BytesAcked: c.BytesAcked, Resends: c.Resends}
	for _, c := range counts {
		s.Total += c
	}
	return s, nil
}

func (r *run) summary(now time.Time) fleet.UpdateSummary {
	counts := make(map[fleet.DeviceState]int, len(r.counts))
	for st, c := range r.counts {
		if c != 0 {
			counts[st] = c
		}
	}
	s := fleet.UpdateSummary{Update: r.u, Firmware: r.fw, Total: len(r.targets), Counts: counts, InFlight: r.slots,
		BytesSent: r.bytesSent, BytesAcked: r.bytesAcked, Resends: r.resends, RateBps: r.rate, Time: now.UTC()}
	if r.rate > 0 {
		remaining := int64(0)
		for _, t := range r.targets {
			if !t.p.State.Terminal() {
				remaining += r.fw.Size - t.acked
			}
		}
		s.ETASeconds = float64(remaining) / r.rate
	}
	return s
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
	if err := e.Transport.Publish(protocol.UpdateStatusTopic(r.u.ID), protocol.Encode(r.summary(now)), true, 1); err != nil {
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
		e.setUpdateState(r, fleet.UpdatePaused)
		return nil
	})
}

// Resume admits devices again.
func (e *Engine) Resume(ctx context.Context, updateID string) error {
	return e.control(ctx, updateID, func(r *run) error {
		if r.u.State != fleet.UpdatePaused {
			return fleet.Errorf(fleet.ErrIllegalTransition, "update is %s", r.u.State)
		}
		e.setUpdateState(r, fleet.UpdateRunning)
		e.admit(r)
		return nil
	})
}

// Cancel stops the update: devices not yet installing are cancelled (those
// transferring get a cancel message); devices already installing finish.
func (e *Engine) Cancel(ctx context.Context, updateID string) error {
	return e.control(ctx, updateID, func(r *run) error {
		if r.u.State == fleet.UpdateCancelled {
			return fleet.Errorf(fleet.ErrUpdateFinished, "update is cancelled")
		}
		e.setUpdateState(r, fleet.UpdateCancelled)
		for _, t := range r.targets {
			st := t.p.State
			if st.Terminal() || st == fleet.StateInstalling || st == fleet.StateRebooting {
				continue
			}
			if st.Transferring() {
				msg := protocol.Cancel{V: protocol.Version, Update: r.u.ID, Handle: t.handle, Reason: fleet.ReasonOperator}
				if err := e.Transport.Publish(protocol.DownTopic(t.p.DeviceID, protocol.KindCancel), protocol.Encode(msg), false, 1); err != nil {
					e.Logger.Warn("publish cancel", "device", t.p.DeviceID, "err", err)
				}
			}
			e.setState(t, fleet.StateCancelled, fleet.ReasonOperator)
		}
		r.readyQ = nil
		r.maybeDone = true
		return nil
	})
}

// control runs fn on an active update in the loop.
func (e *Engine) control(ctx context.Context, updateID string, fn func(*run) error) error {
	var ferr error
	found := false
	if err := e.do(ctx, func() {
		r := e.runs[updateID]
		if r == nil {
			return
		}
		found = true
		ferr = fn(r)
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
