package main

import (
	"context"
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
)

func TestCompletion_FlagsEachCommandTakes(t *testing.T) {
	words := completionWords()
	assert.NotContains(t, words["keys generate"], "--server", "keys generate runs without a server")
	assert.Contains(t, words["token new"], "--server", "token new asks the server to keep the token")
	assert.Contains(t, words["token revoke"], "--token")
	for _, f := range []string{"--broker", "--broker-username", "--broker-ca", "--broker-cert", "--broker-key", "--broker-client-id", "--firmware-public-key"} {
		assert.Contains(t, words["serve"], f)
	}
	assert.Contains(t, words["update events"], "--device")
	assert.Contains(t, words["device list"], "--tag")
	assert.Contains(t, words["device"], "delete")
	assert.Contains(t, words["firmware"], "delete")
}

// TestCompletion_CompletesIDsFromTheAPI runs the bash script with the
// built orchestrator against a server with devices, firmware and an
// update: IDs complete when a token is set, and nothing is asked without.
func TestCompletion_CompletesIDsFromTheAPI(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("no bash to run the script")
	}
	orch, _ := binaries(t)
	st, server := newAPI(t)
	ctx := context.Background()
	for _, id := range []string{"sensor-0001", "sensor-0002", "gateway-1"} {
		require.NoError(t, st.SaveDevice(fleet.Device{ID: id, Model: "m1", Version: "1.0.0"}))
	}
	require.NoError(t, st.Flush(ctx))
	fw, err := st.AddFirmware(ctx, fleet.Firmware{Version: "2.0.0"}, strings.NewReader("image"))
	require.NoError(t, err)

	script := runCLI(t, "", "completion", "bash").stdout + `
COMP_WORDS=(` + orch + ` device delete sen); COMP_CWORD=3; _orchestrator; echo "${COMPREPLY[*]}"
COMP_WORDS=(` + orch + ` update create --firmware ""); COMP_CWORD=4; _orchestrator; echo "${COMPREPLY[*]}"
COMP_WORDS=(` + orch + ` keys generate --); COMP_CWORD=3; _orchestrator; echo "${COMPREPLY[*]}"
`
	run := func(token string) []string {
		cmd := exec.Command(bash, "-c", script)
		cmd.Env = []string{"PATH=/usr/bin:/bin", "FLOTA_SERVER=" + server, "FLOTA_TOKEN=" + token}
		cmd.Dir = t.TempDir() // no file names to fall back to
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "%s", out)
		return strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
	}
	lines := run(testAdminToken)
	require.Len(t, lines, 3)
	assert.Equal(t, "sensor-0001 sensor-0002", lines[0])
	assert.Equal(t, fw.ID, lines[1])
	assert.Equal(t, "--out --help", lines[2])

	lines = run("")
	require.Len(t, lines, 3)
	assert.Empty(t, lines[0], "no token: the API is not asked")
}
