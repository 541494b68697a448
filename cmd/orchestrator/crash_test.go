package main

// Crash tests with real processes: the orchestrator and devicesim killed
// with SIGKILL mid-update and restarted on the same state.

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
)

func TestE2E_OrchestratorKilledThreeTimesLosesNothing(t *testing.T) {
	const (
		devices = 300
		late    = heldBack // connect only after the last kill
		size    = 1 << 20
	)
	s := startServer(t)
	startLate := s.holdBack("crashlate-")
	sm := startSim(t, s, "--devices", strconv.Itoa(devices), "--id-prefix", "crash-", "--model", "sim-a",
		"--reboot-delay", "300ms")
	s.waitOnline(devices)
	fw, digest := s.firmware(size, "1.1.0")
	id := strings.TrimSpace(s.mustCLI("update", "create", "--firmware", fw, "--max-in-flight", "100", "--window", "4"))

	// The late devices are targets that have not connected yet, so the
	// update cannot end before the kills however fast the machine is. Each
	// kill comes once a further quarter of the fleet's bytes is acked.
	all := int64(devices+late) * size
	for kill := 1; kill <= 3; kill++ {
		want := int64(kill) * all / 4
		poll(t, 5*time.Minute, func() bool { return s.status(id).BytesAcked >= want },
			fmt.Sprintf("%d bytes acked before kill %d", want, kill))
		st := s.status(id)
		require.False(t, st.State.Terminal(), "the update waits for the late devices: %s %v", st.State, st.Counts)
		t.Logf("kill %d at %d/%d succeeded, %d in flight", kill, st.Counts[fleet.StateSucceeded], devices+late, st.InFlight)
		s.kill()
		s.restart()
	}
	lateSim := startLate()

	_, code := s.cli("update", "watch", id, "--interval", "250ms")
	require.Zero(t, code, "the update completes after the restarts")
	st := s.status(id)
	assert.Equal(t, fleet.UpdateCompleted, st.State)
	assert.Equal(t, map[fleet.DeviceState]int{fleet.StateSucceeded: devices + late}, st.Counts,
		"the same final states as a run without a crash")

	// Every device installed exactly once, and received the whole image
	// with no restart from zero: at most 1.5x the bytes of a clean run.
	detail := append(sm.stop(t).DevicesDetail, lateSim.stop(t).DevicesDetail...)
	require.Len(t, detail, devices+late)
	var received int64
	for _, d := range detail {
		assert.Equal(t, 1, d.Installs, d.ID)
		assert.Equal(t, "1.1.0", d.Version, d.ID)
		assert.Equal(t, digest, d.ImageSHA256, d.ID)
		received += d.BytesReceived
	}
	assert.LessOrEqual(t, received, all*3/2, "bytes delivered")
	t.Logf("bytes received: %.3fx the image size times the fleet", float64(received)/float64(all))
	// The counters survive the kills (docs/PROTOCOL.md §14.2): bytes acked
	// is every device's image once, within 1 %; bytes sent covers it, and
	// falls short of what the devices received by at most the chunks sent
	// between the last checkpoint and each kill.
	t.Logf("bytes_acked %.4fx the images, bytes_sent %.4fx what devices received, resends %d",
		float64(st.BytesAcked)/float64(all), float64(st.BytesSent)/float64(received), st.Resends)
	assert.InEpsilon(t, all, st.BytesAcked, 0.01, "bytes acked")
	assert.GreaterOrEqual(t, st.BytesSent, st.BytesAcked, "bytes sent")
	assert.InEpsilon(t, received, st.BytesSent, 0.05, "bytes sent against the bytes devices received")

	// Sequence numbers grew across the restarts.
	var evs []fleet.Event
	require.NoError(t, json.Unmarshal([]byte(s.mustCLI("update", "events", id, "--json")), &evs))
	require.NotEmpty(t, evs)
	for i := 1; i < len(evs); i++ {
		require.Greater(t, evs[i].Seq, evs[i-1].Seq)
	}

	// The log holds at most one succeeded event per device. A kill can lose
	// the events of the writer's last batch (up to 50 ms; such an event was
	// never published either), so a few may be missing.
	require.NoError(t, s.cmdTerm())
	total, err := strconv.Atoi(s.sqlite3("SELECT count(*) FROM events WHERE update_id='" + id + "' AND state='succeeded'"))
	require.NoError(t, err)
	distinct, err := strconv.Atoi(s.sqlite3("SELECT count(DISTINCT device_id) FROM events WHERE update_id='" + id + "' AND state='succeeded'"))
	require.NoError(t, err)
	assert.Equal(t, distinct, total, "no device succeeded twice")
	assert.GreaterOrEqual(t, total, (devices+late)*9/10)
	// Reports the devices' clients send again after each reconnect (QoS 1
	// without a PUBACK) are stale, not illegal: devicesim behaves.
	assert.Empty(t, s.sqlite3("SELECT from_state||'>'||state||' '||count(*) FROM events WHERE update_id='"+id+"' AND type='illegal_transition' GROUP BY from_state, state"),
		"illegal transitions")
	assert.Equal(t, "0", s.sqlite3("SELECT count(*) FROM events a JOIN events b ON b.seq = a.seq + 1 WHERE b.time < a.time"),
		"sequence order is time order")
}

