package main

// The standby orchestrator end to end: real mosquitto as the external
// broker, a real Litestream process replicating the primary's database to
// a file replica, real orchestrator and devicesim processes.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/mosquitto"
)

// LitestreamVersion is the Litestream the tests run and docs/DEPLOY.md
// names.
const LitestreamVersion = "v0.3.13"

var (
	litestreamOnce sync.Once
	litestreamPath string
	litestreamErr  error
)

// litestream returns a Litestream binary: $LITESTREAM_BIN, bin/litestream
// (make test builds it), one on the PATH, or one built with go install
// into the user's cache directory (a minute, once per machine). It skips
// the test, saying why, only when none can be had.
func litestream(t *testing.T) string {
	t.Helper()
	litestreamOnce.Do(func() {
		for _, p := range []string{os.Getenv("LITESTREAM_BIN"), "../../bin/litestream"} {
			if p == "" {
				continue
			}
			if _, err := os.Stat(p); err == nil {
				litestreamPath, litestreamErr = filepath.Abs(p)
				return
			}
		}
		if p, err := exec.LookPath("litestream"); err == nil {
			litestreamPath = p
			return
		}
		cache, err := os.UserCacheDir()
		if err != nil {
			litestreamErr = err
			return
		}
		dir := filepath.Join(cache, "flota", "litestream-"+LitestreamVersion)
		litestreamPath = filepath.Join(dir, "litestream")
		if _, err := os.Stat(litestreamPath); err == nil {
			return
		}
		cmd := exec.Command("go", "install", "github.com/benbjohnson/litestream/cmd/litestream@"+LitestreamVersion)
		cmd.Env = append(os.Environ(), "GOBIN="+dir, "CGO_ENABLED=1")
		if out, err := cmd.CombinedOutput(); err != nil {
			litestreamErr = fmt.Errorf("go install litestream@%s: %v\n%s", LitestreamVersion, err, out)
		}
	})
	if litestreamErr != nil {
		t.Skipf("no Litestream binary, and it cannot be built here (needs the Go module proxy and a C compiler; or set LITESTREAM_BIN): %v", litestreamErr)
	}
	return litestreamPath
}

// replicator is a running `litestream replicate` on the deploy
// configuration.
type replicator struct {
	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan struct{}
}

func startLitestream(t *testing.T, data, replicaURL string) *replicator {
	t.Helper()
	r := &replicator{out: &lockedBuffer{}, done: make(chan struct{})}
	r.cmd = exec.Command(litestream(t), "replicate", "-config", "../../deploy/litestream/litestream.yml")
	r.cmd.Env = append(os.Environ(), "FLOTA_DATA="+data, "LITESTREAM_REPLICA_URL="+replicaURL)
	r.cmd.Stdout, r.cmd.Stderr = r.out, r.out
	require.NoError(t, r.cmd.Start())
	go func() {
		_ = r.cmd.Wait()
		close(r.done)
	}()
	t.Cleanup(func() {
		r.kill()
		if t.Failed() {
			t.Logf("litestream log:\n%s", r.out)
		}
	})
	return r
}

func (r *replicator) kill() {
	_ = r.cmd.Process.Kill()
	<-r.done
}

// startExternal starts `orchestrator serve --broker` on data, with the
// test tokens (kept outside the data directory, as a standby needs them).
func startExternal(t *testing.T, b *mosquitto.Server, data string, args ...string) *server {
	t.Helper()
	orch, _ := binaries(t)
	args = append([]string{"--broker", b.URL(), "--broker-username", mosquitto.OrchestratorUser,
		"--broker-password", b.Password(mosquitto.OrchestratorUser), "--api-token-file", writeTestTokens(t)}, args...)
	// No token is printed with --api-token-file: the test's is known.
	s := &server{t: t, bin: orch, data: data, serveArgs: args, external: true, token: testAdminToken, printed: 1}
	t.Cleanup(func() {
		s.kill()
		if t.Failed() {
			t.Logf("orchestrator log (%s):\n%s", data, s.logString())
		}
	})
	s.start("127.0.0.1:0", "127.0.0.1:0")
	return s
}

// eventWatcher records the events the orchestrators publish on the broker.
type eventWatcher struct {
	mu   sync.Mutex // guards last
	last fleet.Event
}

func watchEvents(t *testing.T, b *mosquitto.Server) *eventWatcher {
	t.Helper()
	w := &eventWatcher{}
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(b.URL()).SetClientID("event-watcher"))
	tok := c.Connect()
	require.True(t, tok.WaitTimeout(10*time.Second))
	require.NoError(t, tok.Error())
	t.Cleanup(func() { c.Disconnect(0) })
	tok = c.Subscribe("flota/events/#", 1, func(_ mqtt.Client, m mqtt.Message) {
		var e fleet.Event
		if json.Unmarshal(m.Payload(), &e) != nil {
			return
		}
		w.mu.Lock()
		if e.Seq > w.last.Seq {
			w.last = e
		}
		w.mu.Unlock()
	})
	require.True(t, tok.WaitTimeout(10*time.Second))
	require.NoError(t, tok.Error())
	return w
}

