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
	assert.Equal(t, "failure_threshold", s.sqlite3("SELECT reason FROM events WHERE update_id='"+id+"' AND type='update' AND state='aborted'"))
	sum := sm.stop(t)
	assert.Equal(t, st.Counts[fleet.StateSucceeded], sum.Updated)
}

func TestE2E_CancelStopsTransfersAndAgentsReportCancelled(t *testing.T) {
	s := startServer(t)
	sm := startSim(t, s, "--devices", "12", "--id-prefix", "cx-", "--model", "sim-a", "--install-delay", "300ms")
	s.waitOnline(12)
	fw, _ := s.firmware(4<<20, "1.1.0")
	id := strings.TrimSpace(s.mustCLI("update", "create", "--firmware", fw, "--max-in-flight", "4", "--chunk-size", "4096", "--window", "2"))
	poll(t, 20*time.Second, func() bool { return s.status(id).Counts[fleet.StateDownloading] > 0 }, "transfers under way")
	s.mustCLI("update", "cancel", id)
	poll(t, 20*time.Second, func() bool {
		st := s.status(id)
		return st.Counts[fleet.StateDownloaded]+st.Counts[fleet.StateVerified]+st.Counts[fleet.StateInstalling]+st.Counts[fleet.StateRebooting] == 0
	}, "no device left mid-install")
	st := s.status(id)
	assert.Equal(t, fleet.UpdateCancelled, st.State)

	var rows []fleet.Progress
	require.NoError(t, json.Unmarshal([]byte(s.mustCLI("update", "devices", id, "--state", "cancelled", "--json")), &rows))
	interrupted := map[string]bool{}
	for _, p := range rows {
		if p.Attempts > 0 {
			interrupted[p.DeviceID] = true
		}
	}
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