func TestE2E_DevicesimKilledResumesFromItsStateDir(t *testing.T) {
	const devices = 20
	s := startServer(t)
	stateDir := filepath.Join(t.TempDir(), "state")
	args := []string{"--devices", strconv.Itoa(devices), "--id-prefix", "persist-", "--model", "sim-a", "--state-dir", stateDir}
	first := startSim(t, s, args...)
	// Held-back targets keep the update running past the kill, however
	// fast the machine moves the others' images.
	release := s.holdBack("persist-held-")
	s.waitOnline(devices)
	fw, digest := s.firmware(4<<20, "1.1.0")
	id := strings.TrimSpace(s.mustCLI("update", "create", "--firmware", fw, "--max-in-flight", "5", "--chunk-size", "4096", "--window", "2"))

	// Kill devicesim once a device saved a checkpoint partway through (a
	// byte count alone can be reached before any checkpoint).
	poll(t, 30*time.Second, func() bool { return checkpointedMidTransfer(t, stateDir) }, "a checkpoint mid-transfer")
	require.NoError(t, first.cmd.Process.Signal(syscall.SIGKILL))
	<-first.done
	first.done <- nil
	before := s.status(id)
	require.False(t, before.State.Terminal())

	second := startSim(t, s, args...)
	release()
	_, code := s.cli("update", "watch", id, "--interval", "250ms")
	require.Zero(t, code)
	st := s.status(id)
	assert.Equal(t, map[fleet.DeviceState]int{fleet.StateSucceeded: devices + heldBack}, st.Counts)

	sum := second.stop(t)
	require.Len(t, sum.DevicesDetail, devices)
	var received int64
	for _, d := range sum.DevicesDetail {
		assert.Equal(t, "1.1.0", d.Version, d.ID)
		assert.Equal(t, 1, d.Installs, d.ID)
		assert.Equal(t, digest, d.ImageSHA256, d.ID)
		received += d.BytesReceived
	}
	// The devices that were partway resumed: the second run received less
	// than the whole fleet's images.
	assert.Less(t, received, int64(devices)*(4<<20), "resumed devices did not start from zero")
}

func TestE2E_SIGTERMShutsDownCleanly(t *testing.T) {
	s := startServer(t)
	sm := startSim(t, s, "--devices", "10", "--id-prefix", "term-", "--model", "sim-a")
	s.waitOnline(10)
	fw, _ := s.firmware(64*1024, "1.1.0")
	id := strings.TrimSpace(s.mustCLI("update", "create", "--firmware", fw))
	_, code := s.cli("update", "watch", id, "--interval", "200ms")
	require.Zero(t, code)

	s.mu.Lock()
	cmd := s.cmd
	s.cmd = nil
	s.mu.Unlock()
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		assert.NoError(t, err, "exit status 0")
	case <-time.After(time.Minute): // bounds a hang, not a speed
		_ = cmd.Process.Kill()
		t.Fatalf("still running a minute after SIGTERM")
	}
	assert.Contains(t, s.logString(), "shutting down")

	// Everything was flushed: the log is complete and the file is sound.
	assert.Equal(t, "ok", s.sqlite3("PRAGMA integrity_check"))
	assert.Equal(t, "10", s.sqlite3("SELECT count(*) FROM events WHERE update_id='"+id+"' AND state='succeeded'"))
	assert.Equal(t, "completed", s.sqlite3("SELECT state FROM updates WHERE id='"+id+"'"))
	sm.stop(t)
}

// cmdTerm stops the server with SIGTERM, so that its store is flushed.
func (s *server) cmdTerm() error {
	s.mu.Lock()
	cmd := s.cmd
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return nil
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	return cmd.Wait()
}

// checkpointedMidTransfer reports whether a device state file in dir holds
// a download partway through.
func checkpointedMidTransfer(t *testing.T, dir string) bool {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	require.NoError(t, err)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // being replaced
		}
		var st struct {
			Held *struct {
				Offset int64             `json:"offset"`
				State  fleet.DeviceState `json:"state"`
			} `json:"held"`
		}
		if json.Unmarshal(b, &st) == nil && st.Held != nil && st.Held.State == fleet.StateDownloading && st.Held.Offset > 0 {
			return true
		}
	}
	return false
}
