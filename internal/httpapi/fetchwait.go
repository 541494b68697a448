package httpapi

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/flotaio/flota/internal/fleet"
)

// An update may be created on a fetch still running: POST /api/v1/updates
// with "firmware" the fetch job's ID (what firmware add --url --no-wait
// prints). The fetch's firmware is then stored pending at once
// (sqlite.AddPendingFirmware) and the update waits for it
// (rollout/fetching.go); when the fetch ends, runFetch fills the pending
// firmware and tells the engine, which starts or ends the update. A fetch
// that ended is named by its firmware (done) or refused (failed,
// cancelled).

// fetchIDPrefix starts the IDs of fetch jobs.
const fetchIDPrefix = "fetch-"

// fetchSealedPoll is how often fetchFirmware looks again at a fetch whose
// download ended and whose image is being stored.
const fetchSealedPoll = 20 * time.Millisecond

// fetchFirmware returns the ID of the firmware the fetch job id brings:
// the stored firmware of a fetch that is done, or the pending firmware of
// one still running, added on the first call.
func (s *Server) fetchFirmware(ctx context.Context, id string) (string, error) {
	for {
		fw, wait, err := s.fetchFirmwareNow(ctx, id)
		if !wait {
			return fw, err
		}
		select {
		case <-ctx.Done():
			return "", context.Cause(ctx)
		case <-time.After(fetchSealedPoll):
		}
	}
}

// fetchFirmwareNow is fetchFirmware, or wait true while the fetch's image
// is being stored.
func (s *Server) fetchFirmwareNow(ctx context.Context, id string) (fw string, wait bool, err error) {
	s.fetches.mu.Lock()
	defer s.fetches.mu.Unlock()
	fj := s.fetches.jobs[id]
	switch {
	case fj == nil:
		return "", false, fleet.Errorf(fleet.ErrFirmwareNotFound, "no firmware or fetch job %s (fetch jobs are forgotten when the orchestrator restarts)", id)
	case fj.job.State == FetchDone:
		return fj.job.Firmware.ID, false, nil
	case fj.job.State != FetchRunning:
		return "", false, fleet.Errorf(fleet.ErrInvalidInput, "fetch %s %s (%s): it brought no firmware", id, fj.job.State, fj.job.Error)
	case fj.sealed:
		return "", true, nil
	case fj.pending != "":
		return fj.pending, false, nil
	}
	// Under the lock, so that runFetch, which seals the job under it,
	// sees the pending firmware: the image fills it.
	pending, err := s.Store.AddPendingFirmware(ctx, fj.meta, id)
	if err != nil {
		return "", false, err
	}
	fj.pending = pending.ID
	return pending.ID, false, nil
}

// fetchEnded tells the engine how the fetch of the pending firmware ended:
// the updates waiting for it start, or end with the fetch's error. A
// pending firmware no update refers to is removed after a failure. A
// fetch ended by the server's Close is not a failure of the fetch: the
// updates stay waiting, and the engine's next start ends them.
func (s *Server) fetchEnded(fj *fetchJob, pending string, err error) {
	if s.fetches.ctx.Err() != nil {
		return // the server closes: the next start decides the waiting updates
	}
	ctx, cancel := context.WithTimeout(context.Background(), fetchNotifyTimeout)
	defer cancel()
	snap := s.fetchSnapshot(fj)
	log := s.logger().With("fetch", snap.ID, "firmware", pending)
	if s.Engine != nil {
		var nerr error
		if err == nil {
			nerr = s.Engine.FirmwareFetched(ctx, pending)
		} else {
			nerr = s.Engine.FirmwareFetchEnded(ctx, pending, snap.State == FetchCancelled,
				fmt.Sprintf("fetch %s %s: %s", snap.ID, snap.State, snap.Error))
		}
		if nerr != nil {
			// The engine is closing: the next start decides the
			// waiting updates (rollout/fetching.go).
			log.Warn("tell the engine that a fetch ended", "err", nerr)
		}
	}
	if err != nil {
		if derr := s.Store.DeletePendingFirmware(ctx, pending); derr != nil && !errors.Is(derr, context.Canceled) {
			log.Warn("remove the pending firmware of a failed fetch", "err", derr)
		}
	}
}

// fetchNotifyTimeout bounds how long the end of a fetch waits for the
// engine and the store.
const fetchNotifyTimeout = 30 * time.Second

// summary is the engine's summary of an update, with how far the fetch it
// waits for went.
func (s *Server) summary(ctx context.Context, id string) (fleet.UpdateSummary, error) {
	sum, err := s.Engine.Summary(ctx, id)
	if err != nil || sum.FirmwareFetch == nil {
		return sum, err
	}
	s.fetches.mu.Lock()
	if fj := s.fetches.jobs[sum.FirmwareFetch.ID]; fj != nil {
		sum.FirmwareFetch.Bytes, sum.FirmwareFetch.Total = fj.job.Bytes, fj.job.Total
	}
	s.fetches.mu.Unlock()
	sum.WaitingDetail = sum.Explain()
	return sum, nil
}
