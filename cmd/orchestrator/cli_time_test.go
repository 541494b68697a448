package main

import (
	"context"
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
)

// tableTimeRe is a time as tables print it: local date, time to the
// second and the UTC offset.
var tableTimeRe = regexp.MustCompile(`\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d\d:\d\d`)

func TestTableTime_DateTimeAndOffsetOrNever(t *testing.T) {
	at := time.Date(2026, 12, 5, 16, 3, 6, 900, time.UTC)
	s := tableTime(at)
	require.Regexp(t, "^"+tableTimeRe.String()+"$", s)
	back, err := time.Parse(fleet.TextTimeLayout, s)
	require.NoError(t, err)
	assert.True(t, back.Equal(at.Truncate(time.Second)), "%s names the same instant", s)
	assert.Equal(t, "never", tableTime(time.Time{}))
}

func TestCLI_EveryTableTimeHasDateAndOffset(t *testing.T) {
	st, server := newAPI(t)
	ctx := context.Background()
	require.NoError(t, st.SaveDevice(fleet.Device{ID: "d1", Model: "m1", Version: "1.0.0", Online: true}))
	fw, err := st.AddFirmware(ctx, fleet.Firmware{Version: "2.0.0"}, strings.NewReader("image"))
	require.NoError(t, err)
	u := fleet.Update{ID: "u-000000000001", FirmwareID: fw.ID, Policy: fleet.Policy{}.WithDefaults(), State: fleet.UpdateRunning}
	require.NoError(t, st.CreateUpdate(ctx, u, []fleet.Progress{{UpdateID: u.ID, DeviceID: "d1", State: fleet.StateQueued}}))
	require.NoError(t, st.AppendEvent(fleet.Event{Seq: 1, Time: time.Now(), Type: fleet.EventDevice,
		UpdateID: u.ID, DeviceID: "d1", From: "queued", State: "offered"}))
	require.NoError(t, st.Flush(ctx))
	for _, args := range [][]string{
		{"device", "list"}, {"firmware", "list"}, {"update", "devices", u.ID}, {"update", "events", u.ID},
	} {
		r := runCLI(t, server, args...)
		require.Equal(t, exitOK, r.code, r.stderr)
		lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
		require.Len(t, lines, 2, r.stdout)
		assert.Regexp(t, tableTimeRe, lines[1], "%v: %s", args, r.stdout)
	}
}

func TestCLI_ServerWithoutSchemeIsHTTP(t *testing.T) {
	_, server := newAPI(t)
	r := runCLI(t, strings.TrimPrefix(server, "http://"), "firmware", "list")
	assert.Equal(t, exitOK, r.code, r.stderr)
	r = runCLI(t, "ftp://"+strings.TrimPrefix(server, "http://"), "firmware", "list")
	assert.Equal(t, exitFail, r.code)
	assert.Contains(t, r.stderr, `is not an orchestrator URL such as http://127.0.0.1:8080`)
}

func TestCLI_ListFilters(t *testing.T) {
	st, server := newAPI(t)
	ctx := context.Background()
	require.NoError(t, st.SaveDevice(fleet.Device{ID: "d1", Model: "m1", Version: "1.0.0", Tags: map[string]string{"site": "lyon", "ring": "beta"}}))
	require.NoError(t, st.SaveDevice(fleet.Device{ID: "d2", Model: "m1", Version: "1.0.0", Tags: map[string]string{"site": "oslo"}}))
	require.NoError(t, st.RegisterDevices(ctx, []string{"d3"}, "m1", map[string]string{"site": "lyon"}))
	fw, err := st.AddFirmware(ctx, fleet.Firmware{Version: "2.0.0"}, strings.NewReader("image"))
	require.NoError(t, err)
	u := fleet.Update{ID: "u-000000000001", FirmwareID: fw.ID, Policy: fleet.Policy{}.WithDefaults(), State: fleet.UpdateRunning}
	require.NoError(t, st.CreateUpdate(ctx, u, []fleet.Progress{{UpdateID: u.ID, DeviceID: "d1", State: fleet.StateQueued}, {UpdateID: u.ID, DeviceID: "d2", State: fleet.StateQueued}}))
	for i, e := range []fleet.Event{
		{Type: fleet.EventUpdate, State: "running"},
		{Type: fleet.EventDevice, DeviceID: "d1", From: "queued", State: "offered"},
		{Type: fleet.EventDevice, DeviceID: "d2", From: "queued", State: "offered"},
		{Type: fleet.EventIllegal, DeviceID: "d2", From: "offered", State: "rebooting"},
	} {
		e.Seq, e.Time, e.UpdateID = int64(i+1), time.Now(), u.ID
		require.NoError(t, st.AppendEvent(e))
	}
	require.NoError(t, st.Flush(ctx))

	r := runCLI(t, server, "device", "list", "--tag", "site=lyon")
	require.Equal(t, exitOK, r.code, r.stderr)
	assert.Contains(t, r.stdout, "d1")
	assert.NotContains(t, r.stdout, "d2")
	assert.Regexp(t, `d3\s+m1\s+false\s+never\s+site=lyon`, r.stdout, "registered, never seen")
	r = runCLI(t, server, "device", "list", "--tag", "site=lyon", "--tag", "ring=beta")
	assert.Equal(t, 2, strings.Count(r.stdout, "\n"), r.stdout)

	r = runCLI(t, server, "update", "events", u.ID, "--device", "d2")
	require.Equal(t, exitOK, r.code, r.stderr)
	assert.Equal(t, 3, strings.Count(r.stdout, "\n"), r.stdout)
	r = runCLI(t, server, "update", "events", u.ID, "--device", "d2", "--type", "illegal_transition", "--json")
	var evs []fleet.Event
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &evs))
	require.Len(t, evs, 1)
	assert.Equal(t, int64(4), evs[0].Seq)
}
