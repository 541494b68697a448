package main

// Rollout control end to end: the CLI's policy flags against the real
// orchestrator and devicesim processes.

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
)

func TestE2E_HalfTheInstallsFailingAbortsTheUpdate(t *testing.T) {
	s := startServer(t)
	sm := startSim(t, s, "--devices", "100", "--id-prefix", "half-", "--model", "sim-a", "--fail-install", "0.5", "--seed", "42")
	s.waitOnline(100)
	fw, _ := s.firmware(32*1024, "1.1.0")
	id := strings.TrimSpace(s.mustCLI("update", "create", "--firmware", fw, "--max-in-flight", "5", "--max-attempts", "1",
		"--failure-threshold", "20%", "--failure-min", "10"))
	_, code := s.cli("update", "watch", id, "--interval", "200ms")
	assert.Equal(t, 1, code, "watch exits non-zero on an aborted update")

	poll(t, 20*time.Second, func() bool {
		st := s.status(id)
		return st.Counts[fleet.StateDownloaded]+st.Counts[fleet.StateVerified]+st.Counts[fleet.StateInstalling]+st.Counts[fleet.StateRebooting] == 0
	}, "devices that were installing finish")
	st := s.status(id)
	assert.Equal(t, fleet.UpdateAborted, st.State)
	n, err := strconv.Atoi(s.sqlite3("SELECT count(*) FROM progress WHERE update_id='" + id + "' AND attempts > 0"))
	require.NoError(t, err)
	assert.Less(t, n, 40, "far fewer devices attempted than the 100 targeted")
	poll(t, 30*time.Second, func() bool {
		return s.sqlite3("SELECT reason FROM events WHERE update_id='"+id+"' AND type='update' AND state='aborted'") == "failure_threshold"
	}, "the abort's reason is in the event log")
	sum := sm.stop(t)
	assert.Equal(t, st.Counts[fleet.StateSucceeded], sum.Updated)
}

func TestE2E_CancelStopsTransfersAndAgentsReportCancelled(t *testing.T) {
	s := startServer(t)
	// At 512 KB/s a 4 MiB image takes 8 s per device: the cancel lands while
	// transfers are under way, not in a gap where every device in flight
	// installs, as it could on a loaded machine with unlimited links.
	sm := startSim(t, s, "--devices", "12", "--id-prefix", "cx-", "--model", "sim-a", "--install-delay", "300ms",
		"--bandwidth", "512KB")
	s.waitOnline(12)
	fw, _ := s.firmware(4<<20, "1.1.0")
	id := strings.TrimSpace(s.mustCLI("update", "create", "--firmware", fw, "--max-in-flight", "4", "--chunk-size", "4096", "--window", "2"))
	poll(t, 20*time.Second, func() bool { return s.status(id).Counts[fleet.StateDownloading] > 0 }, "transfers under way")
	s.mustCLI("update", "cancel", id)
	// Transferring devices end when they answer the cancel; the store
	// catches up within a batch interval.
	interrupted := map[string]bool{}
	poll(t, 20*time.Second, func() bool {
		st := s.status(id)
		if st.Finished() != st.Total {
			return false
		}
		var rows []fleet.Progress
		require.NoError(t, json.Unmarshal([]byte(s.mustCLI("update", "devices", id, "--state", "cancelled", "--json")), &rows))
		clear(interrupted)
		for _, p := range rows {
			if p.Attempts > 0 {
				interrupted[p.DeviceID] = true
			}
		}
		return len(rows) == st.Counts[fleet.StateCancelled]
	}, "every device ended, none left mid-install")
	assert.Equal(t, fleet.UpdateCancelled, s.status(id).State)
	require.NotEmpty(t, interrupted, "some transfers were cancelled mid-way")
	sum := sm.stop(t)
	for _, d := range sum.DevicesDetail {
		if interrupted[d.ID] {
			assert.Equal(t, string(fleet.ReasonOperator), d.Reason, "%s reported cancelled", d.ID)
			assert.Equal(t, "1.0.0", d.Version, d.ID)
			assert.Zero(t, d.Installs, d.ID)
		}
	}
}

