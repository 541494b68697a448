package sqlite

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
)

// appendEvents stores events seq from..to of update u, at the given time.
func appendEvents(t *testing.T, s *Store, u string, from, to int64, at time.Time) {
	t.Helper()
	for seq := from; seq <= to; seq++ {
		require.NoError(t, s.AppendEvent(fleet.Event{Seq: seq, Time: at, Type: fleet.EventDevice, UpdateID: u,
			DeviceID: "d1", State: string(fleet.StateDownloading)}))
	}
	require.NoError(t, s.Flush(context.Background()))
}

func eventSeqs(t *testing.T, s *Store, u string, after int64) []int64 {
	t.Helper()
	evs, err := s.Events(context.Background(), u, after, 0)
	require.NoError(t, err)
	seqs := make([]int64, len(evs))
	for i, e := range evs {
		seqs[i] = e.Seq
	}
	return seqs
}

func seqRange(from, to int64) []int64 {
	var out []int64
	for s := from; s <= to; s++ {
		out = append(out, s)
	}
	return out
}

func TestStore_PruneEventsByRowsKeepsNewestAndUpdateState(t *testing.T) {
	s := newTestStore(t, "")
	ctx := context.Background()
	u := addUpdate(t, s, "u1", "d1", "d2")
	require.NoError(t, s.SaveProgress(fleet.Progress{UpdateID: u.ID, DeviceID: "d1", State: fleet.StateDownloading, Offset: 4096}, 7))
	appendEvents(t, s, u.ID, 1, 2500, time.Now())

	n, err := s.PruneEvents(ctx, Retention{MaxRows: 1000, Batch: 300}, time.Now())
	require.NoError(t, err)
	assert.EqualValues(t, 1500, n)
	assert.Equal(t, seqRange(1501, 2500), eventSeqs(t, s, u.ID, 0), "the newest 1,000 remain, in order")
	wm, err := s.PrunedThrough(ctx)
	require.NoError(t, err)
	assert.EqualValues(t, 1500, wm)
	maxSeq, err := s.MaxEventSeq(ctx)
	require.NoError(t, err)
	assert.EqualValues(t, 2500, maxSeq)

	// The update and its devices' progress are not part of the log.
	got, err := s.Update(ctx, u.ID)
	require.NoError(t, err)
	assert.Equal(t, fleet.UpdateRunning, got.State)
	rows, err := s.AllProgress(ctx, u.ID)
	require.NoError(t, err)
	require.Len(t, rows, 2)
	assert.EqualValues(t, 4096, rows[0].Offset)
	assert.EqualValues(t, 7, rows[0].Handle)

	n, err = s.PruneEvents(ctx, Retention{MaxRows: 1000}, time.Now())
	require.NoError(t, err)
	assert.Zero(t, n, "a second pass finds nothing more")
}

func TestStore_PruneEventsByAge(t *testing.T) {
	s := newTestStore(t, "")
	ctx := context.Background()
	now := time.Now()
	appendEvents(t, s, "u1", 1, 40, now.Add(-3*time.Hour))
	appendEvents(t, s, "u2", 41, 50, now.Add(-90*time.Minute))
	appendEvents(t, s, "u1", 51, 60, now.Add(-time.Minute))

	n, err := s.PruneEvents(ctx, Retention{MaxAge: time.Hour, Batch: 7}, now)
	require.NoError(t, err)
	assert.EqualValues(t, 50, n)
	assert.Equal(t, seqRange(51, 60), eventSeqs(t, s, "", 0))
	assert.Empty(t, eventSeqs(t, s, "u2", 0))
	wm, err := s.PrunedThrough(ctx)
	require.NoError(t, err)
	assert.EqualValues(t, 50, wm)
	// A client that asks from a pruned point gets what remains.
	assert.Equal(t, seqRange(51, 60), eventSeqs(t, s, "u1", 10))
}

func TestStore_PruneEverythingKeepsNumberingAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	s := New(dir)
	require.NoError(t, s.Open())
	ctx := context.Background()
	appendEvents(t, s, "u1", 1, 30, time.Now().Add(-2*time.Hour))
	n, err := s.PruneEvents(ctx, Retention{MaxAge: time.Hour}, time.Now())
	require.NoError(t, err)
	assert.EqualValues(t, 30, n)
	require.NoError(t, s.Close())

	s2 := newTestStore(t, dir)
	assert.Empty(t, eventSeqs(t, s2, "", 0))
	maxSeq, err := s2.MaxEventSeq(ctx)
	require.NoError(t, err)
	assert.EqualValues(t, 30, maxSeq, "numbering continues after the pruned events")
	wm, err := s2.PrunedThrough(ctx)
	require.NoError(t, err)
	assert.EqualValues(t, 30, wm)
}

func TestStore_PrunerRunsPeriodically(t *testing.T) {
	s := New(t.TempDir())
	s.Retention = Retention{MaxRows: 10, Interval: 10 * time.Millisecond, Batch: 25}
	require.NoError(t, s.Open())
	t.Cleanup(func() { assert.NoError(t, s.Close()) })
	appendEvents(t, s, "u1", 1, 100, time.Now())
	waitPrunedThrough(t, s, 90)
	assert.Equal(t, seqRange(91, 100), eventSeqs(t, s, "u1", 0))

	// Writes go on while the pruner works, and it follows them.
	appendEvents(t, s, "u1", 101, 150, time.Now())
	waitPrunedThrough(t, s, 140)
	assert.Equal(t, seqRange(141, 150), eventSeqs(t, s, "u1", 0))
}

// waitPrunedThrough polls until the log's watermark reaches seq.
func waitPrunedThrough(t *testing.T, s *Store, seq int64) {
	t.Helper()
	require.Eventually(t, func() bool {
		wm, err := s.PrunedThrough(context.Background())
		return err == nil && wm == seq
	}, 10*time.Second, 10*time.Millisecond)
}
