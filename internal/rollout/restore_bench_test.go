package rollout_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/broker"
	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/rollout"
	"github.com/flotaio/flota/internal/sqlite"
)

// BenchmarkEngine_Restore10k measures an engine's start-up with one running
// update whose 10,000 devices were all mid-transfer: what an orchestrator
// restarted after a crash spends before it serves again.
func BenchmarkEngine_Restore10k(b *testing.B) {
	const devices = 10_000
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	store := sqlite.New(b.TempDir())
	store.Logger = log
	require.NoError(b, store.Open())
	defer store.Close()
	ctx := context.Background()
	fw, err := store.AddFirmware(ctx, fleet.Firmware{Name: "app", Version: "2.0.0"}, bytes.NewReader(make([]byte, 1<<20)))
	require.NoError(b, err)
	now := time.Now().UTC()
	u := fleet.Update{ID: "u-restore", FirmwareID: fw.ID, Policy: fleet.Policy{}.WithDefaults(), State: fleet.UpdateRunning, CreatedAt: now}
	targets := make([]fleet.Progress, devices)
	for i := range targets {
		targets[i] = fleet.Progress{UpdateID: u.ID, DeviceID: fmt.Sprintf("d%05d", i), State: fleet.StateDownloading,
			Offset: int64(i%64) * 16384, Attempts: 1, UpdatedAt: now}
	}
	require.NoError(b, store.CreateUpdate(ctx, u, targets))

	br := broker.New(broker.Options{Addr: "127.0.0.1:0", Logger: log})
	require.NoError(b, br.Open())
	defer br.Close()

	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		e := rollout.New(store, br, log)
		require.NoError(b, e.Open(ctx))
		b.StopTimer()
		s, err := e.Summary(ctx, u.ID)
		require.NoError(b, err)
		require.Equal(b, devices, s.Counts[fleet.StateDownloading])
		require.NoError(b, e.Close())
		b.StartTimer()
	}
	b.ReportMetric(float64(devices), "devices/op")
}
