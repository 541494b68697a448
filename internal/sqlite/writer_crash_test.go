package sqlite

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
)

// Environment of the writer child process (TestHelperWriterChild).
const (
	crashDirEnv  = "FLOTA_WRITER_CHILD_DIR"
	crashSeedEnv = "FLOTA_WRITER_CHILD_SEED"
)

// crashDevices is small enough that a batch of the writer (1,000 writes,
// 500 rows) holds about ten progress saves of each device, of which the
// transaction writes only the last (batchPlan).
const (
	crashUpdate  = "crash"
	crashDevices = 50
)

func crashDevice(i int64) string { return fmt.Sprintf("dev-%04d", i%crashDevices) }

// TestHelperWriterChild is not a test on its own: run by
// TestStore_WriterSurvivesKill as a child process, it writes batches of
// progress rows and events to the store in $FLOTA_WRITER_CHILD_DIR until it
// is killed. Row i is event seq i and progress offset i of device i mod
// crashDevices. After each Flush it prints "flushed N": rows 1..N are
// committed.
func TestHelperWriterChild(t *testing.T) {
	dir := os.Getenv(crashDirEnv)
	if dir == "" {
		t.Skip("runs as the child process of TestStore_WriterSurvivesKill")
	}
	seed, err := strconv.ParseUint(os.Getenv(crashSeedEnv), 10, 64)
	require.NoError(t, err)
	rng := rand.New(rand.NewPCG(seed, 1))
	s := New(dir)
	s.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	require.NoError(t, s.Open())
	ctx := context.Background()
	seq, err := s.MaxEventSeq(ctx)
	require.NoError(t, err)
	for {
		// Batches from one row to several writer transactions (BatchSize ops).
		n := 1 + rng.IntN(2500)
		for range n {
			seq++
			dev := crashDevice(seq)
			require.NoError(t, s.AppendEvent(fleet.Event{Seq: seq, Type: fleet.EventDevice, UpdateID: crashUpdate,
				DeviceID: dev, From: string(fleet.StateDownloading), State: string(fleet.StateDownloading), Offset: seq}))
			require.NoError(t, s.SaveProgress(fleet.Progress{UpdateID: crashUpdate, DeviceID: dev,
				State: fleet.StateDownloading, Offset: seq, Attempts: 1}, uint32(seq)))
		}
		require.NoError(t, s.Flush(ctx))
		fmt.Printf("flushed %d\n", seq)
	}
}

// TestStore_WriterSurvivesKill kills a writing child process at random
// points, between and during batches, and checks after each kill that every
// row the child had seen flushed is there, that the database is intact and
// that it takes writes again (WAL recovery).
func TestStore_WriterSurvivesKill(t *testing.T) {
	if testing.Short() {
		t.Skip("starts child processes")
	}
	dir := t.TempDir()
	s := New(dir)
	s.Logger = slog.New(slog.DiscardHandler)
	require.NoError(t, s.Open())
	devices := make([]string, crashDevices)
	for i := range devices {
		devices[i] = crashDevice(int64(i))
	}
	addUpdate(t, s, crashUpdate, devices...)
	require.NoError(t, s.Close())

	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 2))
	for round := range 6 {
		flushes := 2 + rng.IntN(4)
		// Even rounds: kill as soon as a flush is reported (between
		// batches); odd rounds: a little later, while a batch is written.
		var delay time.Duration
		if round%2 == 1 {
			delay = time.Duration(rng.IntN(100_000)) * time.Microsecond
		}
		t.Run(fmt.Sprintf("round%d", round), func(t *testing.T) {
			flushed := killWriterChild(t, dir, rng.Uint64(), flushes, delay)
			t.Logf("killed %v after flush %d (row %d)", delay, flushes, flushed)
			checkAfterKill(t, dir, flushed)
		})
	}
}

