package httpapi

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
)

// BenchmarkServer_Timeline10k measures GET /api/v1/updates/{id}/timeline
// of an update of 10,000 devices that each went through ten states: the
// replay of 100,000 events.
func BenchmarkServer_Timeline10k(b *testing.B) {
	const devices = 10_000
	walk := []fleet.DeviceState{fleet.StateOffered, fleet.StateAccepted, fleet.StateDownloading, fleet.StateDownloaded,
		fleet.StateVerified, fleet.StateInstalling, fleet.StateRebooting, fleet.StateSucceeded}
	s := &Server{}
	base := newTestAPI(b, s)
	ctx := context.Background()
	fw, err := s.Store.AddFirmware(ctx, fleet.Firmware{Version: "2.0"}, strings.NewReader("image"))
	require.NoError(b, err)
	ids := make([]string, devices)
	targets := make([]fleet.Progress, devices)
	for i := range ids {
		ids[i] = fmt.Sprintf("d%05d", i)
		require.NoError(b, s.Store.SaveDevice(fleet.Device{ID: ids[i]}))
		targets[i] = fleet.Progress{UpdateID: "u-1", DeviceID: ids[i], State: fleet.StateQueued}
	}
	t0 := time.Now().UTC().Add(-time.Hour)
	require.NoError(b, s.Store.CreateUpdate(ctx, fleet.Update{ID: "u-1", FirmwareID: fw.ID, State: fleet.UpdateRunning, CreatedAt: t0}, targets))
	var seq int64
	for i, id := range ids {
		from := fleet.StateQueued
		for j, st := range walk {
			seq++
			at := t0.Add(time.Duration(i*len(walk)+j) * 10 * time.Millisecond)
			require.NoError(b, s.Store.SaveProgressEvent(fleet.Progress{UpdateID: "u-1", DeviceID: id, State: st, UpdatedAt: at}, 1,
				fleet.Event{Seq: seq, Time: at, Type: fleet.EventDevice, UpdateID: "u-1", DeviceID: id, From: string(from), State: string(st)}))
			from = st
		}
	}
	require.NoError(b, s.Store.Flush(ctx))
	req, err := http.NewRequest("GET", base+"/api/v1/updates/u-1/timeline", nil)
	require.NoError(b, err)
	req.Header.Set("Authorization", "Bearer "+testAdminToken)
	b.ResetTimer()
	for b.Loop() {
		resp, err := http.DefaultClient.Do(req)
		require.NoError(b, err)
		require.Equal(b, http.StatusOK, resp.StatusCode)
		resp.Body.Close()
	}
	b.ReportMetric(float64(seq), "events")
}
