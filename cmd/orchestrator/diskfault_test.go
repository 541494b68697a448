package main

// Disk fault tests with real processes on real file systems: a tmpfs the
// test mounts (root only; CI runs as root) and fills.

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/httpapi"
	"github.com/flotaio/flota/internal/tmpfs"
)

// health returns the server's health answer and status code.
func (s *server) health() (httpapi.Health, int) {
	s.t.Helper()
	resp, err := http.Get(s.url + "/api/v1/health")
	require.NoError(s.t, err)
	defer resp.Body.Close()
	var h httpapi.Health
	require.NoError(s.t, json.NewDecoder(resp.Body).Decode(&h))
	return h, resp.StatusCode
}

// post sends an authenticated POST of body and returns the status and
// error body.
func (s *server) post(path, body string) (int, httpapi.Error) {
	s.t.Helper()
	req, err := http.NewRequest("POST", s.url+path, strings.NewReader(body))
	require.NoError(s.t, err)
	req.Header.Set("Authorization", "Bearer "+s.token)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(s.t, err)
	defer resp.Body.Close()
	var e httpapi.Error
	_ = json.NewDecoder(resp.Body).Decode(&e)
	return resp.StatusCode, e
}

// requireConsistentEnd checks the end of an update of n devices: every
// progress row succeeded, the event log without a gap in seq, one
// succeeded event per device, and every device installed the image once.
func requireConsistentEnd(t *testing.T, s *server, id, digest string, n int, sims ...*sim) {
	t.Helper()
	_, code := s.cli("update", "watch", id, "--interval", "250ms")
	require.Zero(t, code, "the update completes")
	st := s.status(id)
	assert.Equal(t, fleet.UpdateCompleted, st.State)
	assert.Equal(t, map[fleet.DeviceState]int{fleet.StateSucceeded: n}, st.Counts)

	var rows []struct {
		Device string            `json:"device"`
		State  fleet.DeviceState `json:"state"`
	}
	require.NoError(t, json.Unmarshal([]byte(s.mustCLI("update", "devices", id, "--json")), &rows))
	require.Len(t, rows, n)
	for _, r := range rows {
		assert.Equal(t, fleet.StateSucceeded, r.State, r.Device)
	}

	var detail []simDevice
	for _, sm := range sims {
		detail = append(detail, sm.stop(t).DevicesDetail...)
	}
	require.Len(t, detail, n)
	for _, d := range detail {
		assert.Equal(t, 1, d.Installs, d.ID)
		assert.Equal(t, digest, d.ImageSHA256, d.ID)
	}

	require.NoError(t, s.cmdTerm())
	assert.Equal(t, "ok", s.sqlite3("PRAGMA integrity_check"))
	gaps := s.sqlite3("SELECT count(*), min(seq), max(seq) FROM events")
	f := strings.Split(gaps, "|")
	require.Len(t, f, 3, gaps)
	count, _ := strconv.Atoi(f[0])
	lo, _ := strconv.Atoi(f[1])
	hi, _ := strconv.Atoi(f[2])
	assert.Equal(t, hi-lo+1, count, "event seqs %d..%d without a gap", lo, hi)
	assert.Equal(t, strconv.Itoa(n), s.sqlite3("SELECT count(*) FROM events WHERE update_id='"+id+"' AND state='succeeded'"),
		"one succeeded event per device")
	assert.Equal(t, strconv.Itoa(n), s.sqlite3("SELECT count(*) FROM progress WHERE update_id='"+id+"' AND state='succeeded'"))
}

func TestE2E_FullDiskHoldsTheUpdateAndLosesNothing(t *testing.T) {
	for _, kill := range []bool{false, true} {
		name := "freed"
		if kill {
			name = "killed_while_full"
		}
		t.Run(name, func(t *testing.T) { testFullDisk(t, kill) })
	}
}

