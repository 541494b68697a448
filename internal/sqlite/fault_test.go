package sqlite

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/tmpfs"
)

// openFaultStore opens a store on dir that retries quickly, with update
// "up" over the devices d0..d9.
func openFaultStore(t *testing.T, dir string) *Store {
	t.Helper()
	s := New(dir)
	s.Logger = slog.New(slog.DiscardHandler)
	s.RetryMin, s.RetryMax = 2*time.Millisecond, 20*time.Millisecond
	s.CloseGrace = 200 * time.Millisecond
	require.NoError(t, s.Open())
	devs := make([]string, 10)
	for i := range devs {
		devs[i] = fmt.Sprintf("d%d", i)
	}
	addUpdate(t, s, "up", devs...)
	return s
}

// queueRows queues events from..to, with a progress save of device seq mod
// 10 each, whose offset is seq. Each event carries a long reason so that
// the rows fill pages quickly.
func queueRows(t *testing.T, s *Store, from, to int64) {
	t.Helper()
	pad := fleet.Reason(fmt.Sprintf("%0512d", 0))
	for seq := from; seq <= to; seq++ {
		dev := fmt.Sprintf("d%d", seq%10)
		require.NoError(t, s.AppendEvent(fleet.Event{Seq: seq, Type: fleet.EventDevice, UpdateID: "up", DeviceID: dev,
			State: string(fleet.StateDownloading), Reason: pad, Offset: seq}))
		require.NoError(t, s.SaveProgress(fleet.Progress{UpdateID: "up", DeviceID: dev, State: fleet.StateDownloading,
			Offset: seq, Attempts: 1}, 1))
	}
}

// requireAllRows checks that events 1..n are stored without a gap and
// that each device's row holds its last offset up to n.
func requireAllRows(t *testing.T, s *Store, n int64) {
	t.Helper()
	ctx := context.Background()
	var count, lo, hi int64
	require.NoError(t, s.reader.QueryRowContext(ctx,
		`SELECT COUNT(*), COALESCE(MIN(seq), 0), COALESCE(MAX(seq), 0) FROM events`).Scan(&count, &lo, &hi))
	assert.Equal(t, [3]int64{n, 1, n}, [3]int64{count, lo, hi}, "events: count, first and last seq")
	rows, err := s.AllProgress(ctx, "up")
	require.NoError(t, err)
	for _, r := range rows {
		var d int64
		_, err := fmt.Sscanf(r.DeviceID, "d%d", &d)
		require.NoError(t, err)
		assert.Equal(t, n-((n-d)%10+10)%10, r.Offset, "device %s", r.DeviceID)
	}
}

// setMaxPages limits the database file to n pages (0: its size now) on
// the writer's connection: SQLite then refuses to grow it with
// SQLITE_FULL, as on a full disk. It waits for the connection if the writer
// holds it.
func setMaxPages(t *testing.T, s *Store, n int64) {
	t.Helper()
	ctx := context.Background()
	if n == 0 {
		require.NoError(t, s.writer.QueryRowContext(ctx, `PRAGMA page_count`).Scan(&n))
	}
	_, err := s.writer.ExecContext(ctx, fmt.Sprintf(`PRAGMA max_page_count = %d`, n))
	require.NoError(t, err)
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestStore_FullDatabaseHoldsWritesAndCommitsThemInOrderOnceItHasRoom(t *testing.T) {
	s := openFaultStore(t, t.TempDir())
	t.Cleanup(func() { assert.NoError(t, s.Close()) })
	ctx := context.Background()
	queueRows(t, s, 1, 100)
	require.NoError(t, s.Flush(ctx))
	require.NoError(t, s.Unavailable())

	setMaxPages(t, s, 0)
	const n = 3000
	queueRows(t, s, 101, n) // more than the file holds: a batch fails on SQLITE_FULL
	waitFor(t, "the store to report it cannot write", func() bool { return s.Unavailable() != nil })
	err := s.Unavailable()
	require.ErrorIs(t, err, fleet.ErrStoreUnavailable)
	assert.Contains(t, err.Error(), "full")
	assert.Equal(t, "store unavailable", s.HealthReason()[:len("store unavailable")])
	waitFor(t, "a retried attempt", func() bool { return s.Stats().WriteFailures >= 2 })
	assert.Positive(t, s.Stats().HeldWrites)

	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	err = s.Flush(short)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.ErrorIs(t, err, fleet.ErrStoreUnavailable)

	setMaxPages(t, s, 1<<30)
	require.NoError(t, s.Flush(ctx), "every held write commits")
	require.NoError(t, s.Unavailable())
	st := s.Stats()
	assert.Zero(t, st.Dropped, "nothing dropped")
	assert.Zero(t, st.HeldWrites)
	requireAllRows(t, s, n)
}

func TestStore_ConstraintViolationDropsOnlyTheBadWrite(t *testing.T) {
	s := openFaultStore(t, t.TempDir())
	t.Cleanup(func() { _ = s.Close() })
	ctx := context.Background()
	queueRows(t, s, 1, 5)
	// A duplicate seq: this operation alone fails, on a constraint.
	require.NoError(t, s.AppendEvent(fleet.Event{Seq: 3, Type: fleet.EventDevice, UpdateID: "up", DeviceID: "d3"}))
	queueRows(t, s, 6, 10)
	err := s.Flush(ctx)
	require.Error(t, err)
	assert.NotErrorIs(t, err, fleet.ErrStoreUnavailable)
	assert.Equal(t, int64(1), s.Stats().Dropped)
	assert.Zero(t, s.Stats().WriteFailures)
	require.NoError(t, s.Unavailable())
	requireAllRows(t, s, 10)
}

func TestStore_CloseGivesUpHeldWritesAfterCloseGrace(t *testing.T) {
	s := openFaultStore(t, t.TempDir())
	setMaxPages(t, s, 0)
	queueRows(t, s, 1, 3000)
	waitFor(t, "the store to report it cannot write", func() bool { return s.Unavailable() != nil })
	start := time.Now()
	err := s.Close()
	require.Error(t, err, "held writes were lost: Close says so")
	assert.Contains(t, err.Error(), "full")
	assert.Positive(t, s.Stats().Dropped)
	assert.Less(t, time.Since(start), 20*time.Second)
}

func TestStore_FullDiskHoldsWritesUntilSpaceReturns(t *testing.T) {
	dir := tmpfs.Mount(t, 8<<20)
	s := openFaultStore(t, dir)
	t.Cleanup(func() { assert.NoError(t, s.Close()) })
	ctx := context.Background()
	queueRows(t, s, 1, 100)
	require.NoError(t, s.Flush(ctx))

	filler := tmpfs.Fill(t, dir)
	// Write until a batch fails: the WAL must grow past what it holds.
	var n int64 = 100
	for s.Unavailable() == nil && n < 200_000 {
		queueRows(t, s, n+1, n+500)
		n += 500
	}
	require.Error(t, s.Unavailable(), "the store noticed the full disk")
	waitFor(t, "a retried attempt", func() bool { return s.Stats().WriteFailures >= 2 })

	require.NoError(t, os.Remove(filler))
	require.NoError(t, s.Flush(ctx))
	require.NoError(t, s.Unavailable())
	assert.Zero(t, s.Stats().Dropped)
	requireAllRows(t, s, n)
}
