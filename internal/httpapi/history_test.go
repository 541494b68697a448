package httpapi

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/broker"
	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/rollout"
	"github.com/flotaio/flota/internal/sqlite"
)

// seedUpdate stores an update of fw over devices, all queued, created at
// created (and finished at finished, if not zero).
func seedUpdate(t *testing.T, st *sqlite.Store, id, fw string, created, finished time.Time, devices ...string) {
	t.Helper()
	u := fleet.Update{ID: id, FirmwareID: fw, Policy: fleet.Policy{}.WithDefaults(), State: fleet.UpdateRunning, CreatedAt: created}
	if !finished.IsZero() {
		u.State, u.FinishedAt = fleet.UpdateCompletedWithFailures, &finished
	}
	var targets []fleet.Progress
	for _, d := range devices {
		targets = append(targets, fleet.Progress{UpdateID: id, DeviceID: d, State: fleet.StateQueued})
	}
	require.NoError(t, st.CreateUpdate(context.Background(), u, targets))
}

// moveDevice stores a device's new state in an update with its event.
func moveDevice(t *testing.T, st *sqlite.Store, seq int64, at time.Time, update, device string, from, to fleet.DeviceState, reason fleet.Reason) {
	t.Helper()
	require.NoError(t, st.SaveProgressEvent(
		fleet.Progress{UpdateID: update, DeviceID: device, State: to, Reason: reason, Attempts: 1, UpdatedAt: at},
		1, fleet.Event{Seq: seq, Time: at, Type: fleet.EventDevice, UpdateID: update, DeviceID: device,
			From: string(from), State: string(to), Reason: reason}))
}

func TestServer_DeviceHistoryHasEveryUpdateOfTheDeviceAndOnlyItsEvents(t *testing.T) {
	s := &Server{}
	base := newTestAPI(t, s)
	ctx := context.Background()
	fw, err := s.Store.AddFirmware(ctx, fleet.Firmware{Version: "2.0"}, strings.NewReader("image"))
	require.NoError(t, err)
	seedDevices(t, s.Store, fleet.Device{ID: "d1", Model: "m", Version: "1.0"}, fleet.Device{ID: "d2"}, fleet.Device{ID: "lonely"})
	t0 := time.Date(2026, 12, 5, 10, 0, 0, 0, time.UTC)
	seedUpdate(t, s.Store, "u-old", fw.ID, t0, t0.Add(time.Hour), "d1", "d2")
	seedUpdate(t, s.Store, "u-new", fw.ID, t0.Add(2*time.Hour), time.Time{}, "d1")
	moveDevice(t, s.Store, 1, t0.Add(time.Minute), "u-old", "d1", fleet.StateQueued, fleet.StateOffered, "")
	moveDevice(t, s.Store, 2, t0.Add(2*time.Minute), "u-old", "d2", fleet.StateQueued, fleet.StateOffered, "")
	moveDevice(t, s.Store, 3, t0.Add(3*time.Minute), "u-old", "d1", fleet.StateOffered, fleet.StateFailed, fleet.ReasonTransferTimeout)
	moveDevice(t, s.Store, 4, t0.Add(121*time.Minute), "u-new", "d1", fleet.StateQueued, fleet.StateOffered, "")
	require.NoError(t, s.Store.Flush(ctx))

	var h DeviceHistory
	resp := call(t, "GET", base+"/api/v1/devices/d1/history", nil, &h)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "d1", h.Device.ID)
	assert.Equal(t, "1.0", h.Device.Version)
	assert.Equal(t, fleet.StateOffered, h.LastState)
	assert.Equal(t, "u-new", h.LastUpdate)
	assert.Equal(t, 2, h.UpdatesTotal)
	require.Len(t, h.Updates, 2)
	assert.Equal(t, "u-new", h.Updates[0].UpdateID, "newest update first")
	assert.Equal(t, fleet.UpdateRunning, h.Updates[0].UpdateState)
	assert.Equal(t, "u-old", h.Updates[1].UpdateID)
	assert.Equal(t, fleet.StateFailed, h.Updates[1].State)
	assert.Equal(t, fleet.ReasonTransferTimeout, h.Updates[1].Reason)
	assert.Equal(t, fw.ID, h.Updates[1].FirmwareID)
	var seqs []int64
	for _, e := range h.Events {
		assert.Equal(t, "d1", e.DeviceID)
		seqs = append(seqs, e.Seq)
	}
	assert.Equal(t, []int64{4, 3, 1}, seqs, "the device's events, newest first")

	call(t, "GET", base+"/api/v1/devices/d1/history?limit=1", nil, &h)
	assert.Len(t, h.Updates, 1)
	assert.Len(t, h.Events, 1)
	assert.Equal(t, 2, h.UpdatesTotal, "the total counts every update")

	var lonely DeviceHistory
	call(t, "GET", base+"/api/v1/devices/lonely/history", nil, &lonely)
	assert.Equal(t, "lonely", lonely.Device.ID)
	assert.Empty(t, lonely.LastUpdate)
	assert.NotNil(t, lonely.Updates)
	assert.NotNil(t, lonely.Events)

	callError(t, "GET", base+"/api/v1/devices/nope/history", nil, http.StatusNotFound, "device_not_found")
	callError(t, "GET", base+"/api/v1/devices/d1/history?limit=0", nil, http.StatusBadRequest, CodeInvalidInput)
}

