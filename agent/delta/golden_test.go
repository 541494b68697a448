package delta

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/flate"
	"github.com/stretchr/testify/require"
)

// Golden vectors, for other implementations of the decoder (the C agent):
// testdata/golden/base.bin and target.bin, target.deflate and target.bsdiff
// (payloads that decode to target.bin, the second from base.bin), and in
// testdata/golden/corrupt/ payloads named ENCODING-WHAT-IS-WRONG.bin that a
// decoder must refuse. FLOTA_DELTA_GOLDEN=write rewrites them.
const goldenDir = "testdata/golden"

func TestGolden_VectorsDecodeOrAreRefused(t *testing.T) {
	if os.Getenv("FLOTA_DELTA_GOLDEN") == "write" {
		writeGolden(t)
	}
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join(goldenDir, name))
		require.NoError(t, err)
		return b
	}
	base, target := read("base.bin"), read("target.bin")
	for _, encoding := range []string{Deflate, BSDiff} {
		payload := read("target." + encoding)
		got, err := decodeAll(t, encoding, base, payload, 1000)
		require.NoError(t, err, encoding)
		require.True(t, bytes.Equal(target, got), encoding)
		require.Greater(t, len(target), MaxSegmentOutput, "the vectors span segments")
	}
	corrupt, err := filepath.Glob(filepath.Join(goldenDir, "corrupt", "*.bin"))
	require.NoError(t, err)
	require.GreaterOrEqual(t, len(corrupt), 10)
	for _, path := range corrupt {
		name := filepath.Base(path)
		encoding, _, _ := strings.Cut(name, "-")
		payload, err := os.ReadFile(path)
		require.NoError(t, err)
		var out countWriter
		d, err := NewDecoder(encoding, bytes.NewReader(base), int64(len(base)), &out, Checkpoint{})
		require.NoError(t, err, name)
		_, werr := d.Write(payload)
		err = errors.Join(werr, d.Close())
		require.ErrorIs(t, err, ErrCorrupt, name)
		t.Logf("%s: %v", name, err)
	}
}

// writeGolden makes the vectors.
func writeGolden(t *testing.T) {
	r := rand.New(rand.NewPCG(21, 22))
	base := codeLike(r, 100_000)
	target := mutate(r, base, 10, 2, 3000)
	enc := encodeBoth(t, base, target)
	files := map[string][]byte{
		"base.bin":       base,
		"target.bin":     target,
		"target.deflate": enc[Deflate],
		"target.bsdiff":  enc[BSDiff],
	}
	deflate := func(content []byte) []byte {
		var b bytes.Buffer
		w, err := flate.NewWriter(&b, flate.BestCompression)
		require.NoError(t, err)
		_, err = w.Write(content)
		require.NoError(t, err)
		require.NoError(t, w.Close())
		return b.Bytes()
	}
	segment := func(z []byte) []byte {
		return append(binary.AppendUvarint(nil, uint64(len(z))), z...)
	}
	uv := binary.AppendUvarint
	valid := deflate([]byte("hello"))
	corrupt := map[string][]byte{
		"deflate-segment-length-zero.bin":          {0},
		"deflate-segment-length-over-66560.bin":    uv(nil, MaxSegmentInput+1),
		"deflate-segment-length-over-10-bytes.bin": {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01},
		"deflate-invalid-block-type.bin":           segment([]byte{0x07, 0x00, 0x00}),
		"deflate-bytes-after-the-final-block.bin":  segment(append(bytes.Clone(valid), 0)),
		"deflate-stream-cut-short.bin":             segment(valid[:len(valid)-1]),
		"deflate-content-over-65536-bytes.bin":     segment(deflate(make([]byte, MaxSegmentOutput+1))),
		"deflate-empty-content.bin":                segment(deflate(nil)),
		"deflate-payload-ends-mid-segment.bin":     enc[Deflate][:100],
		"bsdiff-operation-of-zero-bytes.bin":       segment(deflate(uv(nil, 0<<1|opCopy))),
		"bsdiff-add-past-the-base-end.bin":         segment(deflate(append(uv(uv(nil, 2<<1|opAdd), uint64(len(base)-1)), 0, 0))),
		"bsdiff-copy-cut-by-the-segment-end.bin":   segment(deflate(append(uv(nil, 10<<1|opCopy), "12345"...))),
		"bsdiff-add-cut-by-the-segment-end.bin":    segment(deflate(uv(uv(nil, 10<<1|opAdd), 0))),
		"bsdiff-operation-over-65536-bytes.bin":    segment(deflate(append(uv(nil, (MaxSegmentOutput+1)<<1|opCopy), make([]byte, 1000)...))),
		"bsdiff-payload-ends-mid-segment.bin":      enc[BSDiff][:len(enc[BSDiff])-1],
	}
	require.NoError(t, os.MkdirAll(filepath.Join(goldenDir, "corrupt"), 0o755))
	for name, b := range files {
		require.NoError(t, os.WriteFile(filepath.Join(goldenDir, name), b, 0o644))
	}
	for name, b := range corrupt {
		require.NoError(t, os.WriteFile(filepath.Join(goldenDir, "corrupt", name), b, 0o644))
	}
}
