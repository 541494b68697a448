package main

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/httpapi"
)

// heldImage answers img with its Content-Length, sends the first half,
// then holds the rest until release is closed (or the client goes).
func heldImage(img []byte, release <-chan struct{}) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(img)))
		half := len(img) / 2
		_, _ = w.Write(img[:half])
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		_, _ = w.Write(img[half:])
	}
}

// startHeldFetch starts the fetch of the image path serves and returns its
// job's ID once its first half arrived.
func startHeldFetch(t *testing.T, s *server, url string, args ...string) string {
	t.Helper()
	id := strings.TrimSpace(s.mustCLI(append([]string{"firmware", "add", "--url", url, "--version", "1.1.0",
		"--name", "app", "--model", "sim-a", "--no-wait"}, args...)...))
	require.True(t, strings.HasPrefix(id, "fetch-"), id)
	poll(t, 30*time.Second, func() bool {
		var job httpapi.FetchJob
		require.Equal(t, http.StatusOK, s.api("GET", "/api/v1/firmware/fetches/"+id, nil, &job))
		return job.Bytes > 0
	}, "the first half of the image arrived")
	return id
}

// updateEvents returns the events of an update.
func updateEvents(t *testing.T, s *server, id string) []fleet.Event {
	t.Helper()
	var evs httpapi.EventList
	s.getJSON("/api/v1/updates/"+id+"/events?limit=1000", &evs)
	return evs.Events
}

func TestFetch_UpdateCreatedWhileFetchingWaitsThenRunsWhenTheFetchEnds(t *testing.T) {
	const devices = 5
	img, sum := randomImage(t, 64<<10)
	release := make(chan struct{})
	store := newArtifactStore(t, map[string]http.HandlerFunc{"/app.bin": heldImage(img, release)})
	s := fetchServer(t, "--fetch-read-timeout", "5m")
	sm := startSim(t, s, "--devices", strconv.Itoa(devices), "--id-prefix", "wait-", "--model", "sim-a")
	s.waitOnline(devices)
	fetchID := startHeldFetch(t, s, store.URL+"/app.bin", "--sha256", sum)

	created := s.cliFull("update", "create", "--firmware", fetchID)
	require.Zero(t, created.code, created.stderr)
	assert.Contains(t, created.stderr, "5 device(s) chosen; the update starts when its firmware is fetched (firmware fetching: 50% (32.0 KiB of 64.0 KiB))")
	id := strings.TrimSpace(created.stdout)
	st := s.status(id)
	assert.Equal(t, fleet.UpdateWaiting, st.State)
	assert.Equal(t, "firmware_fetching", st.Waiting)
	assert.Equal(t, "firmware fetching: 50% (32.0 KiB of 64.0 KiB)", st.WaitingDetail)
	require.NotNil(t, st.FirmwareFetch)
	assert.Equal(t, fetchID, st.FirmwareFetch.ID)
	assert.Equal(t, fetchID, st.Firmware.Fetch)
	assert.Equal(t, devices, st.Total, "the targets are chosen at creation")
	assert.Equal(t, devices, st.Counts[fleet.StateQueued])
	assert.Nil(t, st.StartedAt)
	fwID := st.Firmware.ID
	assert.Contains(t, s.mustCLI("update", "status", id), "firmware fetching: 50% (32.0 KiB of 64.0 KiB)")
	assert.Contains(t, s.mustCLI("update", "list"), "waiting (firmware fetching: 50%")

	// The firmware cannot go while the update waits on it.
	var refusal httpapi.Error
	require.Equal(t, http.StatusConflict, s.api("DELETE", "/api/v1/firmware/"+fwID, nil, &refusal))
	assert.Equal(t, "firmware_in_use", refusal.Code)
	// Its devices are held: another update on them is refused.
	other, _ := s.firmware(1024, "1.0.5")
	res := s.cliFull("update", "create", "--firmware", other)
	assert.Equal(t, 1, res.code)
	assert.Contains(t, res.stderr, id)

	for _, ev := range updateEvents(t, s, id) {
		assert.NotEqual(t, fleet.EventDevice, ev.Type, "no device was offered anything: %+v", ev)
	}

	close(release)
	poll(t, 60*time.Second, func() bool { st = s.status(id); return st.State.Terminal() }, "the update ends")
	assert.Equal(t, fleet.UpdateCompleted, st.State, s.logString())
	assert.Equal(t, devices, st.Counts[fleet.StateSucceeded])
	assert.Equal(t, fwID, st.Firmware.ID, "the update keeps its firmware")
	assert.Equal(t, sum, st.Firmware.SHA256)
	assert.Empty(t, st.Firmware.Fetch)
	require.NotNil(t, st.StartedAt)

	evs := updateEvents(t, s, id)
	require.NotEmpty(t, evs)
	assert.Equal(t, string(fleet.UpdateWaiting), evs[0].State)
	var started bool
	for _, ev := range evs {
		if ev.Type == fleet.EventUpdate && ev.From == string(fleet.UpdateWaiting) {
			started = true
			assert.Equal(t, string(fleet.UpdateRunning), ev.State)
			assert.Equal(t, fleet.ReasonFirmwareFetched, ev.Reason)
		}
	}
	assert.True(t, started, "an update event says the update started: %+v", evs)

	out := sm.stop(t)
	assert.Equal(t, devices, out.Updated)
	for _, d := range out.DevicesDetail {
		assert.Equal(t, sum, d.ImageSHA256, d.ID)
	}
}

