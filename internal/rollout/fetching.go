package rollout

import (
	"context"

	"github.com/flotaio/flota/internal/fleet"
)

// An update created on a firmware still fetching (fleet.Firmware.Fetch)
// waits in state waiting: its targets are chosen and held at its
// creation, from the firmware's version and model, and none is offered
// anything. When the fetch ends, the API (which runs fetches) tells the
// engine: FirmwareFetched starts the waiting updates as if they were
// created then (running, or scheduled before their start_at), with the
// image checked as any run checks it; FirmwareFetchEnded ends them failed
// (or cancelled, when the fetch was) with the fetch's error as their
// ended_reason. Fetches do not outlive the process: an update found
// waiting at a restart ends failed, unless its firmware was completed
// before the stop, when it starts.

// errRestarted is the ended reason of an update whose fetch the restart
// of the orchestrator ended.
const errRestarted = "the orchestrator stopped while the firmware was fetching: add the firmware again and create a new update"

// FirmwareFetched starts the updates waiting for the firmware firmwareID,
// whose fetch has stored its image.
func (e *Engine) FirmwareFetched(ctx context.Context, firmwareID string) error {
	return e.do(ctx, func() {
		for _, r := range e.runs {
			if r.u.State == fleet.UpdateWaiting && r.fw.ID == firmwareID {
				e.startWaiting(ctx, r)
				r.dirty = true
			}
		}
		e.finishRuns()
	})
}

// FirmwareFetchEnded ends the updates waiting for the firmware firmwareID,
// whose fetch failed (or was cancelled: cancelled true), with reason.
func (e *Engine) FirmwareFetchEnded(ctx context.Context, firmwareID string, cancelled bool, reason string) error {
	state, code := fleet.UpdateFailed, fleet.ReasonFetchFailed
	if cancelled {
		state, code = fleet.UpdateCancelled, fleet.ReasonFetchCancelled
	}
	return e.do(ctx, func() {
		for _, r := range e.runs {
			if r.u.State == fleet.UpdateWaiting && r.fw.ID == firmwareID {
				e.endWaiting(r, state, code, reason)
			}
		}
		e.finishRuns()
	})
}

// checkFetched starts or ends a new waiting run whose firmware's fetch
// ended before the run was added: its firmware row says so.
func (e *Engine) checkFetched(ctx context.Context, r *run) {
	fw, err := e.Store.Firmware(ctx, r.fw.ID)
	if err != nil {
		e.Logger.Warn("read the firmware an update waits for", "update", r.u.ID, "firmware", r.fw.ID, "err", err)
		return // it is told when the fetch ends
	}
	if fw.Fetch == "" {
		e.startWaiting(ctx, r)
	}
}

// restoreWaiting decides a waiting run found at a restart: its fetch died
// with the process that ran it.
func (e *Engine) restoreWaiting(ctx context.Context, r *run) {
	fw, err := e.Store.Firmware(ctx, r.fw.ID)
	if err == nil && fw.Fetch == "" {
		e.startWaiting(ctx, r)
		return
	}
	e.endWaiting(r, fleet.UpdateFailed, fleet.ReasonFetchFailed, errRestarted)
}

// startWaiting checks the fetched image and starts the waiting run r as
// CreateUpdate starts a new one.
func (e *Engine) startWaiting(ctx context.Context, r *run) {
	b, fw, err := e.openBlob(ctx, r.fw.ID)
	if err != nil {
		e.endWaiting(r, fleet.UpdateFailed, fleet.ReasonFetchFailed, "the fetched image cannot be used: "+err.Error())
		return
	}
	r.closeBlob()
	r.blob, r.fw, r.blobErr = b, fw, nil
	now := e.now()
	state := fleet.UpdateRunning
	if at := r.u.Policy.StartAt; at != nil && at.After(now) {
		state = fleet.UpdateScheduled
	}
	e.setUpdateState(r, state, fleet.ReasonFirmwareFetched)
	e.Logger.Info("firmware fetched: update starts", "update", r.u.ID, "firmware", fw.ID, "state", state)
	r.maybeDone = true
	e.checkRun(r, now)
}

// endWaiting ends the waiting run r, its devices cancelled with code.
func (e *Engine) endWaiting(r *run, state fleet.UpdateState, code fleet.Reason, reason string) {
	r.u.EndedReason = reason
	e.Logger.Warn("firmware fetch ended badly: update ends", "update", r.u.ID, "firmware", r.fw.ID, "state", state, "reason", reason)
	e.stop(r, state, code, code)
}
