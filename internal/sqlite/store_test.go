package sqlite

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
)

// newTestStore opens a store in a temporary directory and closes it when the
// test ends.
func newTestStore(t testing.TB, dir string) *Store {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	s := New(dir)
	s.Logger = slog.New(slog.DiscardHandler)
	require.NoError(t, s.Open())
	t.Cleanup(func() { assert.NoError(t, s.Close()) })
	return s
}

// addUpdate stores a firmware and an update with the given targets.
func addUpdate(t testing.TB, s *Store, id string, devices ...string) fleet.Update {
	t.Helper()
	ctx := context.Background()
	fw, err := s.AddFirmware(ctx, fleet.Firmware{Version: "2.0"}, strings.NewReader("image-"+id))
	require.NoError(t, err)
	u := fleet.Update{
		ID:         id,
		FirmwareID: fw.ID,
		Selector:   fleet.Selector{Model: "m1"},
		Policy:     fleet.Policy{}.WithDefaults(),
		State:      fleet.UpdateRunning,
		CreatedAt:  time.Now(),
	}
	targets := make([]fleet.Progress, len(devices))
	for i, d := range devices {
		targets[i] = fleet.Progress{DeviceID: d, State: fleet.StateQueued}
	}
	require.NoError(t, s.CreateUpdate(ctx, u, targets))
	return u
}

func TestMigrate_ReopenIsNoOp(t *testing.T) {
	dir := t.TempDir()
	s := New(dir)
	require.NoError(t, s.Open())
	require.NoError(t, s.SaveDevice(fleet.Device{ID: "d1", Model: "m1"}))
	require.NoError(t, s.Close())

	s2 := newTestStore(t, dir)
	ctx := context.Background()
	v, err := schemaVersion(ctx, s2.reader)
	require.NoError(t, err)
	assert.Equal(t, len(migrations), v)
	var n int
	require.NoError(t, s2.reader.QueryRow(`SELECT COUNT(*) FROM schema_migrations`).Scan(&n))
	assert.Equal(t, len(migrations), n, "each migration recorded once")
	_, err = s2.Device(ctx, "d1")
	assert.NoError(t, err, "data survives reopening")
}

func TestMigrate_UpgradesOlderDatabase(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	db, err := sql.Open("sqlite3", filepath.Join(dir, DBFile)+"?"+writerPragmas)
	require.NoError(t, err)
	require.NoError(t, migrate(ctx, db, migrations[:2]))
	_, err = db.Exec(`INSERT INTO devices (id, model, version, tags, first_seen, last_seen, online)
		VALUES ('old', 'm1', '1.0', '{}', ?, ?, 0)`, fmtTime(time.Now()), fmtTime(time.Now()))
	require.NoError(t, err)
	v, err := schemaVersion(ctx, db)
	require.NoError(t, err)
	require.Equal(t, 2, v)
	require.NoError(t, db.Close())

	s := newTestStore(t, dir)
	v, err = schemaVersion(ctx, s.reader)
	require.NoError(t, err)
	assert.Equal(t, len(migrations), v)
	d, err := s.Device(ctx, "old")
	require.NoError(t, err)
	assert.Equal(t, "1.0", d.Version)
	addUpdate(t, s, "up-1", "old") // tables of later migrations exist
}

func TestMigrate_RefusesNewerSchema(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	db, err := sql.Open("sqlite3", filepath.Join(dir, DBFile)+"?"+writerPragmas)
	require.NoError(t, err)
	extra := append(append([]string{}, migrations...), `CREATE TABLE future (x)`)
	require.NoError(t, migrate(ctx, db, extra))
	require.NoError(t, db.Close())

	s := New(dir)
	err = s.Open()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "newer")
	assert.NoError(t, s.Close())
}

