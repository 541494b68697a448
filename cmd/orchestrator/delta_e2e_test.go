package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
)

// Delta and compressed payloads, end to end: real orchestrator and
// devicesim processes, the embedded broker over TCP. Thresholds are in
// bytes, never in time.

// imageFile is a firmware image written to a file.
type imageFile struct {
	path, sha string
	data      []byte
}

func writeImage(t *testing.T, name string, data []byte) imageFile {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	require.NoError(t, os.WriteFile(path, data, 0o644))
	sum := sha256.Sum256(data)
	return imageFile{path, hex.EncodeToString(sum[:]), data}
}

// textImage is n bytes that compress about 2:1, as code does: random
// bytes of a 16-letter alphabet.
func textImage(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 7))
	b := make([]byte, n)
	for i := range b {
		b[i] = "abcdefghijklmnop"[r.IntN(16)]
	}
	return b
}

// nextVersion is base with 10 small changes of 16 bytes and one 4 KiB
// insertion, plus extra random bytes inserted in the middle.
func nextVersion(base []byte, extra int) []byte {
	r := rand.New(rand.NewPCG(uint64(len(base)), 9))
	b := bytes.Clone(base)
	for i := 0; i < 10; i++ {
		at := r.IntN(len(b) - 16)
		for j := 0; j < 16; j++ {
			b[at+j] = byte(r.Uint32())
		}
	}
	ins := textImage(99, 4096)
	if extra > 0 {
		rnd := make([]byte, extra)
		for i := range rnd {
			rnd[i] = byte(r.Uint32())
		}
		ins = append(ins, rnd...)
	}
	mid := len(b) / 2
	return append(b[:mid:mid], append(ins, b[mid:]...)...)
}

// addFirmware uploads an image as version of app for model sim-a.
func (s *server) addFirmware(img imageFile, version string) string {
	s.t.Helper()
	id := strings.TrimSpace(s.mustCLI("firmware", "add", img.path, "--version", version, "--name", "app", "--model", "sim-a"))
	require.True(s.t, strings.HasPrefix(id, "fw-"), "firmware ID %q", id)
	return id
}

// progressRow is a row of `update devices --json`.
type progressRow struct {
	Device      string            `json:"device"`
	State       fleet.DeviceState `json:"state"`
	Reason      fleet.Reason      `json:"reason"`
	Encoding    string            `json:"encoding"`
	PayloadSize int64             `json:"payload_size"`
	WireBytes   int64             `json:"wire_bytes"`
	Offset      int64             `json:"offset"`
}

func (s *server) progressRows(id string) map[string]progressRow {
	s.t.Helper()
	var rows []progressRow
	require.NoError(s.t, json.Unmarshal([]byte(s.mustCLI("update", "devices", id, "--json")), &rows))
	out := map[string]progressRow{}
	for _, r := range rows {
		out[r.Device] = r
	}
	return out
}

// deltaStatus is what the delta tests read of `update status --json`.
type deltaStatus struct {
	BytesSent  int64          `json:"bytes_sent"`
	ImageBytes int64          `json:"image_bytes"`
	Encodings  map[string]int `json:"encodings"`
}

func (s *server) deltaStatus(id string) deltaStatus {
	s.t.Helper()
	var st deltaStatus
	require.NoError(s.t, json.Unmarshal([]byte(s.mustCLI("update", "status", id, "--json")), &st))
	return st
}

