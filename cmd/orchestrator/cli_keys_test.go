package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
)

func TestCLI_KeysGenerateAndSignedFirmwareAdd(t *testing.T) {
	_, server := newAPI(t)
	dir := filepath.Join(t.TempDir(), "keys")
	r := runCLI(t, server, "keys", "generate", "--out", dir)
	require.Equal(t, exitOK, r.code, r.stderr)
	assert.Contains(t, r.stdout, filepath.Join(dir, "firmware.key"))
	st, err := os.Stat(dir)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o700), st.Mode().Perm())
	pub, err := protocol.ReadPublicKeyFile(filepath.Join(dir, "firmware.pub"))
	require.NoError(t, err)

	r = runCLI(t, server, "keys", "generate", "--out", dir)
	assert.Equal(t, exitFail, r.code)
	assert.Contains(t, r.stderr, "refusing to overwrite")

	file := filepath.Join(t.TempDir(), "app.bin")
	require.NoError(t, os.WriteFile(file, bytes.Repeat([]byte{7}, 3000), 0o644))
	key := filepath.Join(dir, "firmware.key")
	r = runCLI(t, server, "firmware", "add", file, "--version", "1.0.0", "--model", "m", "--sign-key", key)
	require.Equal(t, exitOK, r.code, r.stderr)
	r = runCLI(t, server, "firmware", "add", file, "--version", "0.9.0", "--sign-key", key, "--allow-downgrade")
	require.Equal(t, exitOK, r.code, r.stderr)
	r = runCLI(t, server, "firmware", "add", file, "--version", "0.8.0")
	require.Equal(t, exitOK, r.code, r.stderr)

	r = runCLI(t, server, "firmware", "list", "--json")
	require.Equal(t, exitOK, r.code, r.stderr)
	var fws []fleet.Firmware
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &fws))
	require.Len(t, fws, 3)
	byVersion := map[string]fleet.Firmware{}
	for _, fw := range fws {
		byVersion[fw.Version] = fw
	}
	assert.NoError(t, protocol.VerifyFirmware(pub, protocol.FirmwareInfoOf(byVersion["1.0.0"])))
	assert.NoError(t, protocol.VerifyFirmware(pub, protocol.FirmwareInfoOf(byVersion["0.9.0"])))
	assert.True(t, byVersion["0.9.0"].AllowDowngrade)
	assert.ErrorIs(t, protocol.VerifyFirmware(pub, protocol.FirmwareInfoOf(byVersion["0.8.0"])), protocol.ErrNoSignature)

	r = runCLI(t, server, "firmware", "list")
	require.Equal(t, exitOK, r.code, r.stderr)
	assert.Contains(t, r.stdout, "SIGNED")
	assert.Contains(t, r.stdout, "yes, downgrade")

	r = runCLI(t, server, "firmware", "add", file, "--version", "1", "--sign-key", filepath.Join(dir, "firmware.pub"))
	assert.Equal(t, exitFail, r.code)
	assert.True(t, strings.Contains(r.stderr, "PRIVATE KEY"), r.stderr)
}