func TestStore_SaveDeviceKeepsFirstSeen(t *testing.T) {
	s := newTestStore(t, "")
	ctx := context.Background()
	t0 := time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC)
	t1 := t0.Add(time.Hour)

	require.NoError(t, s.SaveDevice(fleet.Device{ID: "d1", Model: "m1", Version: "1.0", FirstSeen: t0, LastSeen: t0,
		Tags: map[string]string{"site": "a"}}))
	require.NoError(t, s.SaveDevice(fleet.Device{ID: "d1", Model: "m1", Version: "1.1", FirstSeen: t1, LastSeen: t1,
		Online: true}))
	require.NoError(t, s.Flush(ctx))

	d, err := s.Device(ctx, "d1")
	require.NoError(t, err)
	assert.True(t, d.FirstSeen.Equal(t0), "first_seen kept: %v", d.FirstSeen)
	assert.True(t, d.LastSeen.Equal(t1))
	assert.Equal(t, "1.1", d.Version)
	assert.True(t, d.Online)
	assert.Nil(t, d.Tags, "tags replaced")

	t2 := t1.Add(time.Minute)
	require.NoError(t, s.SetDeviceOnline("d1", false, t2))
	require.NoError(t, s.SetDeviceOnline("unknown", true, t2))
	require.NoError(t, s.Flush(ctx))
	d, err = s.Device(ctx, "d1")
	require.NoError(t, err)
	assert.False(t, d.Online)
	assert.True(t, d.LastSeen.Equal(t2))

	_, err = s.Device(ctx, "unknown")
	assert.ErrorIs(t, err, fleet.ErrDeviceNotFound)
}

func TestStore_ListAndSelectDevices(t *testing.T) {
	s := newTestStore(t, "")
	ctx := context.Background()
	for i := range 10 {
		model := "m1"
		if i%2 == 1 {
			model = "m2"
		}
		require.NoError(t, s.SaveDevice(fleet.Device{
			ID: fmt.Sprintf("d%02d", i), Model: model, Version: "1.0", Online: i < 3,
			Tags: map[string]string{"ring": fmt.Sprint(i % 3)},
		}))
	}
	require.NoError(t, s.Flush(ctx))

	t.Run("list", func(t *testing.T) {
		all, total, err := s.ListDevices(ctx, DeviceFilter{})
		require.NoError(t, err)
		assert.Equal(t, 10, total)
		assert.Len(t, all, 10)
		assert.Equal(t, "d00", all[0].ID)

		page, total, err := s.ListDevices(ctx, DeviceFilter{Model: "m1", Limit: 2, Offset: 1})
		require.NoError(t, err)
		assert.Equal(t, 5, total)
		require.Len(t, page, 2)
		assert.Equal(t, []string{"d02", "d04"}, []string{page[0].ID, page[1].ID})

		online := true
		on, total, err := s.ListDevices(ctx, DeviceFilter{Online: &online})
		require.NoError(t, err)
		assert.Equal(t, 3, total)
		assert.Len(t, on, 3)
	})
	t.Run("select", func(t *testing.T) {
		ds, err := s.SelectDevices(ctx, fleet.Selector{Model: "m2", Tags: map[string]string{"ring": "0"}})
		require.NoError(t, err)
		require.Len(t, ds, 2) // d03, d09
		assert.Equal(t, "d03", ds[0].ID)
		assert.Equal(t, "d09", ds[1].ID)

		ds, err = s.SelectDevices(ctx, fleet.Selector{Devices: []string{"d01", "d05", "nope"}})
		require.NoError(t, err)
		require.Len(t, ds, 2)
		assert.Equal(t, "d01", ds[0].ID)

		ds, err = s.SelectDevices(ctx, fleet.Selector{Version: "2.0"})
		require.NoError(t, err)
		assert.Empty(t, ds)
	})
}

