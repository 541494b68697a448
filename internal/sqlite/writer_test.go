package sqlite

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
)

// write is one queued write of a test, on update "up".
type write struct {
	save  bool // a SaveProgress
	event bool // with its event (SaveProgressEvent): two rows
	queue func(s *Store) error
}

var writeTime = time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)

// save queues a progress save of dev whose offset, attempts and handle are n.
func save(dev string, st fleet.DeviceState, n int) write {
	return saveTo("up", dev, st, n)
}

func saveTo(update, dev string, st fleet.DeviceState, n int) write {
	return write{save: true, queue: func(s *Store) error {
		return s.SaveProgress(fleet.Progress{UpdateID: update, DeviceID: dev, State: st, Offset: int64(n), Attempts: n,
			UpdatedAt: writeTime.Add(time.Duration(n) * time.Second)}, uint32(n))
	}}
}

func event(seq int64, dev string, st fleet.DeviceState) write {
	return write{queue: func(s *Store) error {
		return s.AppendEvent(fleet.Event{Seq: seq, Time: writeTime, Type: fleet.EventDevice, UpdateID: "up",
			DeviceID: dev, State: string(st)})
	}}
}

// change queues a save of dev and its event, seq n, as one write
// (SaveProgressEvent).
func change(dev string, st fleet.DeviceState, n int) write {
	return write{save: true, event: true, queue: func(s *Store) error {
		return s.SaveProgressEvent(fleet.Progress{UpdateID: "up", DeviceID: dev, State: st, Offset: int64(n), Attempts: n,
			UpdatedAt: writeTime.Add(time.Duration(n) * time.Second)}, uint32(n),
			fleet.Event{Seq: int64(n), Time: writeTime, Type: fleet.EventDevice, UpdateID: "up", DeviceID: dev, State: string(st)})
	}}
}

func updateState(st fleet.UpdateState) write {
	return write{queue: func(s *Store) error { return s.SetUpdateState("up", st, writeTime) }}
}

// storeSnapshot is what a test compares between a batched and an unbatched
// run of the same writes.
type storeSnapshot struct {
	Progress  []ProgressRow
	Events    []fleet.Event
	Published []int64           // sequence numbers given to OnEventsCommitted, in order
	Seen      []string          // progress_seen (watchUpdateState), in insertion order
	Update    fleet.UpdateState // state of update "up"
	Devices   []fleet.Device
}

// writeRun is a store with update "up" over d1..d4, whose batches end only
// at a synchronous operation or at BatchSize operations (FlushInterval is an
// hour), so that a test decides what one batch holds.
type writeRun struct {
	s         *Store
	mu        sync.Mutex // guards published, appended by the writer goroutine
	published []int64
}

func newWriteRun(t *testing.T) *writeRun {
	t.Helper()
	s := New(t.TempDir())
	s.Logger = slog.New(slog.DiscardHandler)
	s.FlushInterval = time.Hour
	require.NoError(t, s.Open())
	t.Cleanup(func() { assert.NoError(t, s.Close()) })
	addUpdate(t, s, "up", "d1", "d2", "d3", "d4")
	watchUpdateState(t, s)
	r := &writeRun{s: s}
	s.OnEventsCommitted(func(evs []fleet.Event) {
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, e := range evs {
			r.published = append(r.published, e.Seq)
		}
	})
	return r
}

// watchUpdateState adds to s's database a trigger that copies the progress
// rows of an update, as they are at that moment, into progress_seen
// whenever the update's state changes: an operation whose SQL reads
// progress, which batching must not move across a progress save.
func watchUpdateState(t *testing.T, s *Store) {
	t.Helper()
	require.NoError(t, s.doSync(context.Background(), func() error {
		_, err := s.writer.Exec(`CREATE TABLE progress_seen (row TEXT NOT NULL);
			CREATE TRIGGER updates_state_reads_progress AFTER UPDATE OF state ON updates BEGIN
				INSERT INTO progress_seen (row)
					SELECT NEW.state || ' ' || device_id || ' ' || state || ' ' || offset || ' ' || handle
					FROM progress WHERE update_id = NEW.id ORDER BY device_id;
			END;`)
		return err
	}))
}