// testFullDisk fills the data directory's file system mid-update, checks
// that the orchestrator holds still and says why, then frees it (after a
// SIGKILL and a restart, when kill) and checks that the update completes
// with nothing lost.
func testFullDisk(t *testing.T, kill bool) {
	const devices = 100
	mnt := tmpfs.Mount(t, 8<<20)
	s := startServerIn(t, filepath.Join(mnt, "data"))
	late := s.holdBack("fulllate-")
	sm := startSim(t, s, "--devices", strconv.Itoa(devices), "--id-prefix", "full-", "--model", "sim-a",
		"--reboot-delay", "200ms")
	s.waitOnline(devices)
	fw, digest := s.firmware(256<<10, "1.1.0")
	id := strings.TrimSpace(s.mustCLI("update", "create", "--firmware", fw, "--max-in-flight", "10", "--window", "4"))
	poll(t, time.Minute, func() bool { return s.status(id).Counts[fleet.StateSucceeded] >= 10 }, "10 devices succeeded")

	// A reader that holds a snapshot (a dashboard's query, a backup) keeps
	// SQLite from starting the WAL over: every commit must grow the files,
	// so the full disk fails the next one whatever room the WAL had.
	rdb, err := sql.Open("sqlite3", "file:"+filepath.Join(s.data, "flota.db")+"?mode=ro")
	require.NoError(t, err)
	defer rdb.Close()
	rtx, err := rdb.Begin()
	require.NoError(t, err)
	var seen int
	require.NoError(t, rtx.QueryRow(`SELECT count(*) FROM events`).Scan(&seen))
	filler := tmpfs.Fill(t, mnt)
	poll(t, time.Minute, func() bool { _, code := s.health(); return code == http.StatusServiceUnavailable },
		"health degraded")
	h, _ := s.health()
	assert.Equal(t, "degraded", h.Status)
	require.NotEmpty(t, h.Reasons)
	assert.Contains(t, h.Reasons[0], "store unavailable")
	assert.Contains(t, h.Reasons[0], "full")
	st := s.status(id)
	require.False(t, st.State.Terminal(), "the update waits for the held-back devices")
	assert.Equal(t, "store", st.Waiting)
	assert.Contains(t, s.mustCLI("update", "status", id), "the store cannot write")

	code, e := s.post("/api/v1/updates/"+id+"/pause", "")
	assert.Equal(t, http.StatusServiceUnavailable, code)
	assert.Equal(t, httpapi.CodeStoreUnavailable, e.Code)

	// Nothing moves while the store cannot record it.
	before := s.status(id).Counts
	time.Sleep(time.Second)
	assert.Equal(t, before, s.status(id).Counts, "device states held while the store cannot write")

	var stats struct {
		Store  map[string]float64 `json:"store"`
		Engine map[string]float64 `json:"engine"`
	}
	s.getJSON("/api/v1/stats", &stats)
	assert.Positive(t, stats.Store["write_failures"], "failed attempts are counted")
	assert.Positive(t, stats.Store["held_writes"])
	assert.Zero(t, stats.Store["dropped"])
	t.Logf("while full: %d succeeded, write_failures %v, held_writes %v, engine store_holds %v",
		before[fleet.StateSucceeded], stats.Store["write_failures"], stats.Store["held_writes"], stats.Engine["store_holds"])

	require.NoError(t, rtx.Rollback())
	if kill {
		s.kill()
	}
	require.NoError(t, os.Remove(filler))
	if kill {
		s.restart()
	}
	requireConsistentEnd(t, s, id, digest, devices+heldBack, sm, late())
	if !kill {
		assert.NotContains(t, s.logString(), "store write dropped")
	}
}

// serveFails runs `orchestrator serve` on the server's data directory with
// args, expecting it to exit, and returns its stderr and exit code.
func (s *server) serveFails(args ...string) (string, int) {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, s.bin, append([]string{"serve", "--data", s.data, "--mqtt", "127.0.0.1:0", "--http", "127.0.0.1:0"}, args...)...)
	var errb bytes.Buffer
	cmd.Stderr = &errb
	err := cmd.Run()
	require.NoError(s.t, ctx.Err(), "serve kept running on a data directory it must refuse:\n%s", errb.String())
	var ee *exec.ExitError
	require.ErrorAs(s.t, err, &ee, "serve exits with an error:\n%s", errb.String())
	return errb.String(), ee.ExitCode()
}

func TestE2E_ServeRefusesAnEmptiedDatabaseAndAReadOnlyDataDirectory(t *testing.T) {
	mnt := tmpfs.Mount(t, 16<<20)
	s := startServerIn(t, filepath.Join(mnt, "data"))
	s.firmware(64<<10, "1.1.0")
	require.NoError(t, s.cmdTerm())
	db := filepath.Join(s.data, "flota.db")

	t.Run("read_only", func(t *testing.T) {
		tmpfs.Remount(t, mnt, true)
		defer tmpfs.Remount(t, mnt, false)
		msg, code := s.serveFails()
		assert.NotZero(t, code)
		assert.Contains(t, msg, "data directory "+s.data+" is not writable")
	})

	t.Run("emptied", func(t *testing.T) {
		require.NoError(t, os.Truncate(db, 0))
		msg, code := s.serveFails()
		assert.NotZero(t, code)
		for _, want := range []string{db + " is empty", "api-tokens", "orchestrator backup", "--new-database"} {
			assert.Contains(t, msg, want)
		}
		fi, err := os.Stat(db)
		require.NoError(t, err)
		assert.Zero(t, fi.Size(), "the refused start wrote nothing")
	})

	t.Run("damaged", func(t *testing.T) {
		require.NoError(t, os.WriteFile(db, bytes.Repeat([]byte("not a database "), 1000), 0o600))
		msg, code := s.serveFails("--new-database")
		assert.NotZero(t, code)
		assert.Contains(t, msg, db)
		assert.Contains(t, msg, "restore the data directory from a backup")
	})
}

