package sqlite

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mattn/go-sqlite3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
)

// quoteRow returns the columns of the rows of query as "type:value" (SQL
// typeof and quote), one string per row: the stored bytes and their types.
func quoteRow(t *testing.T, s *Store, table, cols, where string) []string {
	t.Helper()
	var exprs []string
	for _, c := range strings.Split(cols, ", ") {
		exprs = append(exprs, "typeof("+c+") || ':' || quote("+c+")")
	}
	rows, err := s.reader.Query("SELECT " + strings.Join(exprs, " || ' ' || ") + " FROM " + table + " WHERE " + where)
	require.NoError(t, err)
	defer rows.Close()
	var out []string
	for rows.Next() {
		var line string
		require.NoError(t, rows.Scan(&line))
		out = append(out, line)
	}
	require.NoError(t, rows.Err())
	return out
}

func TestStore_BatchedWritesStoreTextIntegersAndNulls(t *testing.T) {
	s := newTestStore(t, "")
	ctx := context.Background()
	addUpdate(t, s, "up", "d1", "d2")
	plus2 := time.FixedZone("plus2", 2*3600)
	at := time.Date(2026, 5, 6, 9, 8, 7, 123456789, plus2) // 07:08:07.123456789 UTC
	later := at.Add(time.Hour + 5)
	zero := time.Time{}

	require.NoError(t, s.SaveDevice(fleet.Device{ID: "d1", Model: "m", Version: "1.0", Tags: map[string]string{"k": "v"},
		LastSeen: at, Online: true}))
	require.NoError(t, s.SaveDevice(fleet.Device{ID: "d2", FirstSeen: at, LastSeen: later}))
	require.NoError(t, s.SetDeviceOnline("d2", true, later))
	require.NoError(t, s.SaveProgress(fleet.Progress{UpdateID: "up", DeviceID: "d1", State: fleet.StateFailed,
		Offset: 1 << 40, Attempts: 300, Reason: "timeout", UpdatedAt: at, StartedAt: &at, FinishedAt: &later}, 4_000_000_000))
	require.NoError(t, s.SaveProgress(fleet.Progress{UpdateID: "up", DeviceID: "d2", State: fleet.StateOffered,
		UpdatedAt: later, StartedAt: &zero}, 0))
	require.NoError(t, s.AppendEvent(fleet.Event{Seq: 1 << 33, Time: at, Type: fleet.EventDevice, UpdateID: "up",
		DeviceID: "d1", From: "offered", State: "failed", Reason: "timeout", Offset: -5, Attempt: 2, Phase: 3}))
	require.NoError(t, s.AppendEvent(fleet.Event{Seq: 1<<33 + 1, Time: later, Type: fleet.EventUpdate, State: "running"}))
	require.NoError(t, s.SetUpdateState("up", fleet.UpdateRunning, at))
	require.NoError(t, s.SetUpdateState("up", fleet.UpdateCompleted, later))
	require.NoError(t, s.SaveUpdateCounters("up", Counters{BytesSent: 1 << 35, BytesAcked: 7, Resends: 0}))
	require.NoError(t, s.Flush(ctx))

	const atText, laterText = "'2026-05-06T07:08:07.123456789Z'", "'2026-05-06T08:08:07.123456794Z'"
	assert.Equal(t, []string{
		"text:'d1' text:'m' text:'1.0' text:'{\"k\":\"v\"}' text:" + atText + " text:" + atText + " integer:1",
		"text:'d2' text:'' text:'' text:'{}' text:" + atText + " text:" + laterText + " integer:1",
	}, quoteRow(t, s, "devices", "id, model, version, tags, first_seen, last_seen, online", "1 ORDER BY id"))
	assert.Equal(t, []string{
		"text:'d1' text:'failed' integer:1099511627776 integer:300 text:'timeout' integer:4000000000 text:" + atText +
			" text:" + laterText + " text:" + atText,
		"text:'d2' text:'offered' integer:0 integer:0 text:'' integer:0 null:NULL null:NULL text:" + laterText,
	}, quoteRow(t, s, "progress", "device_id, state, offset, attempts, reason, handle, started_at, finished_at, updated_at",
		"update_id = 'up' ORDER BY device_id"))
	assert.Equal(t, []string{
		"integer:8589934592 text:" + atText + " text:'device' text:'up' text:'d1' text:'offered' text:'failed' text:'timeout'" +
			" integer:-5 integer:2 integer:3",
		"integer:8589934593 text:" + laterText + " text:'update' text:'' text:'' text:'' text:'running' text:''" +
			" integer:0 integer:0 integer:0",
	}, quoteRow(t, s, "events", "seq, time, type, update_id, device_id, from_state, state, reason, offset, attempt, phase",
		"1 ORDER BY seq"))
	assert.Equal(t, []string{
		"text:'completed' text:" + atText + " text:" + laterText + " integer:34359738368 integer:7 integer:0",
	}, quoteRow(t, s, "updates", "state, started_at, finished_at, bytes_sent, bytes_acked, resends", "id = 'up'"))
}