func TestStore_AddFirmwareDedupes(t *testing.T) {
	s := newTestStore(t, "")
	ctx := context.Background()
	image := bytes.Repeat([]byte("flota"), 100_000)

	fw1, err := s.AddFirmware(ctx, fleet.Firmware{Name: "app", Version: "1.0", Model: "m1"}, bytes.NewReader(image))
	require.NoError(t, err)
	fw2, err := s.AddFirmware(ctx, fleet.Firmware{Version: "1.0-again"}, bytes.NewReader(image))
	require.NoError(t, err)

	assert.NotEqual(t, fw1.ID, fw2.ID)
	assert.Equal(t, fw1.SHA256, fw2.SHA256)
	assert.Equal(t, int64(len(image)), fw1.Size)
	assert.Equal(t, "app", fw1.Name)
	assert.Equal(t, "firmware", fw2.Name, "default name")
	assert.True(t, strings.HasPrefix(fw1.ID, "fw-"))

	entries, err := os.ReadDir(filepath.Join(s.DataDir, FirmwareDir))
	require.NoError(t, err)
	require.Len(t, entries, 1, "one blob for the same bytes, no temp files left")
	assert.Equal(t, fw1.SHA256, entries[0].Name())

	list, err := s.ListFirmware(ctx)
	require.NoError(t, err)
	assert.Len(t, list, 2)

	got, err := s.Firmware(ctx, fw1.ID)
	require.NoError(t, err)
	assert.Equal(t, fw1.Model, got.Model)
	assert.True(t, got.CreatedAt.Equal(fw1.CreatedAt))

	f, meta, err := s.OpenFirmware(ctx, fw2.ID)
	require.NoError(t, err)
	defer f.Close()
	data, err := io.ReadAll(f)
	require.NoError(t, err)
	assert.Equal(t, image, data)
	assert.Equal(t, fw2.ID, meta.ID)

	_, err = s.AddFirmware(ctx, fleet.Firmware{Name: "x"}, strings.NewReader("x"))
	assert.ErrorIs(t, err, fleet.ErrInvalidInput)
	_, err = s.Firmware(ctx, "fw-nope")
	assert.ErrorIs(t, err, fleet.ErrFirmwareNotFound)
	_, _, err = s.OpenFirmware(ctx, "fw-nope")
	assert.ErrorIs(t, err, fleet.ErrFirmwareNotFound)
}

func TestStore_AddFirmwareCancelledLeavesNoTemp(t *testing.T) {
	s := newTestStore(t, "")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := s.AddFirmware(ctx, fleet.Firmware{Version: "1"}, strings.NewReader("abc"))
	require.ErrorIs(t, err, context.Canceled)
	entries, err := os.ReadDir(filepath.Join(s.DataDir, FirmwareDir))
	require.NoError(t, err)
	assert.Empty(t, entries)
}

