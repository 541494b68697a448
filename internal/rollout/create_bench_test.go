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

// BenchmarkEngine_CreateUpdate100k measures POST /api/v1/updates over a
// fleet of 100,000 registered, offline devices: selection, skip reasons, the
// one-transaction insert of every progress row and the engine's bookkeeping.
// Each update is cancelled (untimed) so that the next one finds the devices
// free; the store has written the cancellations before the next one.
func BenchmarkEngine_CreateUpdate100k(b *testing.B) {
	const devices = 100_000
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	store := sqlite.New(b.TempDir())
	store.Logger = log
	require.NoError(b, store.Open())
	defer store.Close()
	ctx := context.Background()
	versions := []string{"1.0.0", "1.1.0", "1.2.3", "2.0.0"}
	now := time.Now()
	for i := range devices {
		require.NoError(b, store.SaveDevice(fleet.Device{ID: fmt.Sprintf("dev-%06d", i), Model: "sim-a",
			Version: versions[i%len(versions)], Tags: map[string]string{"site": fmt.Sprintf("site-%02d", i%50)}, LastSeen: now}))
	}
	require.NoError(b, store.Flush(ctx))
	fw, err := store.AddFirmware(ctx, fleet.Firmware{Name: "app", Version: "2.0.0", Model: "sim-a"}, bytes.NewReader(make([]byte, 16<<10)))
	require.NoError(b, err)

	br := broker.New(broker.Options{Addr: "127.0.0.1:0", Logger: log})
	require.NoError(b, br.Open())
	defer br.Close()
	e := rollout.New(store, br, log)
	require.NoError(b, e.Open(ctx))
	defer e.Close()

	for _, c := range []struct {
		name string
		sel  fleet.Selector
		want int // queued devices: all but those already on 2.0.0
	}{
		{"all", fleet.Selector{}, devices * 3 / 4},
		{"version_range", fleet.Selector{Model: "sim-a", Version: "<1.2.0"}, devices / 2},
	} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				u, err := e.CreateUpdate(ctx, rollout.CreateRequest{FirmwareID: fw.ID, Selector: c.sel})
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				s, err := e.Summary(ctx, u.ID)
				require.NoError(b, err)
				require.Equal(b, c.want, s.Counts[fleet.StateQueued])
				require.NoError(b, e.Cancel(ctx, u.ID))
				require.Eventually(b, func() bool {
					s, err := e.Summary(ctx, u.ID)
					return err == nil && s.Counts[fleet.StateCancelled] == c.want
				}, time.Minute, 10*time.Millisecond)
				require.NoError(b, store.Flush(ctx)) // the cancellations are written before the next create
				b.StartTimer()
			}
			b.ReportMetric(float64(c.want), "targets/op")
		})
	}
}
