package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// readmeBlock returns the first ```bash block of README.md's section
// heading.
func readmeBlock(t *testing.T, heading string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	require.NoError(t, err)
	_, section, ok := strings.Cut(string(b), "\n## "+heading+"\n")
	require.True(t, ok, "README.md has no section %q", heading)
	_, block, ok := strings.Cut(section, "\n```bash\n")
	require.True(t, ok, "section %q has no ```bash block", heading)
	block, _, ok = strings.Cut(block, "\n```\n")
	require.True(t, ok, "unterminated block in %q", heading)
	return block
}

// TestREADME_RunningItYourselfRunsAsWritten runs README.md's "Running it
// yourself" block as a newcomer pastes it, twice in the same directory (a
// second run must work as well): with bash -e, in a new directory whose bin/
// holds the binaries built for the test, on free ports given as MQTT_PORT
// and HTTP_PORT (the block's only parameters). Each run sees its update
// complete, and mosquitto_sub sees the devices succeed.
func TestREADME_RunningItYourselfRunsAsWritten(t *testing.T) {
	orch, sim := binaries(t)
	requireTool(t, "mosquitto_sub")
	block := readmeBlock(t, "Running it yourself")
	dir := t.TempDir()
	require.NoError(t, os.Mkdir(filepath.Join(dir, "bin"), 0o755))
	require.NoError(t, os.Symlink(orch, filepath.Join(dir, "bin", "orchestrator")))
	require.NoError(t, os.Symlink(sim, filepath.Join(dir, "bin", "devicesim")))
	script := filepath.Join(dir, "running-it-yourself.sh")
	require.NoError(t, os.WriteFile(script, []byte(block+"\n"), 0o644))

	env := append(os.Environ(), "MQTT_PORT="+strconv.Itoa(freePort(t)), "HTTP_PORT="+strconv.Itoa(freePort(t)))
	completed := regexp.MustCompile(`(?m)^update (u-[0-9a-f]+) completed: succeeded \d+`)
	var updates []string
	for run := 1; run <= 2; run++ {
		ctx, cancel := context.WithTimeout(context.Background(), cliTimeout)
		cmd := exec.CommandContext(ctx, requireTool(t, "bash"), "-e", script)
		cmd.Dir, cmd.Env = dir, env
		// Its own process group: a failed run leaves no orchestrator,
		// devicesim or mosquitto_sub behind.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
		// A run that fails leaves its background jobs holding the output
		// pipe: stop waiting for it, the group is killed below.
		cmd.WaitDelay = 5 * time.Second
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		cancel()
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		logs := func() string {
			var b strings.Builder
			for _, f := range []string{"flota.log", "devicesim.log"} {
				data, _ := os.ReadFile(filepath.Join(dir, f))
				b.WriteString("\n--- " + f + ":\n" + string(data))
			}
			return b.String()
		}
		require.NoError(t, err, "run %d of the README block:\n%s%s", run, out.String(), logs())
		m := completed.FindStringSubmatch(out.String())
		require.NotNil(t, m, "run %d: the update completes:\n%s", run, out.String())
		updates = append(updates, m[1])
		events, err := os.ReadFile(filepath.Join(dir, "events.log"))
		require.NoError(t, err)
		assert.Contains(t, string(events), `"update":"`+m[1]+`"`, "run %d: mosquitto_sub saw the update's events", run)
		assert.Contains(t, string(events), `"state":"succeeded"`, "run %d", run)
	}
	assert.NotEqual(t, updates[0], updates[1])
	secret, err := os.ReadFile(filepath.Join(dir, "ops", "mosquitto_sub"))
	require.NoError(t, err)
	assert.Regexp(t, `^-i ops\n-u ops\n-P \S+\n$`, string(secret))
	fi, err := os.Stat(filepath.Join(dir, "ops", "mosquitto_sub"))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), "the monitor's secret is its owner's alone")
}