func TestServer_FailuresCountDevicesByStateAndReason(t *testing.T) {
	s := &Server{}
	base := newTestAPI(t, s)
	ctx := context.Background()
	fw, err := s.Store.AddFirmware(ctx, fleet.Firmware{Version: "2.0"}, strings.NewReader("image"))
	require.NoError(t, err)
	ids := []string{"a1", "a2", "a3", "b1", "c1", "ok"}
	var devs []fleet.Device
	for _, id := range ids {
		devs = append(devs, fleet.Device{ID: id})
	}
	seedDevices(t, s.Store, devs...)
	t0 := time.Now().UTC().Add(-time.Hour)
	seedUpdate(t, s.Store, "u-1", fw.ID, t0, time.Time{}, ids...)
	for i, id := range []string{"a3", "a1", "a2"} {
		moveDevice(t, s.Store, int64(i+1), t0, "u-1", id, fleet.StateDownloading, fleet.StateFailed, fleet.ReasonTransferTimeout)
	}
	moveDevice(t, s.Store, 4, t0, "u-1", "b1", fleet.StateOffered, fleet.StateRejected, fleet.ReasonNoSpace)
	moveDevice(t, s.Store, 5, t0, "u-1", "c1", fleet.StateQueued, fleet.StateOffline, fleet.ReasonNotSeen)
	moveDevice(t, s.Store, 6, t0, "u-1", "ok", fleet.StateRebooting, fleet.StateSucceeded, "")
	require.NoError(t, s.Store.Flush(ctx))

	var f FailureSummary
	resp := call(t, "GET", base+"/api/v1/updates/u-1/failures", nil, &f)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "u-1", f.Update)
	assert.Equal(t, 5, f.Total)
	assert.Equal(t, []sqlite.FailureGroup{
		{State: fleet.StateFailed, Reason: fleet.ReasonTransferTimeout, Count: 3, Devices: []string{"a1", "a2", "a3"}},
		{State: fleet.StateOffline, Reason: fleet.ReasonNotSeen, Count: 1, Devices: []string{"c1"}},
		{State: fleet.StateRejected, Reason: fleet.ReasonNoSpace, Count: 1, Devices: []string{"b1"}},
	}, f.Groups)

	call(t, "GET", base+"/api/v1/updates/u-1/failures?sample=2", nil, &f)
	require.NotEmpty(t, f.Groups)
	assert.Equal(t, 3, f.Groups[0].Count, "the count is of every device")
	assert.Equal(t, []string{"a1", "a2"}, f.Groups[0].Devices, "the sample is bounded")

	for _, q := range []string{"sample=0", "sample=x", fmt.Sprintf("sample=%d", MaxFailureSample+1)} {
		callError(t, "GET", base+"/api/v1/updates/u-1/failures?"+q, nil, http.StatusBadRequest, CodeInvalidInput)
	}
	callError(t, "GET", base+"/api/v1/updates/u-nope/failures", nil, http.StatusNotFound, "update_not_found")
}