// apply queues ws, with a Flush after each when unbatched, then a final
// Flush, and returns the errors the Flushes reported and the change of the
// store's counters.
func (r *writeRun) apply(t *testing.T, ws []write, unbatched bool) ([]error, Stats) {
	t.Helper()
	ctx := context.Background()
	before := r.s.Stats()
	var errs []error
	for _, w := range ws {
		require.NoError(t, w.queue(r.s))
		if unbatched {
			if err := r.s.Flush(ctx); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := r.s.Flush(ctx); err != nil {
		errs = append(errs, err)
	}
	after := r.s.Stats()
	return errs, Stats{
		Transactions:   after.Transactions - before.Transactions,
		Rows:           after.Rows - before.Rows,
		Dropped:        after.Dropped - before.Dropped,
		ProgressWrites: after.ProgressWrites - before.ProgressWrites,
	}
}

func (r *writeRun) snapshot(t *testing.T) storeSnapshot {
	t.Helper()
	ctx := context.Background()
	var snap storeSnapshot
	var err error
	snap.Progress, err = r.s.AllProgress(ctx, "up")
	require.NoError(t, err)
	for i := range snap.Progress {
		if snap.Progress[i].State == fleet.StateQueued { // untouched: the update's creation time
			snap.Progress[i].UpdatedAt = time.Time{}
		}
	}
	snap.Events, err = r.s.Events(ctx, "", 0, 0)
	require.NoError(t, err)
	r.mu.Lock()
	snap.Published = append([]int64(nil), r.published...)
	r.mu.Unlock()
	rows, err := r.s.reader.QueryContext(ctx, `SELECT row FROM progress_seen ORDER BY rowid`)
	require.NoError(t, err)
	snap.Seen, err = collect(rows, func(sc scanner) (string, error) {
		var s string
		return s, sc.Scan(&s)
	}, "progress_seen")
	require.NoError(t, err)
	u, err := r.s.Update(ctx, "up")
	require.NoError(t, err)
	snap.Update = u.State
	snap.Devices, _, err = r.s.ListDevices(ctx, DeviceFilter{})
	require.NoError(t, err)
	for i := range snap.Devices { // set to the time of the write when queued without one
		snap.Devices[i].FirstSeen, snap.Devices[i].LastSeen = time.Time{}, time.Time{}
	}
	return snap
}

// TestStore_BatchWritesEachProgressRowOnce runs the same writes in one batch
// and one per transaction, and checks that the batch executed one upsert
// per progress row between barriers and left the store, the event log and
// what a progress-reading operation saw exactly as the unbatched writes did.
func TestStore_BatchWritesEachProgressRowOnce(t *testing.T) {
	walk := func(dev string, from int) []write {
		var ws []write
		for i, st := range stateWalk {
			ws = append(ws, save(dev, st, from+i), event(int64(from+i), dev, st))
		}
		return ws
	}
	var interleaved []write
	for i := range 3 {
		for d := 1; d <= 4; d++ {
			n := 1 + i*4 + (d - 1)
			dev := fmt.Sprintf("d%d", d)
			interleaved = append(interleaved, save(dev, stateWalk[i], n), event(int64(n), dev, stateWalk[i]))
		}
	}
	online := write{queue: func(s *Store) error { return s.SetDeviceOnline("d1", true, writeTime) }}
	hello := write{queue: func(s *Store) error {
		return s.SaveDevice(fleet.Device{ID: "d1", Model: "m1", Version: "2.0", LastSeen: writeTime})
	}}

	for _, tc := range []struct {
		name    string
		writes  []write
		upserts int64 // progress upserts of the batch
	}{
		{"one device through eight states", walk("d1", 1), 1},
		{"four devices, three states each, interleaved", interleaved, 4},
		{"two devices walking one after the other", append(walk("d1", 1), walk("d2", 9)...), 2},
		{"update state change between saves of one device", []write{
			save("d1", fleet.StateOffered, 1), save("d1", fleet.StateAccepted, 2), save("d2", fleet.StateOffered, 3),
			updateState(fleet.UpdatePaused),
			save("d1", fleet.StateDownloading, 4), event(1, "d1", fleet.StateDownloading),
			save("d1", fleet.StateDownloaded, 5),
			updateState(fleet.UpdateRunning),
		}, 3},
		{"device registration and presence between saves", []write{
			save("d1", fleet.StateRebooting, 1), online, event(1, "d1", fleet.StateRebooting), hello,
			save("d1", fleet.StateSucceeded, 2), event(2, "d1", fleet.StateSucceeded),
		}, 1},
		{"saves with their events in one write, mixed with plain saves", []write{
			change("d1", fleet.StateOffered, 1), change("d2", fleet.StateOffered, 2), save("d1", fleet.StateAccepted, 3),
			change("d1", fleet.StateDownloading, 4), updateState(fleet.UpdatePaused),
			change("d2", fleet.StateAccepted, 5), save("d2", fleet.StateDownloading, 6),
		}, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			saves, rows := int64(0), int64(len(tc.writes))
			for _, w := range tc.writes {
				if w.save {
					saves++
				}
				if w.event {
					rows++
				}
			}

			batched, unbatched := newWriteRun(t), newWriteRun(t)
			errs, got := batched.apply(t, tc.writes, false)
			require.Empty(t, errs)
			errs, want := unbatched.apply(t, tc.writes, true)
			require.Empty(t, errs)

			assert.Equal(t, int64(1), got.Transactions, "one batch")
			assert.Equal(t, tc.upserts, got.ProgressWrites, "progress upserts executed")
			assert.Equal(t, saves, want.ProgressWrites, "unbatched: one upsert per save")
			assert.Equal(t, rows, got.Rows, "every write is committed")
			assert.Equal(t, want.Rows, got.Rows)
			assert.Zero(t, got.Dropped)
			assert.Equal(t, unbatched.snapshot(t), batched.snapshot(t), "as if written one by one")
		})
	}

	t.Run("the last value is kept", func(t *testing.T) {
		r := newWriteRun(t)
		_, st := r.apply(t, walk("d1", 1), false)
		assert.Equal(t, int64(1), st.ProgressWrites)
		snap := r.snapshot(t)
		d1 := snap.Progress[0]
		assert.Equal(t, "d1", d1.DeviceID)
		assert.Equal(t, fleet.StateSucceeded, d1.State)
		assert.Equal(t, int64(8), d1.Offset)
		assert.Equal(t, 8, d1.Attempts)
		assert.Equal(t, uint32(8), d1.Handle)
		assert.True(t, writeTime.Add(8*time.Second).Equal(d1.UpdatedAt), "updated_at %v", d1.UpdatedAt)
		assert.Equal(t, []int64{1, 2, 3, 4, 5, 6, 7, 8}, snap.Published, "every event, in order")
		require.Len(t, snap.Events, 8)
		for i, e := range snap.Events {
			assert.Equal(t, string(stateWalk[i]), e.State)
		}
	})

	t.Run("a save with its event: the last value and every event", func(t *testing.T) {
		r := newWriteRun(t)
		var ws []write
		for i, st := range stateWalk {
			ws = append(ws, change("d1", st, i+1))
		}
		_, st := r.apply(t, ws, false)
		assert.Equal(t, int64(1), st.ProgressWrites)
		assert.Equal(t, int64(16), st.Rows, "a save and an event each")
		snap := r.snapshot(t)
		assert.Equal(t, fleet.StateSucceeded, snap.Progress[0].State)
		assert.Equal(t, int64(8), snap.Progress[0].Offset)
		assert.Equal(t, []int64{1, 2, 3, 4, 5, 6, 7, 8}, snap.Published, "every event, in order")
		require.Len(t, snap.Events, 8)
		for i, e := range snap.Events {
			assert.Equal(t, string(stateWalk[i]), e.State)
		}
	})
}

// TestStore_BatchOutcomeReachesEverySave checks that a batch whose
// transaction fails reports each of its operations as unbatched writes
// would: the saves a later one would have replaced are applied (or
// dropped) one by one too, and Flush reports the error once.
func TestStore_BatchOutcomeReachesEverySave(t *testing.T) {
	ws := []write{
		save("d1", fleet.StateOffered, 1), event(1, "d1", fleet.StateOffered),
		saveTo("no-such-update", "d2", fleet.StateOffered, 2), // violates the foreign key
		save("d1", fleet.StateAccepted, 3),
		saveTo("no-such-update", "d2", fleet.StateAccepted, 4),
		event(1, "d1", fleet.StateAccepted), // duplicate sequence number
		saveTo("no-such-update", "d2", fleet.StateDownloading, 5),
		save("d1", fleet.StateDownloading, 6), event(2, "d1", fleet.StateDownloading),
	}
	batched, unbatched := newWriteRun(t), newWriteRun(t)
	errs, got := batched.apply(t, ws, false)
	require.Len(t, errs, 1, "the dropped writes are reported")
	uerrs, want := unbatched.apply(t, ws, true)
	require.Len(t, uerrs, 4)

	assert.Equal(t, int64(4), got.Dropped, "each failed save is dropped, not one for the row")
	assert.Equal(t, want.Dropped, got.Dropped)
	assert.Equal(t, want.Rows, got.Rows)
	assert.Equal(t, int64(3), got.ProgressWrites, "applied one by one after the batch failed")
	assert.Equal(t, unbatched.snapshot(t), batched.snapshot(t))
	assert.NoError(t, batched.s.Flush(context.Background()), "an error is reported once")
}

// TestBatchPlan_SkipsSavesALaterSaveReplaces checks the plan of one batch:
// a save is skipped when a later save of its row follows before a barrier,
// and every other operation keeps its place.
func TestBatchPlan_SkipsSavesALaterSaveReplaces(t *testing.T) {
	p := func(dev string, n int) *saveProgressOp {
		return &saveProgressOp{p: fleet.Progress{UpdateID: "up", DeviceID: dev, Offset: int64(n)}}
	}
	e := func(seq int64) *appendEventOp { return &appendEventOp{e: fleet.Event{Seq: seq}} }
	d1a, d1b, d1c, d1d, d2a, d1other := p("d1", 1), p("d1", 2), p("d1", 3), p("d1", 4), p("d2", 1), p("d1", 5)
	d1other.p.UpdateID = "other"
	e1, e2, e3 := e(1), e(2), e(3)
	barrier := &setUpdateStateOp{id: "up", state: fleet.UpdatePaused}
	online := &setOnlineOp{id: "d1", online: true}
	counters := &saveCountersOp{id: "up"}

	var bp batchPlan
	for _, tc := range []struct {
		name    string
		batch   []batchOp
		want    []batchOp
		upserts int
	}{
		{"empty", nil, nil, 0},
		{"one save", []batchOp{d1a}, []batchOp{d1a}, 1},
		{"saves and events", []batchOp{d1a, e1, d2a, d1b, e2, d1c, e3}, []batchOp{e1, d2a, e2, d1c, e3}, 2},
		{"another update's row is another row", []batchOp{d1a, d1other, d1b}, []batchOp{d1other, d1b}, 2},
		{"presence does not separate saves", []batchOp{d1a, online, d1b}, []batchOp{online, d1b}, 1},
		{"update state separates saves", []batchOp{d1a, d1b, barrier, d1c, e1, d1d},
			[]batchOp{d1b, barrier, e1, d1d}, 2},
		{"counters separate saves", []batchOp{d1a, counters, d1b}, []batchOp{d1a, counters, d1b}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ops, upserts := bp.plan(tc.batch)
			assert.Equal(t, len(tc.want), len(ops))
			for i := range min(len(ops), len(tc.want)) {
				assert.Same(t, tc.want[i], ops[i], "op %d", i)
			}
			assert.Equal(t, tc.upserts, upserts)
			bp.reset()
			assert.Empty(t, bp.later, "no row carried to the next batch")
		})
	}
}