func TestFetch_UpdateWaitingOnAFetchThatFailsEndsFailedWithTheFetchError(t *testing.T) {
	img, _ := randomImage(t, 64<<10)
	_, wrong := randomImage(t, 10)
	release := make(chan struct{})
	store := newArtifactStore(t, map[string]http.HandlerFunc{"/app.bin": heldImage(img, release)})
	s := fetchServer(t, "--fetch-read-timeout", "5m")
	sm := startSim(t, s, "--devices", "3", "--id-prefix", "fail-", "--model", "sim-a")
	s.waitOnline(3)
	fetchID := startHeldFetch(t, s, store.URL+"/app.bin", "--sha256", wrong)
	id := strings.TrimSpace(s.mustCLI("update", "create", "--firmware", fetchID))
	require.Equal(t, fleet.UpdateWaiting, s.status(id).State)

	close(release) // the rest of an image that is not the one asked for
	var st fleet.UpdateSummary
	poll(t, 30*time.Second, func() bool { st = s.status(id); return st.State.Terminal() }, "the update ends")
	assert.Equal(t, fleet.UpdateFailed, st.State)
	assert.Contains(t, st.EndedReason, "fetch "+fetchID+" failed")
	assert.Contains(t, st.EndedReason, "SHA-256 mismatch")
	assert.Equal(t, 3, st.Counts[fleet.StateCancelled])
	assert.Contains(t, s.mustCLI("update", "status", id), "SHA-256 mismatch")
	var ended bool
	for _, ev := range updateEvents(t, s, id) {
		if ev.Type == fleet.EventUpdate && ev.State == string(fleet.UpdateFailed) {
			ended = true
			assert.Equal(t, fleet.ReasonFetchFailed, ev.Reason)
		}
		if ev.Type == fleet.EventDevice {
			assert.Equal(t, string(fleet.StateCancelled), ev.State, "no device was offered anything: %+v", ev)
		}
	}
	assert.True(t, ended, "an update event says the update failed")

	// The devices are free again; the update on a fetch that failed is refused.
	res := s.cliFull("update", "create", "--firmware", fetchID)
	assert.Equal(t, 1, res.code)
	assert.Contains(t, res.stderr, "brought no firmware")
	var fws httpapi.FirmwareList
	s.getJSON("/api/v1/firmware", &fws)
	assert.Empty(t, fws.Firmware, "the firmware of a failed fetch is not listed")
	noPartialImages(t, s)
	assert.Zero(t, sm.stop(t).BytesReceived)
}