func TestServer_TimelineReplaysTheEventLogOfAFinishedUpdate(t *testing.T) {
	s := &Server{}
	base := newTestAPI(t, s)
	ctx := context.Background()
	fw, err := s.Store.AddFirmware(ctx, fleet.Firmware{Version: "2.0"}, strings.NewReader("image"))
	require.NoError(t, err)
	seedDevices(t, s.Store, fleet.Device{ID: "d1"}, fleet.Device{ID: "d2"}, fleet.Device{ID: "d3"}, fleet.Device{ID: "d4"})
	t0 := time.Date(2026, 12, 5, 10, 0, 0, 0, time.UTC)
	seedUpdate(t, s.Store, "u-1", fw.ID, t0, t0.Add(10*time.Minute), "d1", "d2", "d3", "d4")
	// d4 was skipped when the update was created: it has no event.
	require.NoError(t, s.Store.SaveProgress(fleet.Progress{UpdateID: "u-1", DeviceID: "d4", State: fleet.StateSkipped,
		Reason: fleet.ReasonAlreadyCurrent, UpdatedAt: t0}, 0))
	require.NoError(t, s.Store.AppendEvent(fleet.Event{Seq: 1, Time: t0, Type: fleet.EventUpdate, UpdateID: "u-1", State: "running"}))
	moveDevice(t, s.Store, 2, t0.Add(1*time.Minute), "u-1", "d1", fleet.StateQueued, fleet.StateOffered, "")
	moveDevice(t, s.Store, 3, t0.Add(3*time.Minute), "u-1", "d1", fleet.StateOffered, fleet.StateSucceeded, "")
	moveDevice(t, s.Store, 4, t0.Add(5*time.Minute), "u-1", "d2", fleet.StateQueued, fleet.StateOffered, "")
	moveDevice(t, s.Store, 5, t0.Add(7*time.Minute), "u-1", "d2", fleet.StateOffered, fleet.StateFailed, fleet.ReasonBadDigest)
	moveDevice(t, s.Store, 6, t0.Add(9*time.Minute), "u-1", "d3", fleet.StateQueued, fleet.StateCancelled, fleet.ReasonOperator)
	require.NoError(t, s.Store.Flush(ctx))

	var tl Timeline
	resp := call(t, "GET", base+"/api/v1/updates/u-1/timeline?points=100", nil, &tl)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.GreaterOrEqual(t, len(tl.Points), 3)
	first, last := tl.Points[0], tl.Points[len(tl.Points)-1]
	assert.True(t, first.Time.Equal(t0), "starts when the update was created: %v", first.Time)
	assert.Equal(t, map[fleet.DeviceState]int{fleet.StateQueued: 3, fleet.StateSkipped: 1}, first.Counts)
	assert.True(t, last.Time.Equal(t0.Add(10*time.Minute)), "ends when it finished: %v", last.Time)
	assert.Equal(t, map[fleet.DeviceState]int{fleet.StateSucceeded: 1, fleet.StateFailed: 1, fleet.StateCancelled: 1,
		fleet.StateSkipped: 1}, last.Counts)
	for _, p := range tl.Points {
		n := 0
		for _, c := range p.Counts {
			n += c
		}
		assert.Equal(t, 4, n, "every point counts every device: %v", p)
	}
	// The point taken before d2's failure holds d1 succeeded, d2 offered.
	var mid *TimelinePoint
	for i := range tl.Points {
		if tl.Points[i].Time.Equal(t0.Add(7 * time.Minute)) {
			mid = &tl.Points[i]
		}
	}
	require.NotNil(t, mid, "a point at each event when points allow: %v", tl.Points)
	assert.Equal(t, map[fleet.DeviceState]int{fleet.StateSucceeded: 1, fleet.StateOffered: 1, fleet.StateQueued: 1,
		fleet.StateSkipped: 1}, mid.Counts)

	var seqs []int64
	for _, e := range tl.Recent {
		seqs = append(seqs, e.Seq)
	}
	assert.Equal(t, []int64{6, 5, 4, 3, 2, 1}, seqs, "the last events, newest first")

	assert.False(t, tl.Truncated, "the whole log is there")

	call(t, "GET", base+"/api/v1/updates/u-1/timeline?points=2", nil, &tl)
	assert.LessOrEqual(t, len(tl.Points), 3, "points bound the samples (plus the final one)")

	// Retention deletes the oldest events, the update's creation first.
	n, err := s.Store.PruneEvents(ctx, sqlite.Retention{MaxRows: 3}, time.Now())
	require.NoError(t, err)
	require.Equal(t, int64(3), n)
	var cut Timeline
	call(t, "GET", base+"/api/v1/updates/u-1/timeline", nil, &cut)
	assert.True(t, cut.Truncated, "the page says the chart misses the start")
	assert.Equal(t, int64(3), cut.PrunedThrough)
	assert.Len(t, cut.Recent, 3)

	for _, q := range []string{"points=0", "points=x", fmt.Sprintf("points=%d", MaxTimelinePoints+1)} {
		callError(t, "GET", base+"/api/v1/updates/u-1/timeline?"+q, nil, http.StatusBadRequest, CodeInvalidInput)
	}
	callError(t, "GET", base+"/api/v1/updates/u-nope/timeline", nil, http.StatusNotFound, "update_not_found")
}

