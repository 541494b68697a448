package main

import (
	"encoding/json"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
)

// TestE2E_PowerCutsOnASlowLinkStillUpdateOnce: every device of a fleet on a
// slow, delayed link loses power once mid-download; with and without a state
// directory, the orchestrator resumes them all (from the checkpoint, or from
// scratch) and each installs exactly once.
func TestE2E_PowerCutsOnASlowLinkStillUpdateOnce(t *testing.T) {
	const devices = 8
	for _, persistent := range []bool{true, false} {
		t.Run(map[bool]string{true: "state dir", false: "no state"}[persistent], func(t *testing.T) {
			s := startServer(t)
			args := []string{"--devices", strconv.Itoa(devices), "--id-prefix", "cut-", "--model", "sim-a",
				"--reboot-mid-download", "1", "--bandwidth", "2MB", "--latency", "5ms", "--seed", "3"}
			if persistent {
				args = append(args, "--state-dir", t.TempDir())
			}
			sm := startSim(t, s, args...)
			s.waitOnline(devices)
			fw, digest := s.firmware(256*1024, "1.1.0")
			id := strings.TrimSpace(s.mustCLI("update", "create", "--firmware", fw, "--chunk-size", "4096"))
			_, code := s.cli("update", "watch", id, "--interval", "200ms")
			require.Zero(t, code)
			assert.Equal(t, map[fleet.DeviceState]int{fleet.StateSucceeded: devices}, s.status(id).Counts)

			sum := sm.stop(t)
			for _, d := range sum.DevicesDetail {
				assert.Equal(t, "1.1.0", d.Version, d.ID)
				assert.Equal(t, 1, d.Installs, d.ID)
				assert.Equal(t, digest, d.ImageSHA256, d.ID)
			}
			b, err := os.ReadFile(sm.summary)
			require.NoError(t, err)
			var extra struct {
				PowerCuts int `json:"power_cuts"`
				Outcomes  struct {
					Updated int `json:"updated"`
				} `json:"outcomes"`
				DeviceTime struct {
					Count int `json:"count"`
				} `json:"device_time"`
			}
			require.NoError(t, json.Unmarshal(b, &extra))
			assert.Equal(t, devices, extra.PowerCuts)
			assert.Equal(t, devices, extra.Outcomes.Updated)
			assert.Equal(t, devices, extra.DeviceTime.Count)
		})
	}
}