func TestE2E_DeltaUpdate_DevicesOnTheBaseGetADeltaTheOthersTheImage(t *testing.T) {
	s := startServer(t)
	v1 := writeImage(t, "v1.bin", textImage(1, 1<<20))
	v2 := writeImage(t, "v2.bin", nextVersion(v1.data, 0))
	other := writeImage(t, "other.bin", textImage(2, 1<<20))
	s.addFirmware(v1, "1.0.0")
	fw2 := s.addFirmware(v2, "1.1.0")

	onBase := startSim(t, s, "--devices", "8", "--id-prefix", "base-", "--model", "sim-a", "--image", v1.path)
	// Another base: the full image, compressed since they inflate.
	elsewhere := startSim(t, s, "--devices", "2", "--id-prefix", "other-", "--model", "sim-a", "--image", other.path)
	// No decoder at all: the image as it is.
	plain := startSim(t, s, "--devices", "2", "--id-prefix", "plain-", "--model", "sim-a", "--image", v1.path, "--caps", "")
	s.waitOnline(12)
	id := strings.TrimSpace(s.mustCLI("update", "create", "--firmware", fw2))
	_, code := s.cli("update", "watch", id, "--interval", "250ms")
	require.Zero(t, code, "the update completes")

	// The API says who got what, and the bytes on the wire.
	want := map[string]string{"base-": fleet.EncodingDelta, "other-": fleet.EncodingDeflate, "plain-": fleet.EncodingFull}
	size := int64(len(v2.data))
	for dev, r := range s.progressRows(id) {
		prefix := dev[:strings.Index(dev, "-")+1]
		assert.Equal(t, want[prefix], r.Encoding, dev)
		assert.Equal(t, fleet.StateSucceeded, r.State, dev)
		switch r.Encoding {
		case fleet.EncodingDelta:
			assert.Less(t, r.PayloadSize, size*3/100, "%s: a delta of a few small changes is under 3%% of the image", dev)
		case fleet.EncodingDeflate:
			assert.Less(t, r.PayloadSize, size*3/4, "%s: compressed", dev)
		case fleet.EncodingFull:
			assert.Equal(t, size, r.PayloadSize, dev)
		}
	}
	st := s.deltaStatus(id)
	assert.Equal(t, map[string]int{fleet.EncodingDelta: 8, fleet.EncodingDeflate: 2, fleet.EncodingFull: 2}, st.Encodings)
	assert.Equal(t, 12*size, st.ImageBytes)
	assert.Less(t, st.BytesSent, st.ImageBytes/2, "bytes on the wire against the image bytes")

	devices := map[string]simDevice{}
	for _, sm := range []*sim{onBase, elsewhere, plain} {
		for _, d := range sm.stop(t).DevicesDetail {
			devices[d.ID] = d
		}
	}
	requireConsistentEnd(t, s, id, v2.sha, 12, onBase, elsewhere, plain) // installed once each, the target's digest
	for dev, d := range devices {
		assert.Equal(t, v2.sha, d.Image, "%s runs the target", dev)
		if strings.HasPrefix(dev, "base-") {
			assert.Equal(t, "bsdiff", d.Encoding, dev)
			assert.Less(t, d.BytesReceived, size*3/100, "%s received a delta", dev)
		}
	}
}

// waitDelta waits until the delta to firmware fw is built and returns the
// path of its file.
func (s *server) waitDelta(fw string) string {
	s.t.Helper()
	var path string
	poll(s.t, 2*time.Minute, func() bool {
		path = s.sqlite3("SELECT path FROM payloads WHERE firmware_id='" + fw + "' AND encoding='delta' AND state='ready'")
		return path != ""
	}, "the delta is built")
	return filepath.Join(s.data, path)
}