func TestStore_CreateUpdateRoundTrip(t *testing.T) {
	s := newTestStore(t, "")
	ctx := context.Background()
	devices := []string{"d1", "d2", "d3", "d4"}
	u := addUpdate(t, s, "up-1", devices...)

	got, err := s.Update(ctx, "up-1")
	require.NoError(t, err)
	assert.Equal(t, u.FirmwareID, got.FirmwareID)
	assert.Equal(t, u.Selector, got.Selector)
	assert.Equal(t, u.Policy, got.Policy)
	assert.Equal(t, fleet.UpdateRunning, got.State)
	assert.True(t, got.CreatedAt.Equal(u.CreatedAt))
	assert.Nil(t, got.StartedAt)
	assert.Nil(t, got.FinishedAt)

	ps, total, err := s.Progress(ctx, "up-1", ProgressFilter{})
	require.NoError(t, err)
	assert.Equal(t, 4, total)
	require.Len(t, ps, 4)
	assert.Equal(t, fleet.StateQueued, ps[0].State)
	assert.True(t, ps[0].UpdatedAt.Equal(u.CreatedAt))

	started := time.Now()
	require.NoError(t, s.SaveProgress(fleet.Progress{UpdateID: "up-1", DeviceID: "d2", State: fleet.StateDownloading,
		Offset: 4096, Attempts: 1, StartedAt: &started, UpdatedAt: started}, 77))
	require.NoError(t, s.SaveProgress(fleet.Progress{UpdateID: "up-1", DeviceID: "d3", State: fleet.StateFailed,
		Reason: fleet.ReasonBadDigest, Attempts: 3, FinishedAt: &started}, 78))
	require.NoError(t, s.Flush(ctx))

	ps, total, err = s.Progress(ctx, "up-1", ProgressFilter{State: fleet.StateDownloading})
	require.NoError(t, err)
	assert.Equal(t, 1, total)
	require.Len(t, ps, 1)
	assert.Equal(t, int64(4096), ps[0].Offset)
	require.NotNil(t, ps[0].StartedAt)
	assert.True(t, ps[0].StartedAt.Equal(started))

	ps, total, err = s.Progress(ctx, "up-1", ProgressFilter{Limit: 2, Offset: 2})
	require.NoError(t, err)
	assert.Equal(t, 4, total)
	require.Len(t, ps, 2)
	assert.Equal(t, "d3", ps[0].DeviceID)
	assert.Equal(t, fleet.ReasonBadDigest, ps[0].Reason)

	rows, err := s.AllProgress(ctx, "up-1")
	require.NoError(t, err)
	require.Len(t, rows, 4)
	assert.Equal(t, uint32(77), rows[1].Handle)
	assert.Equal(t, "d2", rows[1].DeviceID)

	counts, err := s.CountProgress(ctx, "up-1")
	require.NoError(t, err)
	assert.Equal(t, map[fleet.DeviceState]int{fleet.StateQueued: 2, fleet.StateDownloading: 1, fleet.StateFailed: 1}, counts)

	t.Run("update state", func(t *testing.T) {
		t1 := time.Date(2025, 5, 1, 0, 0, 0, 0, time.UTC)
		require.NoError(t, s.SetUpdateState("up-1", fleet.UpdatePaused, t1))
		require.NoError(t, s.SetUpdateState("up-1", fleet.UpdateRunning, t1.Add(time.Second)))
		require.NoError(t, s.SetUpdateState("up-1", fleet.UpdatePaused, t1.Add(2*time.Second)))
		require.NoError(t, s.SetUpdateState("up-1", fleet.UpdateRunning, t1.Add(3*time.Second)))
		require.NoError(t, s.Flush(ctx))
		got, err := s.Update(ctx, "up-1")
		require.NoError(t, err)
		require.NotNil(t, got.StartedAt)
		assert.True(t, got.StartedAt.Equal(t1.Add(time.Second)), "first entry into running")
		assert.Nil(t, got.FinishedAt)

		active, err := s.ActiveUpdates(ctx)
		require.NoError(t, err)
		require.Len(t, active, 1)

		require.NoError(t, s.SetUpdateState("up-1", fleet.UpdateCompleted, t1.Add(time.Minute)))
		require.NoError(t, s.Flush(ctx))
		got, err = s.Update(ctx, "up-1")
		require.NoError(t, err)
		assert.Equal(t, fleet.UpdateCompleted, got.State)
		require.NotNil(t, got.FinishedAt)
		assert.True(t, got.FinishedAt.Equal(t1.Add(time.Minute)))

		active, err = s.ActiveUpdates(ctx)
		require.NoError(t, err)
		assert.Empty(t, active)
	})

	t.Run("list newest first", func(t *testing.T) {
		addUpdate(t, s, "up-2", "d1")
		list, err := s.ListUpdates(ctx)
		require.NoError(t, err)
		require.Len(t, list, 2)
		assert.Equal(t, "up-2", list[0].ID)
		assert.Equal(t, "up-1", list[1].ID)
	})

	t.Run("errors", func(t *testing.T) {
		_, err := s.Update(ctx, "nope")
		assert.ErrorIs(t, err, fleet.ErrUpdateNotFound)
		err = s.CreateUpdate(ctx, fleet.Update{ID: "up-x", FirmwareID: "fw-nope", State: fleet.UpdateRunning}, nil)
		assert.ErrorIs(t, err, fleet.ErrFirmwareNotFound)
		err = s.CreateUpdate(ctx, fleet.Update{ID: "up-1", FirmwareID: u.FirmwareID}, nil)
		assert.Error(t, err, "duplicate ID")
		_, total, err := s.Progress(ctx, "up-1", ProgressFilter{})
		require.NoError(t, err)
		assert.Equal(t, 4, total, "failed create left existing rows alone")
	})
}

