package sqlite

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
)

// BenchmarkStore_SaveProgress measures batched progress upserts through the
// writer goroutine, as the engine issues them at state changes and
// checkpoints.
func BenchmarkStore_SaveProgress(b *testing.B) {
	s := newTestStore(b, "")
	ctx := context.Background()
	const devices = 10_000
	ids := make([]string, devices)
	for i := range ids {
		ids[i] = fmt.Sprintf("dev-%05d", i)
	}
	addUpdate(b, s, "bench", ids...)
	before := s.Stats()

	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		p := fleet.Progress{UpdateID: "bench", DeviceID: ids[i%devices], State: fleet.StateDownloading,
			Offset: int64(i) * 16384, Attempts: 1}
		if err := s.SaveProgress(p, uint32(i)); err != nil {
			b.Fatal(err)
		}
	}
	require.NoError(b, s.Flush(ctx))
	b.StopTimer()

	st := s.Stats()
	rows := st.Rows - before.Rows
	b.ReportMetric(float64(rows)/b.Elapsed().Seconds(), "rows/s")
	b.ReportMetric(float64(st.Transactions-before.Transactions), "sqlite-txs")
}

// BenchmarkStore_CreateUpdate100k measures one update with 100,000 targets,
// stored in one transaction.
func BenchmarkStore_CreateUpdate100k(b *testing.B) {
	s := newTestStore(b, "")
	ctx := context.Background()
	fw, err := s.AddFirmware(ctx, fleet.Firmware{Version: "1"}, strings.NewReader("image"))
	require.NoError(b, err)
	const n = 100_000
	targets := make([]fleet.Progress, n)
	for i := range targets {
		targets[i] = fleet.Progress{DeviceID: fmt.Sprintf("dev-%06d", i), State: fleet.StateQueued}
	}
	before := s.Stats()

	iters := 0
	for b.Loop() {
		u := fleet.Update{ID: fmt.Sprintf("up-%d", iters), FirmwareID: fw.ID, State: fleet.UpdateRunning,
			Policy: fleet.Policy{}.WithDefaults()}
		if err := s.CreateUpdate(ctx, u, targets); err != nil {
			b.Fatal(err)
		}
		iters++
	}
	b.ReportMetric(float64(n*iters)/b.Elapsed().Seconds(), "rows/s")
	b.ReportMetric(float64(s.Stats().Transactions-before.Transactions), "sqlite-txs")
}