func TestE2E_DeltaUpdate_CorruptedPatchFailsBadDigestAndInstallsNothing(t *testing.T) {
	s := startServer(t)
	// 1.5 MiB of new random bytes: the delta is larger than what the
	// orchestrator holds (and hashes) in memory, so it is read from its
	// file as it is sent, as a large delta is.
	v1 := writeImage(t, "v1.bin", textImage(3, 512<<10))
	v2 := writeImage(t, "v2.bin", nextVersion(v1.data, 1536<<10))
	s.addFirmware(v1, "1.0.0")
	fw2 := s.addFirmware(v2, "1.1.0")

	// The delta is built when v2 is added, before any update: flip one
	// byte in the middle of its file, where a bit rot would.
	path := s.waitDelta(fw2)
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Greater(t, len(b), 1<<20)
	b[len(b)/2] ^= 0x10
	require.NoError(t, os.WriteFile(path, b, 0o600))

	sm := startSim(t, s, "--devices", "3", "--id-prefix", "corrupt-", "--model", "sim-a", "--image", v1.path)
	s.waitOnline(3)
	id := strings.TrimSpace(s.mustCLI("update", "create", "--firmware", fw2, "--max-attempts", "1"))
	_, code := s.cli("update", "watch", id, "--interval", "250ms")
	assert.Equal(t, 1, code, "watch exits 1 when devices failed")

	st := s.status(id)
	assert.Equal(t, map[fleet.DeviceState]int{fleet.StateFailed: 3}, st.Counts)
	for dev, r := range s.progressRows(id) {
		assert.Equal(t, fleet.EncodingDelta, r.Encoding, dev)
		assert.Equal(t, fleet.StateFailed, r.State, dev)
		assert.Equal(t, fleet.ReasonBadDigest, r.Reason, dev)
	}
	sum := sm.stop(t)
	require.Len(t, sum.DevicesDetail, 3)
	for _, d := range sum.DevicesDetail {
		assert.Zero(t, d.Installs, "%s installed nothing", d.ID)
		assert.Equal(t, "1.0.0", d.Version, d.ID)
		assert.Equal(t, v1.sha, d.Image, "%s still runs its base", d.ID)
		assert.True(t, d.Failed, d.ID)
		assert.Equal(t, string(fleet.ReasonBadDigest), d.Reason, d.ID)
	}
}

func TestE2E_DeltaUpdate_PowerCutMidDeltaResumesFromACheckpointAndInstallsOnce(t *testing.T) {
	s := startServer(t)
	// A 3 MiB delta (new random bytes), sent over a 200 KB/s link: the
	// devices checkpoint every second (and every MiB) on the way, and the
	// 15 s the payload takes leave time to cut the power mid-way.
	v1 := writeImage(t, "v1.bin", textImage(4, 512<<10))
	v2 := writeImage(t, "v2.bin", nextVersion(v1.data, 3<<20))
	s.addFirmware(v1, "1.0.0")
	fw2 := s.addFirmware(v2, "1.1.0")
	s.waitDelta(fw2)

	state := filepath.Join(t.TempDir(), "state")
	args := []string{"--devices", "2", "--id-prefix", "cut-", "--model", "sim-a", "--image", v1.path,
		"--state-dir", state, "--bandwidth", "200KB"}
	first := startSim(t, s, args...)
	s.waitOnline(2)
	id := strings.TrimSpace(s.mustCLI("update", "create", "--firmware", fw2))

	// Power goes (SIGKILL: nothing is saved on the way out) once both
	// devices hold more than 1.25 MiB of the delta.
	var payload int64
	poll(t, 2*time.Minute, func() bool {
		rows := s.progressRows(id)
		for _, r := range rows {
			if r.Encoding != fleet.EncodingDelta || r.Offset < 1280<<10 {
				return false
			}
			payload = r.PayloadSize
		}
		return len(rows) == 2
	}, "both devices past 1.25 MiB of the delta")
	require.NoError(t, first.cmd.Process.Signal(syscall.SIGKILL))
	<-first.done
	first.done <- nil

	second := startSim(t, s, args...)
	requireConsistentEnd(t, s, id, v2.sha, 2, second)
	sum := second.stop(t)
	for _, d := range sum.DevicesDetail {
		assert.Equal(t, 1, d.Installs, "%s installed once across the cut", d.ID)
		assert.Equal(t, "bsdiff", d.Encoding, "%s resumed the delta", d.ID)
		// Cut mid-way: the rest came in this run. The last checkpoint is at
		// most a second (200 KB) and a segment behind the 1.25 MiB the
		// orchestrator saw acknowledged.
		require.Positive(t, d.BytesReceived, "%s was cut before the end of the delta", d.ID)
		assert.Less(t, d.BytesReceived, payload-(768<<10), "%s resumed from its checkpoint, not from 0", d.ID)
	}
}
