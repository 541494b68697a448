package main

import (
	"context"
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