func TestFetch_CancellingTheFetchCancelsTheUpdateAndTheUpdateCanBeCancelled(t *testing.T) {
	img, sum := randomImage(t, 64<<10)
	release := make(chan struct{})
	store := newArtifactStore(t, map[string]http.HandlerFunc{
		"/a.bin": heldImage(img, release),
		"/b.bin": heldImage(img, release),
	})
	s := fetchServer(t, "--fetch-read-timeout", "5m")
	startSim(t, s, "--devices", "2", "--id-prefix", "cx-", "--model", "sim-a")
	s.waitOnline(2)

	// The fetch is cancelled: the update waiting for it ends cancelled.
	fetchA := startHeldFetch(t, s, store.URL+"/a.bin", "--sha256", sum)
	idA := strings.TrimSpace(s.mustCLI("update", "create", "--firmware", fetchA, "--select", "device=cx-00001"))
	require.Equal(t, http.StatusOK, s.api("POST", "/api/v1/firmware/fetches/"+fetchA+"/cancel", nil, nil))
	var st fleet.UpdateSummary
	poll(t, 30*time.Second, func() bool { st = s.status(idA); return st.State.Terminal() }, "the update ends")
	assert.Equal(t, fleet.UpdateCancelled, st.State)
	assert.Contains(t, st.EndedReason, "cancelled by an operator")

	// The update is cancelled: the fetch goes on, and nothing starts when it ends.
	fetchB := startHeldFetch(t, s, store.URL+"/b.bin", "--sha256", sum)
	idB := strings.TrimSpace(s.mustCLI("update", "create", "--firmware", fetchB, "--select", "device=cx-00002"))
	s.mustCLI("update", "cancel", idB)
	assert.Equal(t, fleet.UpdateCancelled, s.status(idB).State)
	close(release)
	var job httpapi.FetchJob
	poll(t, 30*time.Second, func() bool {
		require.Equal(t, http.StatusOK, s.api("GET", "/api/v1/firmware/fetches/"+fetchB, nil, &job))
		return job.State != httpapi.FetchRunning
	}, "the fetch ends")
	assert.Equal(t, httpapi.FetchDone, job.State)
	st = s.status(idB)
	assert.Equal(t, fleet.UpdateCancelled, st.State)
	assert.Equal(t, 1, st.Counts[fleet.StateCancelled])
}

func TestFetch_UpdateWaitingAtARestartEndsFailed(t *testing.T) {
	img, sum := randomImage(t, 64<<10)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	store := newArtifactStore(t, map[string]http.HandlerFunc{"/app.bin": heldImage(img, release)})
	s := fetchServer(t, "--fetch-read-timeout", "5m")
	startSim(t, s, "--devices", "2", "--id-prefix", "rs-", "--model", "sim-a")
	s.waitOnline(2)
	fetchID := startHeldFetch(t, s, store.URL+"/app.bin", "--sha256", sum)
	id := strings.TrimSpace(s.mustCLI("update", "create", "--firmware", fetchID))
	require.Equal(t, fleet.UpdateWaiting, s.status(id).State)

	s.kill()
	s.restart()
	st := s.status(id)
	assert.Equal(t, fleet.UpdateFailed, st.State)
	assert.Contains(t, st.EndedReason, "stopped while the firmware was fetching")
	assert.Equal(t, 2, st.Counts[fleet.StateCancelled])
	poll(t, 30*time.Second, func() bool {
		return s.sqlite3("SELECT state || ' ' || ended_reason FROM updates WHERE id = '"+id+"'") ==
			"failed the orchestrator stopped while the firmware was fetching: add the firmware again and create a new update"
	}, "the store records the end and its reason")
	// The devices are free for a new update.
	fw, _ := s.firmware(1024, "1.2.0")
	s.mustCLI("update", "create", "--firmware", fw)
}