func TestE2E_DynamicUpdatePicksUpADeviceStartedLater(t *testing.T) {
	s := startServer(t)
	startSim(t, s, "--devices", "3", "--id-prefix", "dyn-", "--model", "sim-a")
	s.waitOnline(3)
	fw, _ := s.firmware(16*1024, "1.1.0")
	id := strings.TrimSpace(s.mustCLI("update", "create", "--firmware", fw, "--select", "model=sim-a", "--dynamic"))
	poll(t, 20*time.Second, func() bool { return s.status(id).Counts[fleet.StateSucceeded] == 3 }, "first devices")
	late := startSim(t, s, "--devices", "2", "--id-prefix", "late-", "--model", "sim-a")
	poll(t, 20*time.Second, func() bool { return s.status(id).Counts[fleet.StateSucceeded] == 5 }, "late devices join")
	assert.Equal(t, fleet.UpdateRunning, s.status(id).State)
	assert.Equal(t, 2, late.stop(t).Updated)

	// Bad flags are refused before anything is sent.
	for _, bad := range [][]string{
		{"--phases", "50%,10%"}, {"--failure-threshold", "lots"}, {"--start-at", "tomorrow"},
		{"--maintenance", "25:00-26:00"}, {"--timezone", "Europe/Paris"},
	} {
		_, code := s.cli(append([]string{"update", "create", "--firmware", fw}, bad...)...)
		assert.Equal(t, 2, code, "%v", bad)
	}
}

func TestE2E_FailingCanaryPhaseStopsAtItsGate(t *testing.T) {
	s := startServer(t)
	// Devices start in ID order: the "a-" devices, whose installs fail, are
	// the canary phase.
	startSim(t, s, "--devices", "2", "--id-prefix", "a-", "--model", "sim-a", "--fail-install", "1")
	rest := startSim(t, s, "--devices", "18", "--id-prefix", "b-", "--model", "sim-a")
	s.waitOnline(20)
	fw, _ := s.firmware(16*1024, "1.1.0")
	id := strings.TrimSpace(s.mustCLI("update", "create", "--firmware", fw, "--phases", "10%,100%", "--max-attempts", "1"))
	poll(t, 20*time.Second, func() bool { return s.status(id).State == fleet.UpdatePaused }, "the rollout stops at the gate")
	st := s.status(id)
	assert.Equal(t, "failed", st.Gate)
	assert.Equal(t, 18, st.Counts[fleet.StateQueued], "nothing past the canary started")
	// Text status says why nothing starts, with the gate's figures, and
	// promises no ETA.
	out := s.mustCLI("update", "status", id)
	assert.Contains(t, out, "phase 1 gate failed (succeeded=0 needed=2 of 2)")
	assert.Regexp(t, `(?m)^eta\s+-$`, out)
	poll(t, 30*time.Second, func() bool {
		return s.sqlite3("SELECT reason FROM events WHERE update_id='"+id+"' AND type='phase' AND state='failed'") == "gate_failed"
	}, "the failed gate is in the event log")

	// The operator cancels; nobody past the canary was touched.
	s.mustCLI("update", "cancel", id)
	poll(t, 20*time.Second, func() bool { return s.status(id).State == fleet.UpdateCancelled }, "cancelled")
	assert.Zero(t, rest.stop(t).Installs)
}

func TestE2E_PauseHoldsAdmissionAndResumeContinues(t *testing.T) {
	s := startServer(t)
	// Held-back targets stay queued whenever the pause lands.
	late := s.holdBack("prlate-")
	startSim(t, s, "--devices", "8", "--id-prefix", "pr-", "--model", "sim-a", "--install-delay", "300ms")
	s.waitOnline(8)
	fw, _ := s.firmware(64*1024, "1.1.0")
	id := strings.TrimSpace(s.mustCLI("update", "create", "--firmware", fw, "--max-in-flight", "1"))
	s.mustCLI("update", "pause", id)
	// The engine applied the pause before the command returned. Devices
	// finish one at a time (install and reboot take 400 ms), so a slow
	// machine may have admitted a second one before: count from here.
	paused := s.status(id)
	require.Equal(t, fleet.UpdatePaused, paused.State)
	queued := paused.Counts[fleet.StateQueued]
	require.Positive(t, queued, "devices left to hold back")
	poll(t, 20*time.Second, func() bool { return s.status(id).InFlight == 0 }, "the transfer in flight finishes")
	st := s.status(id)
	assert.Equal(t, fleet.UpdatePaused, st.State)
	assert.Equal(t, queued, st.Counts[fleet.StateQueued], "no device admitted while paused")
	started, err := strconv.Atoi(s.sqlite3("SELECT count(*) FROM progress WHERE update_id='" + id + "' AND attempts > 0"))
	require.NoError(t, err)
	assert.LessOrEqual(t, started, paused.Total-queued, "the store agrees")
	s.mustCLI("update", "resume", id)
	late()
	_, code := s.cli("update", "watch", id, "--interval", "200ms")
	require.Zero(t, code)
	assert.Equal(t, 8+heldBack, s.status(id).Counts[fleet.StateSucceeded])
}
