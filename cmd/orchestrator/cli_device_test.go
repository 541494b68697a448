package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/httpapi"
)

func TestCLI_DeviceShowPrintsTheDeviceItsUpdatesAndEvents(t *testing.T) {
	st, server := newAPI(t)
	ctx := context.Background()
	require.NoError(t, st.SaveDevice(fleet.Device{ID: "d1", Model: "m1", Version: "1.0", Online: true,
		Tags: map[string]string{"site": "lyon"}}))
	require.NoError(t, st.SaveDevice(fleet.Device{ID: "d2", Model: "m1"}))
	fw, err := st.AddFirmware(ctx, fleet.Firmware{Version: "2.0"}, strings.NewReader("image"))
	require.NoError(t, err)
	t0 := time.Date(2026, 12, 5, 10, 0, 0, 0, time.UTC)
	require.NoError(t, st.CreateUpdate(ctx, fleet.Update{ID: "u-1", FirmwareID: fw.ID, State: fleet.UpdateRunning, CreatedAt: t0},
		[]fleet.Progress{{UpdateID: "u-1", DeviceID: "d1", State: fleet.StateQueued}, {UpdateID: "u-1", DeviceID: "d2", State: fleet.StateQueued}}))
	require.NoError(t, st.SaveProgressEvent(fleet.Progress{UpdateID: "u-1", DeviceID: "d1", State: fleet.StateFailed,
		Reason: fleet.ReasonBadDigest, Attempts: 2, UpdatedAt: t0},
		1, fleet.Event{Seq: 1, Time: t0, Type: fleet.EventDevice, UpdateID: "u-1", DeviceID: "d1", From: "downloading",
			State: "failed", Reason: fleet.ReasonBadDigest, Attempt: 2}))
	require.NoError(t, st.AppendEvent(fleet.Event{Seq: 2, Time: t0, Type: fleet.EventDevice, UpdateID: "u-1", DeviceID: "d2", State: "offered"}))
	require.NoError(t, st.Flush(ctx))

	r := runCLI(t, server, "device", "show", "d1")
	require.Equal(t, exitOK, r.code, r.stderr)
	for _, want := range []string{"d1", "m1", "1.0", "site=lyon", "failed in u-1", fw.ID, "bad_digest", "downloading",
		t0.Local().Format("2006-01-02 15:04:05 -07:00")} {
		assert.Contains(t, r.stdout, want)
	}
	assert.NotContains(t, r.stdout, "offered", "another device's event")

	r = runCLI(t, server, "device", "show", "d1", "--json")
	require.Equal(t, exitOK, r.code, r.stderr)
	var h httpapi.DeviceHistory
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &h))
	assert.Equal(t, "d1", h.Device.ID)
	require.Len(t, h.Updates, 1)
	assert.Equal(t, fleet.StateFailed, h.Updates[0].State)
	require.Len(t, h.Events, 1)

	r = runCLI(t, server, "device", "show", "nope")
	assert.Equal(t, exitFail, r.code)
	assert.Contains(t, r.stderr, "device not found")
	r = runCLI(t, server, "device", "show")
	assert.Equal(t, exitUsage, r.code)
}