func TestServer_DevicesSearchByIDPrefixAndTag(t *testing.T) {
	s := &Server{}
	base := newTestAPI(t, s)
	seedDevices(t, s.Store,
		fleet.Device{ID: "lyon-1", Tags: map[string]string{"site": "lyon"}},
		fleet.Device{ID: "lyon-2", Tags: map[string]string{"site": "lyon", "ring": "beta"}},
		fleet.Device{ID: "lyonnais", Tags: map[string]string{"site": "paris"}},
		fleet.Device{ID: "paris-1", Tags: map[string]string{"site": "paris"}},
		fleet.Device{ID: "ly"})
	ids := func(q string) ([]string, int) {
		var l DeviceList
		resp := call(t, "GET", base+"/api/v1/devices?"+q, nil, &l)
		require.Equal(t, http.StatusOK, resp.StatusCode, q)
		var out []string
		for _, d := range l.Devices {
			out = append(out, d.ID)
		}
		return out, l.Total
	}
	got, total := ids("prefix=lyon")
	assert.Equal(t, []string{"lyon-1", "lyon-2", "lyonnais"}, got)
	assert.Equal(t, 3, total)
	got, _ = ids("prefix=lyon-")
	assert.Equal(t, []string{"lyon-1", "lyon-2"}, got)
	got, total = ids("tag=site%3Dlyon")
	assert.Equal(t, []string{"lyon-1", "lyon-2"}, got)
	assert.Equal(t, 2, total)
	got, _ = ids("tag=site%3Dparis&prefix=lyon")
	assert.Equal(t, []string{"lyonnais"}, got)
	got, _ = ids("tag=ring%3Dbeta")
	assert.Equal(t, []string{"lyon-2"}, got)
	got, _ = ids("prefix=zz")
	assert.Empty(t, got)
	callError(t, "GET", base+"/api/v1/devices?tag=site", nil, http.StatusBadRequest, CodeInvalidInput)
}

// newTestEngine opens a real broker on 127.0.0.1:0 and an engine over it
// and st, both closed at the end of the test.
func newTestEngine(tb testing.TB, st *sqlite.Store, log *slog.Logger) (*broker.Broker, *rollout.Engine) {
	tb.Helper()
	br := broker.New(broker.Options{Addr: "127.0.0.1:0", Logger: log})
	require.NoError(tb, br.Open())
	tb.Cleanup(func() { br.Close() })
	eng := rollout.New(st, br, log)
	require.NoError(tb, eng.Open(context.Background()))
	tb.Cleanup(func() { eng.Close() })
	return br, eng
}

// engineAPI serves an API with a real engine over a real broker.
func engineAPI(t *testing.T) (*Server, string) {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	st := newTestStore(t)
	_, eng := newTestEngine(t, st, log)
	s := &Server{Store: st, Engine: eng, Logger: log}
	return s, newTestAPI(t, s)
}