func (w *eventWatcher) newest() fleet.Event {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.last
}

func TestE2E_StandbyRestoresTheReplicaAndFinishesTheUpdateExactlyOnce(t *testing.T) {
	const (
		devices = 40
		size    = 512 << 10
	)
	ls := litestream(t)
	b := &mosquitto.Server{Dir: t.TempDir(), ConfigDir: "../../testdata/mosquitto"}
	require.NoError(t, b.Start())
	t.Cleanup(func() {
		assert.NoError(t, b.Stop())
		if t.Failed() {
			t.Logf("mosquitto log:\n%s", b.Log())
		}
	})
	events := watchEvents(t, b)

	// The primary's machine: its data directory, Litestream beside it.
	// The replicas (database and firmware) are elsewhere.
	primaryData := filepath.Join(t.TempDir(), "data")
	replica := t.TempDir()
	firmware := t.TempDir()
	primary := startExternal(t, b, primaryData, "--litestream", "--firmware-replica", firmware)
	rep := startLitestream(t, primaryData, "file://"+replica)

	// Held-back targets: registered (an external broker has no accounts
	// to provision), then offline until the standby runs.
	lateArgs := []string{"--devices", strconv.Itoa(heldBack), "--id-prefix", "sblate-", "--model", "sim-a"}
	register := startSim(t, primary, lateArgs...)
	primary.waitOnline(heldBack)
	register.stop(t)
	sm := startSim(t, primary, "--devices", strconv.Itoa(devices), "--id-prefix", "sb-", "--model", "sim-a",
		"--reboot-delay", "300ms")
	primary.waitOnline(devices)
	poll(t, time.Minute, func() bool {
		out, code := primary.cli("device", "list", "--online", "--json")
		var ds []fleet.Device
		return code == 0 && json.Unmarshal([]byte(out), &ds) == nil && len(ds) == devices
	}, "the held-back devices offline")
	fw, digest := primary.firmware(size, "1.1.0")
	id := strings.TrimSpace(primary.mustCLI("update", "create", "--firmware", fw, "--max-in-flight", "8", "--window", "4"))

	// Kill the primary's machine once half the fleet's bytes are acked:
	// the held-back targets keep the update running however fast this
	// machine is.
	all := int64(devices+heldBack) * size
	poll(t, 5*time.Minute, func() bool { return primary.status(id).BytesAcked >= all/2 }, "half the bytes acked")
	before := primary.status(id)
	require.False(t, before.State.Terminal())
	killed := time.Now()
	primary.kill()
	rep.kill()
	lastSeen := events.newest() // the newest event anyone saw from the primary
	require.NoError(t, os.RemoveAll(primaryData))
	t.Logf("primary killed: %d/%d succeeded, %d bytes acked", before.Counts[fleet.StateSucceeded], devices+heldBack, before.BytesAcked)

	// The standby: restore the database from the replica, start serve on
	// it against the same broker; the images come from the firmware
	// replica.
	standbyData := filepath.Join(t.TempDir(), "data")
	require.NoError(t, os.MkdirAll(standbyData, 0o755))
	out, err := exec.Command(ls, "restore", "-o", filepath.Join(standbyData, "flota.db"), "file://"+replica).CombinedOutput()
	require.NoError(t, err, "litestream restore: %s", out)
	restored := time.Now()
	db := filepath.Join(standbyData, "flota.db")
	restoredSeq, err := strconv.ParseInt(runSQLiteTrim(t, db, "SELECT COALESCE(MAX(seq), 0) FROM events"), 10, 64)
	require.NoError(t, err)
	restoredTime, err := time.Parse(time.RFC3339Nano, runSQLiteTrim(t, db, "SELECT time FROM events ORDER BY seq DESC LIMIT 1"))
	require.NoError(t, err)
	require.Equal(t, "ok", runSQLiteTrim(t, db, "PRAGMA integrity_check"))

	standby := startExternal(t, b, standbyData, "--firmware-replica", firmware)
	serving := time.Now()
	assert.Contains(t, standby.logString(), "firmware images fetched from the replica")
	assert.NotContains(t, standby.logString(), "firmware image missing")
	poll(t, 2*time.Minute, func() bool {
		st := standby.status(id)
		return st.Counts[fleet.StateSucceeded] > before.Counts[fleet.StateSucceeded]
	}, "a device succeeds under the standby")
	progressed := time.Now()

	lostEvents := lastSeen.Seq - restoredSeq
	lostSeconds := max(0, lastSeen.Time.Sub(restoredTime).Seconds())
	t.Logf("data lost: %d events, %.2f s (newest event seen %d at %s, newest restored %d at %s)",
		lostEvents, lostSeconds, lastSeen.Seq, lastSeen.Time.Format(time.StampMilli), restoredSeq, restoredTime.Format(time.StampMilli))
	t.Logf("takeover: restore %.2f s, serving %.2f s, first device succeeded %.2f s after the kill",
		restored.Sub(killed).Seconds(), serving.Sub(killed).Seconds(), progressed.Sub(killed).Seconds())

	// The held-back devices come now; the update completes.
	lateSim := startSim(t, standby, lateArgs...)
	_, code := standby.cli("update", "watch", id, "--interval", "250ms")
	require.Zero(t, code, "the update completes under the standby")
	st := standby.status(id)
	assert.Equal(t, fleet.UpdateCompleted, st.State)
	assert.Equal(t, map[fleet.DeviceState]int{fleet.StateSucceeded: devices + heldBack}, st.Counts)

	// Every device installed the image exactly once.
	detail := append(sm.stop(t).DevicesDetail, lateSim.stop(t).DevicesDetail...)
	require.Len(t, detail, devices+heldBack)
	for _, d := range detail {
		assert.Equal(t, 1, d.Installs, d.ID)
		assert.Equal(t, "1.1.0", d.Version, d.ID)
		assert.Equal(t, digest, d.ImageSHA256, d.ID)
	}

	// The event log from the replica on: numbered without a gap, in time
	// order, at most one success per device and one for every device.
	require.NoError(t, standby.cmdTerm())
	q := func(query string) string { return runSQLiteTrim(t, db, query) }
	assert.Equal(t, q("SELECT MAX(seq) - MIN(seq) + 1 FROM events"), q("SELECT COUNT(*) FROM events"), "no gap in seq")
	assert.Equal(t, "0", q("SELECT COUNT(*) FROM events a JOIN events b ON b.seq = a.seq + 1 WHERE b.time < a.time"), "seq order is time order")
	assert.Equal(t, strconv.Itoa(devices+heldBack), q("SELECT COUNT(DISTINCT device_id) FROM events WHERE update_id='"+id+"' AND state='succeeded'"))
	assert.Equal(t, "", q("SELECT device_id FROM events WHERE update_id='"+id+"' AND state='succeeded' GROUP BY device_id HAVING COUNT(*) > 1"),
		"devices with two successes")
	assert.Equal(t, "2", q("SELECT COUNT(*) FROM claims"), "the primary's claim and the standby's")
}