// killWriterChild runs the child on dir, kills it delay after its flushes-th
// "flushed" line, and returns the last row it reported flushed.
func killWriterChild(t *testing.T, dir string, seed uint64, flushes int, delay time.Duration) int64 {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperWriterChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashDirEnv+"="+dir, crashSeedEnv+"="+strconv.FormatUint(seed, 10))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	kill := func() { _ = cmd.Process.Kill() } // SIGKILL
	t.Cleanup(kill)

	var last int64
	seen := 0
	sc := bufio.NewScanner(out)
	for sc.Scan() { // until the killed child's stdout ends
		line := sc.Text()
		v, ok := strings.CutPrefix(line, "flushed ")
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(v, 10, 64)
		require.NoError(t, err, "line %q", line)
		require.Greater(t, n, last)
		last = n
		if seen++; seen == flushes {
			if delay == 0 {
				kill()
			} else {
				time.AfterFunc(delay, kill)
			}
		}
	}
	err = cmd.Wait()
	require.GreaterOrEqual(t, seen, flushes, "child ended before it was killed: %v\n%s", err, stderr.String())
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee)
	require.Equal(t, "signal: killed", ee.Error(), "stderr:\n%s", stderr.String())
	return last
}

// checkAfterKill reopens the store and checks rows 1..flushed, the
// database's integrity and that it takes writes.
func checkAfterKill(t *testing.T, dir string, flushed int64) {
	t.Helper()
	ctx := context.Background()
	s := New(dir)
	s.Logger = slog.New(slog.DiscardHandler)
	require.NoError(t, s.Open(), "reopen after the kill")
	defer func() { assert.NoError(t, s.Close()) }()

	var check string
	require.NoError(t, s.reader.QueryRowContext(ctx, `PRAGMA integrity_check`).Scan(&check))
	require.Equal(t, "ok", check)

	// Events: 1..max without a gap, max >= flushed (later batches may have
	// committed before the kill).
	var count, minSeq, maxSeq int64
	require.NoError(t, s.reader.QueryRowContext(ctx,
		`SELECT COUNT(*), COALESCE(MIN(seq), 0), COALESCE(MAX(seq), 0) FROM events`).Scan(&count, &minSeq, &maxSeq))
	require.GreaterOrEqual(t, maxSeq, flushed, "a flushed event is missing")
	assert.Equal(t, int64(1), minSeq)
	assert.Equal(t, maxSeq, count, "events 1..%d have a gap", maxSeq)
	t.Logf("rows committed past the last reported flush: %d", maxSeq-flushed)

	// Progress: each device holds at least its last row up to flushed. And
	// since batches commit whole and in order, what is stored is a prefix of
	// the queued writes (event i, progress i, event i+1, ...) that ends with
	// event maxSeq or with progress maxSeq: a device holds exactly its last
	// row before maxSeq, or, when row maxSeq is its own, that row or the one
	// before.
	rows, err := s.AllProgress(ctx, crashUpdate)
	require.NoError(t, err)
	require.Len(t, rows, crashDevices)
	lastOf := func(d, seq int64) int64 { // d's last row <= seq, 0 for none
		return max(0, seq-((seq-d)%crashDevices+crashDevices)%crashDevices)
	}
	for _, r := range rows {
		var d int64
		_, err := fmt.Sscanf(r.DeviceID, "dev-%d", &d)
		require.NoError(t, err)
		assert.GreaterOrEqual(t, r.Offset, lastOf(d, flushed), "device %s lost a flushed row", r.DeviceID)
		last := lastOf(d, maxSeq)
		if last == maxSeq {
			assert.Contains(t, []int64{last, lastOf(d, last-1)}, r.Offset, "device %s", r.DeviceID)
		} else {
			assert.Equal(t, last, r.Offset, "device %s", r.DeviceID)
		}
	}

	// Writable again.
	next := maxSeq + 1
	require.NoError(t, s.AppendEvent(fleet.Event{Seq: next, Type: fleet.EventDevice, UpdateID: crashUpdate,
		DeviceID: crashDevice(next), State: string(fleet.StateDownloading), Offset: next}))
	require.NoError(t, s.SaveProgress(fleet.Progress{UpdateID: crashUpdate, DeviceID: crashDevice(next),
		State: fleet.StateDownloading, Offset: next, Attempts: 1}, 1))
	require.NoError(t, s.Flush(ctx))
	got, err := s.MaxEventSeq(ctx)
	require.NoError(t, err)
	assert.Equal(t, next, got)
}