func TestServer_UpdateRecordsTheTokenThatCreatedIt(t *testing.T) {
	s, base := engineAPI(t)
	ctx := context.Background()
	seedDevices(t, s.Store, fleet.Device{ID: "d1", Model: "m1", Version: "1.0"})
	fw, err := s.Store.AddFirmware(ctx, fleet.Firmware{Version: "2.0", Model: "m1"}, strings.NewReader("image"))
	require.NoError(t, err)
	// A body cannot claim another creator: the field is refused.
	body := fmt.Sprintf(`{"firmware":%q,"selector":{"model":"m1"},"created_by":"mallory"}`, fw.ID)
	resp := call(t, "POST", base+"/api/v1/updates", strings.NewReader(body), nil)
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)
	body = fmt.Sprintf(`{"firmware":%q,"selector":{"model":"m1"}}`, fw.ID)
	var u fleet.UpdateSummary
	resp = call(t, "POST", base+"/api/v1/updates", strings.NewReader(body), &u)
	require.Equal(t, http.StatusCreated, resp.StatusCode)
	assert.Equal(t, "ops", u.CreatedBy, "the admin token's name")

	var sum fleet.UpdateSummary
	call(t, "GET", base+"/api/v1/updates/"+u.ID, nil, &sum)
	assert.Equal(t, "ops", sum.CreatedBy)
	stored, err := s.Store.Update(ctx, u.ID)
	require.NoError(t, err)
	assert.Equal(t, "ops", stored.CreatedBy, "kept in the store")
}

func TestServer_UpdateListPagesAndSearches(t *testing.T) {
	s, base := engineAPI(t)
	ctx := context.Background()
	fwA, err := s.Store.AddFirmware(ctx, fleet.Firmware{Name: "sensor", Version: "2.0"}, strings.NewReader("image a"))
	require.NoError(t, err)
	fwB, err := s.Store.AddFirmware(ctx, fleet.Firmware{Name: "gateway", Version: "7.1"}, strings.NewReader("image b"))
	require.NoError(t, err)
	seedDevices(t, s.Store, fleet.Device{ID: "d1"})
	t0 := time.Now().UTC().Add(-time.Hour)
	for i := range 5 {
		fw := fwA.ID
		if i%2 == 1 {
			fw = fwB.ID
		}
		seedUpdate(t, s.Store, fmt.Sprintf("u-%d", i), fw, t0.Add(time.Duration(i)*time.Minute), t0.Add(time.Duration(i)*time.Minute+time.Second), "d1")
	}
	list := func(q string) ([]string, int) {
		var l UpdateList
		resp := call(t, "GET", base+"/api/v1/updates?"+q, nil, &l)
		require.Equal(t, http.StatusOK, resp.StatusCode, q)
		var out []string
		for _, u := range l.Updates {
			out = append(out, u.ID)
		}
		return out, l.Total
	}
	got, total := list("limit=2")
	assert.Equal(t, []string{"u-4", "u-3"}, got, "newest first")
	assert.Equal(t, 5, total)
	got, _ = list("limit=2&offset=4")
	assert.Equal(t, []string{"u-0"}, got)
	got, total = list("q=gateway")
	assert.Equal(t, []string{"u-3", "u-1"}, got, "by firmware name")
	assert.Equal(t, 2, total)
	got, _ = list("q=7.")
	assert.Equal(t, []string{"u-3", "u-1"}, got, "by firmware version")
	got, _ = list("q=" + fwA.ID)
	assert.Equal(t, []string{"u-4", "u-2", "u-0"}, got, "by firmware ID")
	got, _ = list("q=u-2")
	assert.Equal(t, []string{"u-2"}, got, "by update ID")
	got, total = list("q=%25")
	assert.Empty(t, got, "LIKE wildcards are literal")
	assert.Zero(t, total)
	callError(t, "GET", base+"/api/v1/updates?limit=0", nil, http.StatusBadRequest, CodeInvalidInput)
}

