package httpapi

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/sqlite"
)

func TestServer_PagesByKey(t *testing.T) {
	s := &Server{}
	base := newTestAPI(t, s)
	ctx := context.Background()
	var targets []fleet.Progress
	for i := range 7 {
		id := fmt.Sprintf("d%d", i)
		seedDevices(t, s.Store, fleet.Device{ID: id, Model: "m1"})
		targets = append(targets, fleet.Progress{DeviceID: id, State: fleet.StateQueued})
	}
	fw, err := s.Store.AddFirmware(ctx, fleet.Firmware{Version: "2.0"}, strings.NewReader("image"))
	require.NoError(t, err)
	u := fleet.Update{ID: "upd-1", FirmwareID: fw.ID, Policy: fleet.Policy{}.WithDefaults(), State: fleet.UpdateRunning}
	require.NoError(t, s.Store.CreateUpdate(ctx, u, targets))

	var dl DeviceList
	call(t, "GET", base+"/api/v1/devices?model=m1&limit=3&after=d2", nil, &dl)
	assert.Equal(t, 7, dl.Total)
	require.Len(t, dl.Devices, 3)
	assert.Equal(t, []string{"d3", "d4", "d5"}, []string{dl.Devices[0].ID, dl.Devices[1].ID, dl.Devices[2].ID})

	var pl ProgressList
	call(t, "GET", base+"/api/v1/updates/upd-1/devices?limit=3&after=d5", nil, &pl)
	assert.Equal(t, 7, pl.Total)
	require.Len(t, pl.Devices, 1)
	assert.Equal(t, "d6", pl.Devices[0].DeviceID)
}

func TestServer_EventsReportPrunedRange(t *testing.T) {
	s := &Server{}
	base := newTestAPI(t, s)
	ctx := context.Background()
	fw, err := s.Store.AddFirmware(ctx, fleet.Firmware{Version: "2.0"}, strings.NewReader("image"))
	require.NoError(t, err)
	u := fleet.Update{ID: "upd-1", FirmwareID: fw.ID, Policy: fleet.Policy{}.WithDefaults(), State: fleet.UpdateRunning}
	seedDevices(t, s.Store, fleet.Device{ID: "d1"})
	require.NoError(t, s.Store.CreateUpdate(ctx, u, []fleet.Progress{{DeviceID: "d1", State: fleet.StateQueued}}))
	for seq := int64(1); seq <= 10; seq++ {
		require.NoError(t, s.Store.AppendEvent(fleet.Event{Seq: seq, Time: time.Now(), Type: fleet.EventDevice,
			UpdateID: u.ID, DeviceID: "d1", State: string(fleet.StateOffered)}))
	}
	require.NoError(t, s.Store.Flush(ctx))

	var l EventList
	call(t, "GET", base+"/api/v1/updates/upd-1/events?after=2", nil, &l)
	assert.Len(t, l.Events, 8)
	assert.Zero(t, l.PrunedThrough, "nothing pruned yet")

	_, err = s.Store.PruneEvents(ctx, sqlite.Retention{MaxRows: 4}, time.Now())
	require.NoError(t, err)
	call(t, "GET", base+"/api/v1/updates/upd-1/events?after=2", nil, &l)
	require.Len(t, l.Events, 4, "what remains")
	assert.EqualValues(t, 7, l.Events[0].Seq)
	assert.EqualValues(t, 6, l.PrunedThrough, "events 3..6 after ?after=2 were pruned")
	assert.EqualValues(t, 10, l.Next)
}
