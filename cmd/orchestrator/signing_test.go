package main

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
)

// keyPair runs `orchestrator keys generate` into a new directory and returns
// the private and public key paths.
func keyPair(t *testing.T) (priv, pub string) {
	t.Helper()
	orch, _ := binaries(t)
	dir := filepath.Join(t.TempDir(), "keys")
	out, err := exec.Command(orch, "keys", "generate", "--out", dir).CombinedOutput()
	require.NoError(t, err, "%s", out)
	return filepath.Join(dir, "firmware.key"), filepath.Join(dir, "firmware.pub")
}

// image writes a random image file and returns its path and SHA-256.
func image(t *testing.T, size int) (path, digest string) {
	t.Helper()
	img := make([]byte, size)
	_, _ = rand.Read(img)
	path = filepath.Join(t.TempDir(), "fw.bin")
	require.NoError(t, os.WriteFile(path, img, 0o644))
	sum := sha256.Sum256(img)
	return path, hex.EncodeToString(sum[:])
}

// addSigned uploads path as version, signed with key, and returns its ID.
func (s *server) addSigned(path, version, key string, extra ...string) string {
	s.t.Helper()
	args := append([]string{"firmware", "add", path, "--version", version, "--name", "app", "--model", "sim-a", "--sign-key", key}, extra...)
	id := strings.TrimSpace(s.mustCLI(args...))
	require.True(s.t, strings.HasPrefix(id, "fw-"), "firmware ID %q", id)
	return id
}

// runUpdate creates an update of fw for the devices tagged grp=group and
// waits until it ends.
func (s *server) runUpdate(fw, group string, extra ...string) (string, fleet.UpdateSummary) {
	s.t.Helper()
	args := append([]string{"update", "create", "--firmware", fw, "--select", "tag:grp=" + group,
		"--max-attempts", "1", "--confirm-timeout", "30s"}, extra...)
	id := strings.TrimSpace(s.mustCLI(args...))
	var st fleet.UpdateSummary
	poll(s.t, 90*time.Second, func() bool {
		st = s.status(id)
		return st.State.Terminal()
	}, "update "+id+" ends")
	return id, st
}

// requireReasons waits until the devices of an update in state are want,
// with their reasons (the store writes progress in batches, so the list can
// lag the summary a little).
func (s *server) requireReasons(update string, state fleet.DeviceState, want map[string]fleet.Reason) {
	s.t.Helper()
	got := map[string]fleet.Reason{}
	poll(s.t, 10*time.Second, func() bool {
		var ps []fleet.Progress
		require.NoError(s.t, json.Unmarshal([]byte(s.mustCLI("update", "devices", update, "--state", string(state), "--json")), &ps))
		got = map[string]fleet.Reason{}
		for _, p := range ps {
			got[p.DeviceID] = p.Reason
		}
		return assert.ObjectsAreEqual(want, got)
	}, fmt.Sprintf("devices %s: want %v", state, want))
}

// requireUntouched checks from devicesim's summary that no device installed
// anything and that every one still runs version.
func requireUntouched(t *testing.T, sum simSummary, version string) {
	t.Helper()
	assert.Zero(t, sum.Installs, "nothing installed")
	assert.Zero(t, sum.Updated)
	for _, d := range sum.DevicesDetail {
		assert.Equal(t, version, d.Version, d.ID)
		assert.Zero(t, d.Installs, d.ID)
	}
}

func TestE2E_KeysGenerateRefusesToOverwrite(t *testing.T) {
	orch, _ := binaries(t)
	priv, pub := keyPair(t)
	st, err := os.Stat(priv)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), st.Mode().Perm(), "private key is private")
	before, err := os.ReadFile(priv)
	require.NoError(t, err)
	k, err := protocol.ReadPrivateKeyFile(priv)
	require.NoError(t, err)
	p, err := protocol.ReadPublicKeyFile(pub)
	require.NoError(t, err)
	assert.Equal(t, k.Public(), p)

	out, err := exec.Command(orch, "keys", "generate", "--out", filepath.Dir(priv)).CombinedOutput()
	require.Error(t, err)
	assert.Contains(t, string(out), "refusing to overwrite")
	after, err := os.ReadFile(priv)
	require.NoError(t, err)
	assert.Equal(t, before, after)
}

func TestE2E_SignedFirmwareInstallsAndWrongKeyFailsBadSignature(t *testing.T) {
	s := startServer(t)
	priv, pub := keyPair(t)
	_, otherPub := keyPair(t)
	good := startSim(t, s, "--devices", "3", "--id-prefix", "good-", "--model", "sim-a", "--tags", "grp=a", "--public-key", pub)
	wrong := startSim(t, s, "--devices", "2", "--id-prefix", "wrong-", "--model", "sim-a", "--tags", "grp=a", "--public-key", otherPub)
	s.waitOnline(5)

	path, digest := image(t, 100*1024)
	fw := s.addSigned(path, "1.1.0", priv)
	// The orchestrator stores the signature (migration 9) and never the key.
	assert.Equal(t, "1", s.sqlite3("SELECT count(*) FROM firmware WHERE id = '"+fw+"' AND length(signature) = 88"))

	id, st := s.runUpdate(fw, "a")
	assert.Equal(t, fleet.UpdateCompletedWithFailures, st.State)
	assert.Equal(t, 3, st.Counts[fleet.StateSucceeded])
	s.requireReasons(id, fleet.StateFailed, map[string]fleet.Reason{"wrong-00001": fleet.ReasonBadSignature, "wrong-00002": fleet.ReasonBadSignature})

	g := good.stop(t)
	assert.Equal(t, 3, g.Updated)
	for _, d := range g.DevicesDetail {
		assert.Equal(t, "1.1.0", d.Version)
		assert.Equal(t, digest, d.ImageSHA256)
	}
	w := wrong.stop(t)
	requireUntouched(t, w, "1.0.0")
	assert.Zero(t, w.BytesReceived, "refused before downloading")
}

