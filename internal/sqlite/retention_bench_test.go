package sqlite

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
)

// BenchmarkStore_PruneBatch measures one pruning transaction of
// DefaultPruneBatch events from a log of 200,000: how long the writer is
// held between two of its batches while retention runs.
func BenchmarkStore_PruneBatch(b *testing.B) {
	s := newTestStore(b, "")
	ctx := context.Background()
	const events = 200_000
	old := time.Now().Add(-48 * time.Hour)
	for seq := int64(1); seq <= events; seq++ {
		require.NoError(b, s.AppendEvent(fleet.Event{Seq: seq, Time: old, Type: fleet.EventDevice, UpdateID: "u-bench",
			DeviceID: "dev-000001", From: string(fleet.StateDownloading), State: string(fleet.StateDownloaded)}))
	}
	require.NoError(b, s.Flush(ctx))
	r := Retention{MaxAge: time.Hour, Batch: DefaultPruneBatch}.withDefaults()
	pruned := 0
	for b.Loop() {
		var n int64
		err := s.doSync(ctx, func() error {
			var err error
			n, err = s.pruneBatch(ctx, r, time.Now())
			return err
		})
		if err != nil {
			b.Fatal(err)
		}
		if n != int64(r.Batch) {
			b.Fatalf("pruned %d events, want %d (raise the log size for more iterations)", n, r.Batch)
		}
		pruned += int(n)
	}
	b.ReportMetric(float64(pruned)/b.Elapsed().Seconds(), "events/s")
}