func TestStore_OnEventsCommittedGetsEachCommitsEvents(t *testing.T) {
	s := New(t.TempDir())
	s.Logger = slog.New(slog.DiscardHandler)
	s.BatchSize = 7
	s.FlushInterval = time.Hour
	require.NoError(t, s.Open())
	t.Cleanup(func() { assert.NoError(t, s.Close()) })
	addUpdate(t, s, "up", "d1")
	var (
		mu    sync.Mutex
		calls [][]fleet.Event // copies of what each call received
	)
	s.OnEventsCommitted(func(evs []fleet.Event) {
		mu.Lock()
		defer mu.Unlock()
		calls = append(calls, append([]fleet.Event(nil), evs...))
	})

	base := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	var want []fleet.Event
	for i := range 40 {
		e := fleet.Event{Seq: int64(i + 1), Time: base.Add(time.Duration(i) * time.Second), Type: fleet.EventDevice,
			UpdateID: "up", DeviceID: fmt.Sprintf("d%d", i%3), State: fmt.Sprintf("s%d", i), Offset: int64(i) << 20, Attempt: i}
		if i == 20 {
			e.Seq = 20 // a duplicate: its batch is applied again one operation per transaction
		} else {
			want = append(want, e)
		}
		require.NoError(t, s.AppendEvent(e))
		if i%3 == 0 {
			require.NoError(t, s.SaveProgress(fleet.Progress{UpdateID: "up", DeviceID: "d1", State: fleet.StateOffered,
				Offset: int64(i), UpdatedAt: e.Time}, uint32(i)))
		}
	}
	require.Error(t, s.Flush(context.Background()), "the duplicate is dropped")

	stored, err := s.Events(context.Background(), "", 0, 0)
	require.NoError(t, err)
	assert.Equal(t, want, stored)
	mu.Lock()
	defer mu.Unlock()
	var published []fleet.Event
	for _, evs := range calls {
		require.NotEmpty(t, evs)
		assert.LessOrEqual(t, len(evs), s.BatchSize)
		published = append(published, evs...)
	}
	assert.Equal(t, want, published, "every stored event once, in order, as appended")
	assert.Greater(t, len(calls), 10, "one call per commit, each with that commit's events only")
}

func TestStore_WritesAfterWriterConnectionReplaced(t *testing.T) {
	s := newTestStore(t, "")
	ctx := context.Background()
	addUpdate(t, s, "up", "d1")
	require.NoError(t, s.SaveProgress(fleet.Progress{UpdateID: "up", DeviceID: "d1", State: fleet.StateOffered}, 1))
	require.NoError(t, s.Flush(ctx))

	var old any
	// database/sql closes a connection whose driver reports it bad.
	assert.ErrorIs(t, onWriterConn(t, s, func(dc any) error {
		old = dc
		return driver.ErrBadConn
	}), driver.ErrBadConn)

	require.NoError(t, s.SaveProgress(fleet.Progress{UpdateID: "up", DeviceID: "d1", State: fleet.StateAccepted}, 2))
	require.NoError(t, s.AppendEvent(fleet.Event{Seq: 1, Type: fleet.EventDevice, UpdateID: "up", DeviceID: "d1"}))
	require.NoError(t, s.Flush(ctx))
	assert.NotSame(t, old, s.stmts.conn, "statements prepared on the new connection")
	rows, err := s.AllProgress(ctx, "up")
	require.NoError(t, err)
	require.Len(t, rows, 1)
	assert.Equal(t, fleet.StateAccepted, rows[0].State)
	evs, err := s.Events(ctx, "up", 0, 0)
	require.NoError(t, err)
	assert.Len(t, evs, 1)
}

// onWriterConn runs f with the writer's driver connection, between two
// batches, and returns what sql.Conn.Raw returned.
func onWriterConn(t *testing.T, s *Store, f func(dc any) error) error {
	t.Helper()
	ctx := context.Background()
	var rawErr error
	require.NoError(t, s.doSync(ctx, func() error {
		conn, err := s.writer.Conn(ctx)
		if err != nil {
			return err
		}
		defer conn.Close()
		rawErr = conn.Raw(f)
		return nil
	}))
	return rawErr
}

// replaceWriterConn makes database/sql close the writer's connection, as it
// does one whose driver reports it bad; the next write opens another.
func replaceWriterConn(t *testing.T, s *Store) {
	t.Helper()
	assert.ErrorIs(t, onWriterConn(t, s, func(any) error { return driver.ErrBadConn }), driver.ErrBadConn)
}