func TestE2E_UnsignedAndTamperedFirmwareInstallNothing(t *testing.T) {
	s := startServer(t)
	priv, pub := keyPair(t)
	unsigned := startSim(t, s, "--devices", "2", "--id-prefix", "u-", "--model", "sim-a", "--tags", "grp=u", "--public-key", pub)
	tampered := startSim(t, s, "--devices", "2", "--id-prefix", "t-", "--model", "sim-a", "--tags", "grp=t", "--public-key", pub)
	s.waitOnline(4)

	t.Run("unsigned", func(t *testing.T) {
		fw, _ := s.firmware(32*1024, "1.1.0")
		id, st := s.runUpdate(fw, "u")
		assert.Equal(t, 2, st.Counts[fleet.StateFailed])
		s.requireReasons(id, fleet.StateFailed, map[string]fleet.Reason{"u-00001": fleet.ReasonBadSignature, "u-00002": fleet.ReasonBadSignature})
	})

	t.Run("image changed on the orchestrator's disk", func(t *testing.T) {
		path, digest := image(t, 64*1024)
		fw := s.addSigned(path, "1.2.0", priv)
		// Change one byte of the stored image after the signed upload: the
		// orchestrator checks the image's SHA-256 before it sends any.
		blob := filepath.Join(s.data, "firmware", digest)
		b, err := os.ReadFile(blob)
		require.NoError(t, err)
		b[40000] ^= 0xff
		require.NoError(t, os.WriteFile(blob, b, 0o644))

		code, e := s.post("/api/v1/updates", `{"firmware":"`+fw+`","selector":{"tags":{"grp":"t"}}}`)
		assert.Equal(t, http.StatusConflict, code)
		assert.Equal(t, "firmware_damaged", e.Code, e.Message)
	})

	requireUntouched(t, unsigned.stop(t), "1.0.0")
	tm := tampered.stop(t)
	requireUntouched(t, tm, "1.0.0")
	assert.Zero(t, tm.BytesReceived, "the changed image was refused before a byte was sent")
}

func TestE2E_DowngradeRefusedUnlessSignedAsAllowed(t *testing.T) {
	s := startServer(t)
	priv, pub := keyPair(t)
	sm := startSim(t, s, "--devices", "2", "--id-prefix", "d-", "--model", "sim-a", "--version", "2.0.0", "--tags", "grp=d", "--public-key", pub)
	s.waitOnline(2)
	path, digest := image(t, 32*1024)

	// Signed without the permission: the policy lets the orchestrator offer
	// it, the devices refuse it.
	fw := s.addSigned(path, "1.5.0", priv)
	id, st := s.runUpdate(fw, "d", "--allow-downgrade")
	assert.Equal(t, 2, st.Counts[fleet.StateRejected])
	s.requireReasons(id, fleet.StateRejected, map[string]fleet.Reason{"d-00001": fleet.ReasonDowngradeRefused, "d-00002": fleet.ReasonDowngradeRefused})

	// Signed with the permission, the same bytes install.
	fw = s.addSigned(path, "1.5.0", priv, "--allow-downgrade")
	_, st = s.runUpdate(fw, "d", "--allow-downgrade")
	assert.Equal(t, fleet.UpdateCompleted, st.State)
	assert.Equal(t, 2, st.Counts[fleet.StateSucceeded])

	sum := sm.stop(t)
	assert.Equal(t, 2, sum.Installs)
	for _, d := range sum.DevicesDetail {
		assert.Equal(t, "1.5.0", d.Version)
		assert.Equal(t, digest, d.ImageSHA256)
	}
}

func TestE2E_ServeWithPublicKeyRefusesBadUploads(t *testing.T) {
	priv, pub := keyPair(t)
	otherPriv, _ := keyPair(t)
	s := startServer(t, "--firmware-public-key", pub)
	path, digest := image(t, 16*1024)

	add := func(extra ...string) (string, int) {
		orch, _ := binaries(t)
		cmd := exec.Command(orch, append([]string{"firmware", "add", path, "--version", "1.1.0", "--server", s.url, "--token", s.token}, extra...)...)
		out, err := cmd.CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else {
			require.NoError(t, err)
		}
		return string(out), code
	}
	out, code := add()
	assert.Equal(t, 1, code)
	assert.Contains(t, out, "not signed")
	out, code = add("--sign-key", otherPriv)
	assert.Equal(t, 1, code)
	assert.Contains(t, out, "signature does not verify")
	out, code = add("--allow-downgrade")
	assert.Equal(t, 2, code, "the permission is signed: it needs a key")
	assert.Contains(t, out, "--sign-key")

	// Refused uploads left nothing: no row, no image.
	assert.Equal(t, "0", s.sqlite3("SELECT count(*) FROM firmware"))
	_, err := os.Stat(filepath.Join(s.data, "firmware", digest))
	assert.ErrorIs(t, err, os.ErrNotExist)

	out, code = add("--sign-key", priv)
	require.Zero(t, code, out)
	assert.Equal(t, "1", s.sqlite3("SELECT count(*) FROM firmware"))
	_, err = os.Stat(filepath.Join(s.data, "firmware", digest))
	assert.NoError(t, err)
}
