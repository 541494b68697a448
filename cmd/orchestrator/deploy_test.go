package main

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// unitPath is the orchestrator's systemd unit.
const unitPath = "../../deploy/systemd/flota-orchestrator.service"

// unitSettings returns the KEY=VALUE settings of a unit file, in order.
func unitSettings(t *testing.T, path string) [][2]string {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	var out [][2]string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
			out = append(out, [2]string{k, v})
		}
	}
	require.NoError(t, sc.Err())
	return out
}

// The unit passes systemd-analyze verify (unknown keys, bad values, a
// command that is not executable), with its ExecStart pointed at a real
// build; its command line and environment are flags serve knows.
func TestSystemdUnit_VerifiesAndStartsServeWithKnownFlags(t *testing.T) {
	analyze := requireTool(t, "systemd-analyze")
	bin, _ := binaries(t)
	settings := unitSettings(t, unitPath)
	got := map[string]string{}
	var execStart string
	var env []string
	for _, kv := range settings {
		got[kv[0]] = kv[1]
		switch kv[0] {
		case "ExecStart":
			execStart = kv[1]
		case "Environment":
			env = append(env, kv[1])
		}
	}
	for k, v := range map[string]string{"User": "flota", "StateDirectory": "flota", "Restart": "on-failure",
		"LimitNOFILE": "65536", "NoNewPrivileges": "yes", "ProtectSystem": "strict", "CapabilityBoundingSet": ""} {
		assert.Equal(t, v, got[k], k)
	}
	require.True(t, strings.HasPrefix(execStart, "/usr/local/bin/orchestrator serve "), execStart)

	unit, err := os.ReadFile(unitPath)
	require.NoError(t, err)
	dir := t.TempDir()
	test := filepath.Join(dir, "flota-orchestrator.service")
	require.NoError(t, os.WriteFile(test, []byte(strings.Replace(string(unit), "ExecStart=/usr/local/bin/orchestrator", "ExecStart="+bin, 1)), 0o644))
	out, err := exec.Command(analyze, "verify", test).CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Empty(t, strings.TrimSpace(string(out)), "systemd-analyze verify warns")

	// The command line parses (--print-config stops before reading the file).
	args := append(strings.Fields(execStart)[1:], "--print-config")
	printed, err := exec.Command(bin, args...).CombinedOutput()
	require.NoError(t, err, "%s", printed)
	for _, e := range env {
		name, _, _ := strings.Cut(e, "=")
		assert.Contains(t, string(printed), "# env "+name+"\n", "Environment=%s names no flag of serve", e)
	}
}
