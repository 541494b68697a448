package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/agent"
)

func TestParseRate(t *testing.T) {
	good := map[string]int64{
		"20000": 20000, "20KB": 20000, "20kB": 20000, "20k": 20000, "20K": 20000, "20KiB": 20480,
		"1MB": 1000000, "1MiB": 1 << 20, "2.5MB": 2500000, "20KB/s": 20000, " 300 B ": 300, "0": 0,
	}
	for in, want := range good {
		got, err := parseRate(in)
		if assert.NoError(t, err, in) {
			assert.Equal(t, want, got, in)
		}
	}
	for _, in := range []string{"", "KB", "20XB", "20 parsecs", "-20KB", "-1", "NaN", "Inf", "0x10", "0.5", "1e30GB"} {
		_, err := parseRate(in)
		assert.Error(t, err, in)
	}
}

// TestParseFlags_NetworkProfile: the network and power-cut flags parse,
// and bad values are usage errors that name the flag.
func TestParseFlags_NetworkProfile(t *testing.T) {
	o, err := parseFlags([]string{"--bandwidth", "20KB", "--latency", "300ms", "--reboot-mid-download", "0.25"})
	require.NoError(t, err)
	assert.Equal(t, int64(20000), o.bandwidth)
	assert.Equal(t, 300*time.Millisecond, o.latency)
	assert.Equal(t, 0.25, o.faults.RebootMidDownload)
	assert.Equal(t, agent.DefaultKeepAlive, keepAlive(o.keepAlive))
	o, err = parseFlags([]string{"--keepalive", "0"})
	require.NoError(t, err)
	assert.Negative(t, keepAlive(o.keepAlive), "0 turns the keepalive off")

	bad := map[string][]string{
		"bandwidth suffix":     {"--bandwidth", "20XB"},
		"bandwidth negative":   {"--bandwidth", "-5KB"},
		"latency negative":     {"--latency", "-1ms"},
		"latency no unit":      {"--latency", "300"},
		"reboot probability":   {"--reboot-mid-download", "2"},
		"reboot negative":      {"--reboot-mid-download", "-0.5"},
		"reboot not a number ": {"--reboot-mid-download", "often"},
		"keepalive negative":   {"--keepalive", "-1s"},
		"keepalive too short":  {"--keepalive", "500ms"},
	}
	for name, args := range bad {
		t.Run(name, func(t *testing.T) {
			_, err := parseFlags(args)
			var ue *usageError
			require.ErrorAs(t, err, &ue)
			assert.Contains(t, err.Error(), args[0][2:], "the error names the flag")
		})
	}
}

// TestRun_RebootMidDownload: every device loses power once mid-transfer and
// still ends on the new version with one install, with and without
// --state-dir; the summary counts the power cuts, the outcomes and the
// per-device times, and records the profile.
func TestRun_RebootMidDownload(t *testing.T) {
	img := bytes.Repeat([]byte("flota firmware "), 1500)
	sum := sha256.Sum256(img)
	sha := hex.EncodeToString(sum[:])
	for _, persistent := range []bool{false, true} {
		t.Run(map[bool]string{false: "from scratch", true: "state dir"}[persistent], func(t *testing.T) {
			broker := scriptedOrchestrator(t, img, sha)
			file := filepath.Join(t.TempDir(), "summary.json")
			args := []string{
				"--broker", broker, "--devices", "3", "--id-prefix", "r-", "--reboot-delay", "20ms",
				"--reboot-mid-download", "1", "--latency", "2ms", "--bandwidth", "1MB", "--seed", "11", "--keepalive", "0",
				"--exit-when-updated", "2.0.0", "--summary", file,
			}
			if persistent {
				args = append(args, "--state-dir", t.TempDir())
			}
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			var out bytes.Buffer
			require.NoError(t, run(ctx, args, &out))
			require.NoError(t, ctx.Err(), "run ended by the test timeout")

			b, err := os.ReadFile(file)
			require.NoError(t, err)
			var s summary
			require.NoError(t, json.Unmarshal(b, &s))
			assert.Equal(t, 3, s.Updated)
			assert.Equal(t, 3, s.InstallsThisRun)
			assert.Equal(t, 3, s.PowerCuts)
			assert.Equal(t, outcomes{Updated: 3}, s.Outcomes)
			assert.Equal(t, 3, s.DeviceTime.Count)
			assert.Positive(t, s.DeviceTime.P50Ms)
			assert.LessOrEqual(t, s.DeviceTime.P50Ms, s.DeviceTime.P90Ms)
			assert.LessOrEqual(t, s.DeviceTime.P99Ms, s.DeviceTime.MaxMs)
			assert.Equal(t, profile{BandwidthBytesPerSec: 1000000, LatencyMs: 2, RebootMidDownload: 1, RebootDelayMs: 20,
				ConnectRate: 500, Persistent: persistent, Seed: 11}, s.Profile)
			assert.Positive(t, s.Process.HeapInuseBytes)
			assert.Positive(t, s.Process.Goroutines)
			for _, d := range s.DevicesDetail {
				assert.Equal(t, 1, d.Installs)
				assert.Equal(t, sha, d.ImageSHA256)
			}
			assert.Contains(t, out.String(), "power_cuts      3")
		})
	}
}

func TestOutcomeStats_CountsEachDeviceOnce(t *testing.T) {
	o := options{version: "1.0.0", exitWhenUpdated: "2.0.0"}
	all := []agent.Stats{
		{Version: "2.0.0", EndTime: 3 * time.Second},
		{Version: "1.0.0", Failed: true, LastReason: "install_failed", EndTime: time.Second},
		{Version: "1.0.0", Holding: true, EndTime: time.Hour}, // an older transfer's time: not counted
		{Version: "1.0.0", State: "cancelled", EndTime: 2 * time.Second},
		{Version: "1.0.0"},
	}
	oc, ts := outcomeStats(o, all)
	assert.Equal(t, outcomes{Updated: 1, Failed: 1, Cancelled: 1, InProgress: 1, Untouched: 1,
		Reasons: map[string]int{"install_failed": 1}}, oc)
	assert.Equal(t, timeStats{Count: 3, P50Ms: 2000, P90Ms: 3000, P99Ms: 3000, MaxMs: 3000}, ts)
}