// storeFiles counts this process's open files under dir (Linux), which a
// SQLite connection kept alive by an unfinalized statement holds.
func storeFiles(t *testing.T, dir string) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd:", err)
	}
	n := 0
	for _, e := range ents {
		if l, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name())); err == nil && strings.HasPrefix(l, dir) {
			n++
		}
	}
	return n
}

func TestStore_ReplacedWriterConnectionReleasesItsFilesAndCloseSucceeds(t *testing.T) {
	dir := t.TempDir()
	s := New(dir)
	s.Logger = slog.New(slog.DiscardHandler)
	require.NoError(t, s.Open())
	ctx := context.Background()
	addUpdate(t, s, "up", "d1")
	require.NoError(t, s.Flush(ctx))
	base := storeFiles(t, dir)
	for i := range 3 {
		replaceWriterConn(t, s)
		// The connection is gone with the statements prepared on it; its
		// files too, not kept by them.
		assert.Less(t, storeFiles(t, dir), base, "after replacement %d: the writer's files are closed", i+1)
		require.NoError(t, s.SaveProgress(fleet.Progress{UpdateID: "up", DeviceID: "d1", State: fleet.StateOffered}, uint32(i)))
		require.NoError(t, s.Flush(ctx))
		assert.Equal(t, base, storeFiles(t, dir), "after replacement %d and a write", i+1)
	}
	// Replaced once more, and closed before a write prepared anew.
	replaceWriterConn(t, s)
	assert.NoError(t, s.Close())
	assert.Zero(t, storeFiles(t, dir))
}

func TestStore_WriterKeepsItsConnectionWhenATransactionsContextEnds(t *testing.T) {
	s := newTestStore(t, "")
	ctx := context.Background()
	addUpdate(t, s, "up", "d1")
	require.NoError(t, s.Flush(ctx))
	before := s.stmts.conn
	require.NoError(t, s.doSync(ctx, func() error {
		tctx, cancel := context.WithCancel(ctx)
		tx, err := s.writer.BeginTx(tctx, nil)
		if err != nil {
			cancel()
			return err
		}
		cancel() // database/sql rolls back, and keeps the connection
		assert.Eventually(t, func() bool { return errors.Is(tx.Commit(), sql.ErrTxDone) }, 5*time.Second, time.Millisecond)
		return nil
	}))
	require.NoError(t, s.SaveProgress(fleet.Progress{UpdateID: "up", DeviceID: "d1", State: fleet.StateOffered}, 1))
	require.NoError(t, s.Flush(ctx))
	assert.Same(t, before, s.stmts.conn, "the statements' connection is still the writer's")
	assert.Equal(t, int64(0), s.writer.Stats().MaxIdleClosed+s.writer.Stats().MaxLifetimeClosed)
	rows, err := s.AllProgress(ctx, "up")
	require.NoError(t, err)
	require.Len(t, rows, 1)
	assert.Equal(t, fleet.StateOffered, rows[0].State)
}

func TestWriteStmts_PrepareThatFailedIsRetriedOnTheNextBatch(t *testing.T) {
	db := sql.OpenDB(writerConnector{dsn: filepath.Join(t.TempDir(), DBFile) + "?" + writerPragmas, drv: &sqlite3.SQLiteDriver{}})
	db.SetMaxOpenConns(1)
	t.Cleanup(func() { assert.NoError(t, db.Close()) })
	ws := &writeStmts{}
	op := &appendEventOp{e: fleet.Event{Seq: 1, Time: time.Unix(1, 0), Type: fleet.EventUpdate, State: "running"}}

	// No tables yet: the statements cannot be prepared.
	require.ErrorContains(t, ws.execTx(db, []batchOp{op}), "no such table")
	require.NoError(t, migrate(context.Background(), db, migrations))
	require.NoError(t, ws.execTx(db, []batchOp{op}), "prepared on the same connection this time")
	var n int
	require.NoError(t, db.QueryRow("SELECT COUNT(*) FROM events").Scan(&n))
	assert.Equal(t, 1, n)
}

func TestStore_WriterReplacesAConnectionLeftInATransaction(t *testing.T) {
	s := newTestStore(t, "")
	ctx := context.Background()
	addUpdate(t, s, "up", "d1")
	require.NoError(t, s.Flush(ctx))
	var left any
	// As an I/O error that the rollback could not end leaves it.
	require.NoError(t, onWriterConn(t, s, func(dc any) error {
		left = dc
		_, err := dc.(*writerConn).ExecContext(ctx, "BEGIN", nil)
		return err
	}))
	require.NoError(t, s.SaveProgress(fleet.Progress{UpdateID: "up", DeviceID: "d1", State: fleet.StateOffered}, 1))
	require.NoError(t, s.Flush(ctx), "written on a new connection")
	assert.NotSame(t, left, s.stmts.conn)
	rows, err := s.AllProgress(ctx, "up")
	require.NoError(t, err)
	require.Len(t, rows, 1)
	assert.Equal(t, fleet.StateOffered, rows[0].State)
}