func TestStore_CreateUpdateManyTargets(t *testing.T) {
	s := newTestStore(t, "")
	ctx := context.Background()
	const n = 100_000
	devices := make([]string, n)
	for i := range devices {
		devices[i] = fmt.Sprintf("dev-%06d", i)
	}
	before := s.Stats().Transactions
	addUpdate(t, s, "big", devices...)
	assert.Equal(t, int64(2), s.Stats().Transactions-before, "firmware + one transaction for the update")
	counts, err := s.CountProgress(ctx, "big")
	require.NoError(t, err)
	assert.Equal(t, n, counts[fleet.StateQueued])
}

func TestStore_BatchesWrites(t *testing.T) {
	s := newTestStore(t, "")
	ctx := context.Background()
	addUpdate(t, s, "up-1")
	before := s.Stats()

	const n = 5000
	for i := range n {
		require.NoError(t, s.SaveProgress(fleet.Progress{UpdateID: "up-1", DeviceID: fmt.Sprintf("d%05d", i),
			State: fleet.StateDownloading, Offset: int64(i)}, uint32(i)))
	}
	require.NoError(t, s.Flush(ctx))

	st := s.Stats()
	txs := st.Transactions - before.Transactions
	assert.Less(t, txs, int64(50), "writes are batched")
	assert.GreaterOrEqual(t, txs, int64(n/s.BatchSize), "at most BatchSize ops per transaction")
	assert.Equal(t, int64(n), st.Rows-before.Rows)
	assert.Zero(t, st.Dropped)

	counts, err := s.CountProgress(ctx, "up-1")
	require.NoError(t, err)
	assert.Equal(t, n, counts[fleet.StateDownloading])
	rows, err := s.AllProgress(ctx, "up-1")
	require.NoError(t, err)
	require.Len(t, rows, n)
	assert.Equal(t, uint32(1234), rows[1234].Handle)
	assert.Equal(t, int64(1234), rows[1234].Offset)
}

func TestStore_FlushIntervalCommitsWithoutFlush(t *testing.T) {
	s := newTestStore(t, "")
	ctx := context.Background()
	require.NoError(t, s.SaveDevice(fleet.Device{ID: "d1"}))
	require.Eventually(t, func() bool {
		_, err := s.Device(ctx, "d1")
		return err == nil
	}, 5*time.Second, 5*time.Millisecond, "queued write never committed")
}

func TestStore_BadWriteDoesNotLoseBatch(t *testing.T) {
	s := newTestStore(t, "")
	ctx := context.Background()
	addUpdate(t, s, "up-1")

	for i := range 10 {
		p := fleet.Progress{UpdateID: "up-1", DeviceID: fmt.Sprintf("d%d", i), State: fleet.StateOffered}
		if i == 5 {
			p.UpdateID = "no-such-update" // violates the foreign key
		}
		require.NoError(t, s.SaveProgress(p, 0))
	}
	require.NoError(t, s.AppendEvent(fleet.Event{Seq: 1, Type: fleet.EventDevice, State: "offered"}))
	require.NoError(t, s.AppendEvent(fleet.Event{Seq: 1, Type: fleet.EventDevice, State: "dup"}))

	err := s.Flush(ctx)
	require.Error(t, err, "the dropped write is reported")
	assert.Equal(t, int64(2), s.Stats().Dropped)

	_, total, err := s.Progress(ctx, "up-1", ProgressFilter{})
	require.NoError(t, err)
	assert.Equal(t, 9, total, "the rest of the batch is stored")
	evs, err := s.Events(ctx, "", 0, 0)
	require.NoError(t, err)
	require.Len(t, evs, 1)
	assert.Equal(t, "offered", evs[0].State)

	assert.NoError(t, s.Flush(ctx), "an error is reported once")
}