func runSQLiteTrim(t *testing.T, db, query string) string {
	t.Helper()
	return strings.TrimSpace(runSQLite(t, db, query))
}

func TestE2E_ReturningOldPrimaryStopsWithStatus3(t *testing.T) {
	b := &mosquitto.Server{Dir: t.TempDir(), ConfigDir: "../../testdata/mosquitto"}
	require.NoError(t, b.Start())
	t.Cleanup(func() { assert.NoError(t, b.Stop()) })
	primary := startExternal(t, b, filepath.Join(t.TempDir(), "data"))
	sm := startSim(t, primary, "--devices", "5", "--id-prefix", "ret-", "--model", "sim-a")
	primary.waitOnline(5)

	// The standby runs on a copy of the primary's database while the
	// primary still runs (a partition that heals, a paused machine).
	copyDir := filepath.Join(t.TempDir(), "copy")
	primary.mustCLI("backup", "--out", copyDir)
	standby := startExternal(t, b, copyDir)

	// The primary loses its client ID, takes it back, sees the newer
	// claim and exits with status 3.
	primary.mu.Lock()
	cmd := primary.cmd
	primary.cmd = nil
	primary.mu.Unlock()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		var ee *exec.ExitError
		require.ErrorAs(t, err, &ee)
		assert.Equal(t, exitFenced, ee.ExitCode())
	case <-time.After(time.Minute): // bounds a hang, not a speed
		t.Fatal("the old primary still runs a minute after the standby claimed the broker")
	}
	assert.Contains(t, primary.logString(), "another orchestrator took over the broker")

	// Restarted on its own, stale, database, it stops at once.
	args := append([]string{"serve", "--data", primary.data, "--http", "127.0.0.1:0"}, primary.serveArgs...)
	rctx, cancel := context.WithTimeout(context.Background(), time.Minute) // bounds a hang, not a speed
	defer cancel()
	out, err := exec.CommandContext(rctx, primary.bin, args...).CombinedOutput()
	require.NoError(t, rctx.Err(), "the old primary restarted on its stale database still runs after a minute:\n%s", out)
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee, "%s", out)
	assert.Equal(t, exitFenced, ee.ExitCode(), "%s", out)
	assert.Contains(t, string(out), "fenced")

	// The standby leads and drives the fleet.
	poll(t, time.Minute, func() bool {
		var st struct {
			Broker struct {
				Leading, Fenced bool
			} `json:"broker"`
		}
		standby.getJSON("/api/v1/stats", &st)
		require.False(t, st.Broker.Fenced)
		return st.Broker.Leading
	}, "the standby leads the broker")
	fw, _ := standby.firmware(64<<10, "1.1.0")
	id := strings.TrimSpace(standby.mustCLI("update", "create", "--firmware", fw))
	_, code := standby.cli("update", "watch", id, "--interval", "250ms")
	require.Zero(t, code)
	for _, d := range sm.stop(t).DevicesDetail {
		assert.Equal(t, 1, d.Installs, d.ID)
	}
}
