package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestSystemdUnit_VerifiesClean runs systemd-analyze verify on
// deploy/systemd/flota-agent.service, with ExecStart pointing at a freshly
// built flota-agent, and wants no warning at all (an unknown key is only a
// warning to systemd).
func TestSystemdUnit_VerifiesClean(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed")
	}
	if testing.Short() {
		t.Skip("builds flota-agent")
	}
	unit, err := os.ReadFile("../../deploy/systemd/flota-agent.service")
	require.NoError(t, err)
	dir := t.TempDir()
	bin := filepath.Join(dir, "flota-agent")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	require.NoError(t, err, "%s", out)

	text := string(unit)
	require.Contains(t, text, "ExecStart=/usr/local/bin/flota-agent ")
	text = strings.Replace(text, "ExecStart=/usr/local/bin/flota-agent", "ExecStart="+bin, 1)
	path := filepath.Join(dir, "flota-agent.service")
	require.NoError(t, os.WriteFile(path, []byte(text), 0o644))
	out, err = exec.Command(analyze, "verify", path).CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.Empty(t, strings.TrimSpace(string(out)), "systemd-analyze verify warnings")
}