func TestStore_FlushCancelledKeepsWriteError(t *testing.T) {
	s := newTestStore(t, "")
	for range 20 {
		require.NoError(t, s.SaveProgress(fleet.Progress{UpdateID: "nope", DeviceID: "d"}, 0))
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		first := s.Flush(ctx)
		second := s.Flush(context.Background())
		if errors.Is(first, context.Canceled) {
			assert.Error(t, second, "error kept for the next Flush")
			assert.NotErrorIs(t, second, context.Canceled)
		} else {
			assert.Error(t, first)
			assert.NoError(t, second, "reported once")
		}
	}
}

func TestStore_CreateUpdateCancelled(t *testing.T) {
	s := newTestStore(t, "")
	ctx := context.Background()
	fw, err := s.AddFirmware(ctx, fleet.Firmware{Version: "1"}, strings.NewReader("x"))
	require.NoError(t, err)
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	err = s.CreateUpdate(cctx, fleet.Update{ID: "u1", FirmwareID: fw.ID, State: fleet.UpdateRunning},
		[]fleet.Progress{{DeviceID: "d1", State: fleet.StateQueued}})
	require.Error(t, err)
	_, err = s.Update(ctx, "u1")
	assert.ErrorIs(t, err, fleet.ErrUpdateNotFound)
}

func TestStore_EventsPaging(t *testing.T) {
	s := newTestStore(t, "")
	ctx := context.Background()
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	for seq := int64(1); seq <= 25; seq++ {
		upd := "up-a"
		if seq%5 == 0 {
			upd = "up-b"
		}
		require.NoError(t, s.AppendEvent(fleet.Event{Seq: seq, Time: t0.Add(time.Duration(seq) * time.Millisecond),
			Type: fleet.EventDevice, UpdateID: upd, DeviceID: "d1", From: "offered", State: "accepted",
			Reason: fleet.ReasonBusy, Offset: seq * 10, Attempt: 2}))
	}
	require.NoError(t, s.Flush(ctx))

	var got []int64
	after := int64(0)
	for {
		page, err := s.Events(ctx, "", after, 10)
		require.NoError(t, err)
		if len(page) == 0 {
			break
		}
		assert.LessOrEqual(t, len(page), 10)
		for _, e := range page {
			got = append(got, e.Seq)
		}
		after = page[len(page)-1].Seq
	}
	require.Len(t, got, 25)
	for i, seq := range got {
		assert.Equal(t, int64(i+1), seq)
	}

	b, err := s.Events(ctx, "up-b", 10, 0)
	require.NoError(t, err)
	require.Len(t, b, 3) // 15, 20, 25
	assert.Equal(t, int64(15), b[0].Seq)
	e := b[0]
	assert.Equal(t, "up-b", e.UpdateID)
	assert.Equal(t, "offered", e.From)
	assert.Equal(t, fleet.ReasonBusy, e.Reason)
	assert.Equal(t, int64(150), e.Offset)
	assert.Equal(t, 2, e.Attempt)
	assert.True(t, e.Time.Equal(t0.Add(15*time.Millisecond)))

	maxSeq, err := s.MaxEventSeq(ctx)
	require.NoError(t, err)
	assert.Equal(t, int64(25), maxSeq)
}

