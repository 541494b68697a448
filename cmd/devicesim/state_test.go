package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestRun_StateDirKeepsDevicesAcrossRuns: a second run on the same
// --state-dir starts the devices on the version they installed, and the
// summary counts installs across runs and for this run.
func TestRun_StateDirKeepsDevicesAcrossRuns(t *testing.T) {
	img := bytes.Repeat([]byte("flota firmware "), 1500)
	sum := sha256.Sum256(img)
	sha := hex.EncodeToString(sum[:])
	broker := scriptedOrchestrator(t, img, sha)
	dir := filepath.Join(t.TempDir(), "state") // created by devicesim

	runOnce := func() summary {
		t.Helper()
		return runFleet(t, broker, "--devices", "3", "--id-prefix", "s-", "--state-dir", dir)
	}

	first := runOnce()
	assert.Equal(t, 3, first.Updated)
	assert.Equal(t, 3, first.Installs)
	assert.Equal(t, 3, first.InstallsThisRun)
	for i := 1; i <= 3; i++ {
		assert.FileExists(t, filepath.Join(dir, deviceID("s-", i)+".json"))
	}

	second := runOnce()
	assert.Equal(t, 3, second.Updated, "the devices start on the version they installed")
	assert.Equal(t, 3, second.Installs)
	assert.Equal(t, 0, second.InstallsThisRun)
	assert.Zero(t, second.BytesReceived)
	for _, d := range second.DevicesDetail {
		assert.Equal(t, "2.0.0", d.Version)
		assert.Equal(t, 1, d.Installs)
		assert.Equal(t, sha, d.ImageSHA256)
	}
}

func TestParseFlags_StateDir(t *testing.T) {
	o, err := parseFlags([]string{"--state-dir", "/tmp/x"})
	require.NoError(t, err)
	assert.Equal(t, "/tmp/x", o.stateDir)
}