// The dashboard reads the API's fields by name: a field it reads must be
// in the answers.
func TestServer_HistoryAnswersCarryTheFieldsTheDashboardReads(t *testing.T) {
	s := &Server{}
	base := newTestAPI(t, s)
	ctx := context.Background()
	fw, err := s.Store.AddFirmware(ctx, fleet.Firmware{Version: "2.0"}, strings.NewReader("image"))
	require.NoError(t, err)
	seedDevices(t, s.Store, fleet.Device{ID: "d1"})
	seedUpdate(t, s.Store, "u-1", fw.ID, time.Now().UTC(), time.Time{}, "d1")
	moveDevice(t, s.Store, 1, time.Now().UTC(), "u-1", "d1", fleet.StateQueued, fleet.StateFailed, fleet.ReasonBadDigest)
	require.NoError(t, s.Store.Flush(ctx))
	raw := func(path string) map[string]any {
		var m map[string]any
		call(t, "GET", base+path, nil, &m)
		return m
	}
	h := raw("/api/v1/devices/d1/history")
	for _, k := range []string{"device", "last_state", "last_update", "updates", "updates_total", "events"} {
		assert.Contains(t, h, k)
	}
	up := h["updates"].([]any)[0].(map[string]any)
	for _, k := range []string{"update", "state", "update_state", "firmware", "attempt", "reason", "updated_at"} {
		assert.Contains(t, up, k)
	}
	b, err := json.Marshal(raw("/api/v1/updates/u-1/failures"))
	require.NoError(t, err)
	assert.JSONEq(t, `{"update":"u-1","total":1,"groups":[{"state":"failed","reason":"bad_digest","count":1,"devices":["d1"]}]}`, string(b))
	tl := raw("/api/v1/updates/u-1/timeline")
	for _, k := range []string{"update", "points", "recent", "pruned_through"} {
		assert.Contains(t, tl, k)
	}
}

func TestServer_TimelineReplaysBeyondTheLimitAreRefusedAndCounted(t *testing.T) {
	s := &Server{MaxTimelineReplays: 1}
	base := newTestAPI(t, s)
	ctx := context.Background()
	fw, err := s.Store.AddFirmware(ctx, fleet.Firmware{Version: "2.0"}, strings.NewReader("image"))
	require.NoError(t, err)
	seedDevices(t, s.Store, fleet.Device{ID: "d1"})
	seedUpdate(t, s.Store, "u-1", fw.ID, time.Now().UTC(), time.Time{}, "d1")

	require.True(t, s.replays.acquire(), "a replay in progress holds the only slot")
	resp := callError(t, "GET", base+"/api/v1/updates/u-1/timeline", nil, http.StatusServiceUnavailable, CodeUnavailable)
	assert.Contains(t, resp.Message, "try again")
	var st DeviceList
	call(t, "GET", base+"/api/v1/devices", nil, &st)
	assert.Equal(t, 1, st.Total, "other routes answer meanwhile")
	s.replays.release()

	var tl Timeline
	r := call(t, "GET", base+"/api/v1/updates/u-1/timeline", nil, &tl)
	assert.Equal(t, http.StatusOK, r.StatusCode, "the slot is free again")
	assert.Len(t, s.replays.slots, 0, "a finished replay gives its slot back")

	assert.Contains(t, scrape(t, base), "flota_http_timeline_refused_total 1\n")
}

func TestServer_HistoryReadsIncludeWritesStillQueued(t *testing.T) {
	// Queued writes would wait an hour for their commit: only the
	// history routes' wait for the queue makes them visible.
	st := sqlite.New(t.TempDir())
	st.Logger = slog.New(slog.DiscardHandler)
	st.FlushInterval = time.Hour
	require.NoError(t, st.Open())
	t.Cleanup(func() { assert.NoError(t, st.Close()) })
	s := &Server{Store: st}
	base := newTestAPI(t, s)
	ctx := context.Background()
	fw, err := st.AddFirmware(ctx, fleet.Firmware{Version: "2.0"}, strings.NewReader("image"))
	require.NoError(t, err)
	seedDevices(t, st, fleet.Device{ID: "d1"})
	t0 := time.Now().UTC().Add(-time.Minute)
	seedUpdate(t, st, "u-1", fw.ID, t0, time.Time{}, "d1")
	moveDevice(t, st, 1, t0.Add(time.Second), "u-1", "d1", fleet.StateQueued, fleet.StateOffered, "")

	var h DeviceHistory
	resp := call(t, "GET", base+"/api/v1/devices/d1/history", nil, &h)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Len(t, h.Events, 1, "the event queued a moment ago")
	assert.Equal(t, fleet.StateOffered, h.LastState)
}