func TestStore_CloseIsIdempotent(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	s := New(dir)
	s.FlushInterval = time.Hour // only Close commits
	require.NoError(t, s.Open())
	require.NoError(t, s.SaveDevice(fleet.Device{ID: "queued"}))

	require.NoError(t, s.Close())
	require.NoError(t, s.Close())

	assert.ErrorIs(t, s.SaveDevice(fleet.Device{ID: "late"}), fleet.ErrClosed)
	assert.ErrorIs(t, s.SetDeviceOnline("late", true, time.Now()), fleet.ErrClosed)
	assert.ErrorIs(t, s.SaveProgress(fleet.Progress{}, 0), fleet.ErrClosed)
	assert.ErrorIs(t, s.AppendEvent(fleet.Event{}), fleet.ErrClosed)
	assert.ErrorIs(t, s.SetUpdateState("x", fleet.UpdatePaused, time.Now()), fleet.ErrClosed)
	assert.ErrorIs(t, s.Flush(ctx), fleet.ErrClosed)
	assert.ErrorIs(t, s.CreateUpdate(ctx, fleet.Update{ID: "u", FirmwareID: "f"}, nil), fleet.ErrClosed)
	_, err := s.AddFirmware(ctx, fleet.Firmware{Version: "1"}, strings.NewReader("x"))
	assert.ErrorIs(t, err, fleet.ErrClosed)
	_, err = s.Device(ctx, "queued")
	assert.ErrorIs(t, err, fleet.ErrClosed)

	s2 := newTestStore(t, dir)
	_, err = s2.Device(ctx, "queued")
	assert.NoError(t, err, "Close committed the queued write")
}

func TestStore_CloseReportsUnflushedError(t *testing.T) {
	s := New(t.TempDir())
	s.Logger = slog.New(slog.DiscardHandler)
	require.NoError(t, s.Open())
	require.NoError(t, s.SaveProgress(fleet.Progress{UpdateID: "nope", DeviceID: "d"}, 0))
	assert.Error(t, s.Close())
	assert.Error(t, s.Close(), "same result again")
}

func TestStore_ConcurrentWritersAndReaders(t *testing.T) {
	s := New(t.TempDir())
	s.Logger = slog.New(slog.DiscardHandler)
	s.QueueSize = 16 // writers hit back-pressure
	s.BatchSize = 64
	require.NoError(t, s.Open())
	t.Cleanup(func() { assert.NoError(t, s.Close()) })
	ctx := context.Background()
	addUpdate(t, s, "up-1")

	const writers, perWriter = 8, 500
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWriter {
				id := fmt.Sprintf("w%d-%d", w, i)
				assert.NoError(t, s.SaveProgress(fleet.Progress{UpdateID: "up-1", DeviceID: id, State: fleet.StateOffered}, 1))
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for range 50 {
			_, err := s.CountProgress(ctx, "up-1")
			assert.NoError(t, err)
		}
	}()
	wg.Wait()
	require.NoError(t, s.Flush(ctx))
	counts, err := s.CountProgress(ctx, "up-1")
	require.NoError(t, err)
	assert.Equal(t, writers*perWriter, counts[fleet.StateOffered])
}

func TestStore_AddFirmwareVerifiedRefusalKeepsNothing(t *testing.T) {
	s := newTestStore(t, "")
	ctx := context.Background()
	image := []byte("image bytes")
	refused := errors.New("refused")
	var seen fleet.Firmware
	_, err := s.AddFirmwareVerified(ctx, fleet.Firmware{Version: "1", Signature: "sig"}, bytes.NewReader(image),
		func(fw fleet.Firmware) error { seen = fw; return refused })
	require.ErrorIs(t, err, refused)
	assert.Equal(t, int64(len(image)), seen.Size, "verify sees the size read")
	assert.Len(t, seen.SHA256, 64, "and the digest")
	assert.Equal(t, "sig", seen.Signature)
	entries, err := os.ReadDir(filepath.Join(s.DataDir, FirmwareDir))
	require.NoError(t, err)
	assert.Empty(t, entries, "no image, no temporary file")
	list, err := s.ListFirmware(ctx)
	require.NoError(t, err)
	assert.Empty(t, list)

	fw, err := s.AddFirmwareVerified(ctx, fleet.Firmware{Version: "1", Signature: "sig", AllowDowngrade: true}, bytes.NewReader(image),
		func(fleet.Firmware) error { return nil })
	require.NoError(t, err)
	got, err := s.Firmware(ctx, fw.ID)
	require.NoError(t, err)
	assert.Equal(t, "sig", got.Signature)
	assert.True(t, got.AllowDowngrade)
}
