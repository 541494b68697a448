package main

import (
	"bytes"
	"context"
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/agent"
	"github.com/flotaio/flota/agent/delta"
	"github.com/flotaio/flota/internal/protocol"
)

func TestParseFlags_ImageAndCaps(t *testing.T) {
	file := filepath.Join(t.TempDir(), "v1.bin")
	require.NoError(t, os.WriteFile(file, []byte("image v1"), 0o644))
	o, err := parseFlags([]string{"--image", file})
	require.NoError(t, err)
	assert.Equal(t, []byte("image v1"), o.image)
	assert.Equal(t, []string{protocol.EncodingDeflate, protocol.EncodingBSDiff}, o.caps, "both by default")

	o, err = parseFlags([]string{"--caps", ""})
	require.NoError(t, err)
	assert.NotNil(t, o.caps, "an empty list turns every encoding off")
	assert.Empty(t, o.caps)

	for _, args := range [][]string{{"--caps", "zstd"}, {"--image", filepath.Join(t.TempDir(), "missing")}} {
		_, err := parseFlags(args)
		var ue *usageError
		require.ErrorAs(t, err, &ue, "%q", args)
	}
}

// runFleet runs devicesim against broker until every device runs 2.0.0 and
// returns its summary.
func runFleet(t *testing.T, broker string, args ...string) summary {
	t.Helper()
	file := filepath.Join(t.TempDir(), "summary.json")
	args = append([]string{"--broker", broker, "--reboot-delay", "20ms", "--keepalive", "0", "--seed", "5",
		"--exit-when-updated", "2.0.0", "--summary", file}, args...)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	require.NoError(t, run(ctx, args, &bytes.Buffer{}))
	require.NoError(t, ctx.Err(), "run ended by the test timeout")
	b, err := os.ReadFile(file)
	require.NoError(t, err)
	var s summary
	require.NoError(t, json.Unmarshal(b, &s))
	return s
}

func TestRun_DevicesOnTheirImageApplyDeltasAndShareOneCopyOfEachImage(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	base := make([]byte, 1<<20)
	for i := range base {
		base[i] = byte(r.Uint32())
	}
	target := bytes.Clone(base)
	copy(target[300<<10:], "a few bytes changed in version 2")
	file := filepath.Join(t.TempDir(), "v1.bin")
	require.NoError(t, os.WriteFile(file, base, 0o644))
	baseSHA, targetSHA := agent.NewImages().Add(base), agent.NewImages().Add(target)
	var patch, deflated bytes.Buffer
	_, err := delta.Diff(&patch, base, target, delta.DiffOptions{})
	require.NoError(t, err)
	_, err = delta.Compress(&deflated, bytes.NewReader(target))
	require.NoError(t, err)

	// The orchestrator's choice, from the hello: a delta to a device on
	// the base that decodes it, else the image compressed if the device
	// inflates, else the image.
	broker := scriptedOrchestratorOffering(t, func(h protocol.Hello, of protocol.Offer) (protocol.Offer, []byte) {
		of.Firmware = protocol.FirmwareInfo{ID: "fw", Name: "fw", Version: "2.0.0", Size: int64(len(target)), SHA256: targetSHA}
		switch {
		case h.Image == baseSHA && slices.Contains(h.Caps, protocol.EncodingBSDiff):
			of.Encoding, of.Base, of.PayloadSize = protocol.EncodingBSDiff, baseSHA, int64(patch.Len())
			return of, patch.Bytes()
		case slices.Contains(h.Caps, protocol.EncodingDeflate):
			of.Encoding, of.PayloadSize = protocol.EncodingDeflate, int64(deflated.Len())
			return of, deflated.Bytes()
		}
		return of, target
	})

	const n = 40
	s := runFleet(t, broker, "--devices", strconv.Itoa(n), "--id-prefix", "d-", "--image", file)
	require.Equal(t, n, s.Updated)
	for _, d := range s.DevicesDetail {
		assert.Equal(t, targetSHA, d.ImageSHA256, d.ID)
		assert.Equal(t, targetSHA, d.Image, "%s runs the target", d.ID)
		assert.Equal(t, protocol.EncodingBSDiff, d.Encoding, d.ID)
		assert.Equal(t, int64(patch.Len()), d.BytesReceived, d.ID)
	}
	// The base and the target once each, whatever the fleet's size: 40
	// copies would be 80 MiB.
	assert.Less(t, s.Process.LiveHeapBytes, int64(16<<20), "live heap")

	for caps, want := range map[string]string{"": "", "deflate": protocol.EncodingDeflate} {
		s := runFleet(t, broker, "--devices", "2", "--id-prefix", "c"+caps+"-", "--image", file, "--caps", caps)
		require.Equal(t, 2, s.Updated, "--caps %q", caps)
		for _, d := range s.DevicesDetail {
			assert.Equal(t, targetSHA, d.ImageSHA256, d.ID)
			assert.Equal(t, want, d.Encoding, d.ID)
		}
	}
}