func TestE2E_FirmwareCutShortPausesTheUpdateUntilRestored(t *testing.T) {
	const devices = 10
	s := startServer(t)
	sm := startSim(t, s, "--devices", strconv.Itoa(devices), "--id-prefix", "cut-", "--model", "sim-a")
	s.waitOnline(devices)
	fw, digest := s.firmware(2<<20, "1.1.0")
	id := strings.TrimSpace(s.mustCLI("update", "create", "--firmware", fw, "--max-in-flight", "2", "--chunk-size", "4096", "--window", "2"))
	poll(t, time.Minute, func() bool { return s.status(id).BytesAcked > 0 }, "a transfer under way")
	s.kill()

	image := filepath.Join(s.data, "firmware", digest)
	whole, err := os.ReadFile(image)
	require.NoError(t, err)
	require.NoError(t, os.Truncate(image, int64(len(whole)/2)))
	s.restart()

	st := s.status(id)
	assert.Equal(t, fleet.UpdatePaused, st.State, "paused, not crashed")
	assert.Equal(t, "firmware_damaged", st.Waiting)
	assert.Contains(t, s.logString(), "firmware image damaged")
	poll(t, time.Minute, func() bool {
		var evs []fleet.Event
		require.NoError(t, json.Unmarshal([]byte(s.mustCLI("update", "events", id, "--json")), &evs))
		for _, ev := range evs {
			if ev.Type == fleet.EventUpdate && ev.State == string(fleet.UpdatePaused) && ev.Reason == fleet.ReasonFirmwareDamaged {
				return true
			}
		}
		return false
	}, "an update event: paused, firmware_damaged")

	out, code := s.cli("update", "resume", id)
	assert.NotZero(t, code, "resume refused while the image is damaged: %s", out)
	code, e := s.post("/api/v1/updates", `{"firmware":"`+fw+`"}`)
	assert.Equal(t, http.StatusConflict, code)
	assert.Equal(t, "firmware_damaged", e.Code, "a new update of the damaged image is refused: %s", e.Message)

	require.NoError(t, os.WriteFile(image, whole, 0o644))
	s.mustCLI("update", "resume", id)
	requireConsistentEnd(t, s, id, digest, devices, sm)
}

func TestE2E_BackupTakenMidUpdateRestoresAndTheUpdateCompletesExactlyOnce(t *testing.T) {
	const devices = 60
	s := startServer(t)
	late := s.holdBack("rewindlate-")
	sm := startSim(t, s, "--devices", strconv.Itoa(devices), "--id-prefix", "rewind-", "--model", "sim-a",
		"--reboot-delay", "300ms")
	s.waitOnline(devices)
	fw, digest := s.firmware(1<<20, "1.1.0")
	id := strings.TrimSpace(s.mustCLI("update", "create", "--firmware", fw, "--max-in-flight", "4", "--window", "2"))
	poll(t, time.Minute, func() bool { return s.status(id).Counts[fleet.StateSucceeded] >= 5 }, "5 devices succeeded")

	backup := filepath.Join(t.TempDir(), "backup")
	out := s.mustCLI("backup", "--out", backup)
	assert.Contains(t, out, "backup written to "+backup)
	for _, f := range []string{"flota.db", "api-tokens", filepath.Join("firmware", digest)} {
		assert.FileExists(t, filepath.Join(backup, f))
	}
	// The update goes on past the snapshot: the restored database is
	// behind the devices.
	atBackup, err := strconv.Atoi(strings.TrimSpace(
		runSQLite(t, filepath.Join(backup, "flota.db"), "SELECT count(*) FROM progress WHERE state='succeeded'")))
	require.NoError(t, err)
	poll(t, time.Minute, func() bool { return s.status(id).Counts[fleet.StateSucceeded] >= atBackup+5 },
		"5 more devices succeeded after the backup")
	st := s.status(id)
	require.False(t, st.State.Terminal(), "the update waits for the held-back devices")
	t.Logf("backup at %d succeeded; killed at %d", atBackup, st.Counts[fleet.StateSucceeded])
	s.kill()

	s.data = backup // the restore: serve --data on the backup
	s.restart()
	requireConsistentEnd(t, s, id, digest, devices+heldBack, sm, late())
}

// runSQLite runs a query with the sqlite3 CLI on the database at path.
func runSQLite(t *testing.T, path, query string) string {
	t.Helper()
	out, err := exec.Command(requireTool(t, "sqlite3"), path, query).CombinedOutput()
	require.NoError(t, err, "%s", out)
	return string(out)
}
