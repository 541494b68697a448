package protocol

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
)

// update regenerates the generated golden vectors:
//
//	go test ./internal/protocol -run TestGolden -update
var update = flag.Bool("update", false, "rewrite the generated golden vectors in testdata/protocol")

// goldenDir holds the golden vectors, shared with docs/PROTOCOL.md.
var goldenDir = filepath.Join("..", "..", "testdata", "protocol")

// Values shared by the golden vectors: one update of a 16400-byte image (16384
// zero bytes then "flota-chunk-0001"), sent in two chunks of at most 16 KiB.
const (
	goldenUpdate = "upd-3f9a1c0b7e21"
	goldenHandle = 0x01020304
	goldenSize   = 16400
	goldenSHA256 = "0994359fe917b1b343b9363c1773238e328ecb4f682ca6ddf556701f29743718"
)

// goldenFrame is the frame in chunk.bin: the last chunk of the golden image.
var goldenFrame = Frame{
	Flags:   FlagLast,
	Handle:  goldenHandle,
	Offset:  16384,
	Payload: []byte("flota-chunk-0001"),
}

// generatedVectors returns every file that the generator writes, by path
// relative to goldenDir. JSON vectors other than these are written by hand.
func generatedVectors() map[string][]byte {
	frame := AppendFrame(nil, goldenFrame)

	badCRC := bytes.Clone(frame)
	badCRC[HeaderSize] ^= 0x01 // payload "glota-chunk-0001", header CRC unchanged

	badVersion := bytes.Clone(frame)
	badVersion[0] = 2

	// A hello padded with an unknown field to one byte over the limit.
	hello := `{"v":1,"model":"esp32-c3","version":"1.4.2","pad":""}`
	pad := strings.Repeat("x", MaxControlSize+1-len(hello))
	tooLarge := []byte(strings.Replace(hello, `"pad":""`, `"pad":"`+pad+`"`, 1))

	return map[string][]byte{
		"chunk.bin":                      frame,
		"chunk.hex":                      []byte(xxd(frame)),
		"invalid/chunk_bad_crc.bin":      badCRC,
		"invalid/chunk_bad_version.bin":  badVersion,
		"invalid/chunk_truncated.bin":    frame[:len(frame)-6],
		"invalid/chunk_short_header.bin": frame[:12],
		"invalid/hello_too_large.json":   tooLarge,
	}
}

// xxd formats b as `xxd` does, so that `xxd -r chunk.hex` gives chunk.bin.
func xxd(b []byte) string {
	var sb strings.Builder
	for off := 0; off < len(b); off += 16 {
		line := b[off:min(off+16, len(b))]
		var hx strings.Builder
		for i, c := range line {
			if i > 0 && i%2 == 0 {
				hx.WriteByte(' ')
			}
			fmt.Fprintf(&hx, "%02x", c)
		}
		ascii := make([]byte, len(line))
		for i, c := range line {
			if c < 0x20 || c > 0x7e {
				c = '.'
			}
			ascii[i] = c
		}
		fmt.Fprintf(&sb, "%08x: %-39s  %s\n", off, hx.String(), ascii)
	}
	return sb.String()
}

func TestGolden_Generated(t *testing.T) {
	vectors := generatedVectors()
	for name, b := range signatureVectors() {
		vectors[name] = b
	}
	for name, v := range reasonVectors() {
		vectors[name] = Encode(v)
	}
	for name, want := range vectors {
		path := filepath.Join(goldenDir, filepath.FromSlash(name))
		if *update {
			require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
			require.NoError(t, os.WriteFile(path, want, 0o644))
			continue
		}
		got, err := os.ReadFile(path)
		require.NoError(t, err, "run: go test ./internal/protocol -run TestGolden -update")
		assert.Equal(t, want, got, "%s is stale; run: go test ./internal/protocol -run TestGolden -update", name)
	}
}

func TestGolden_ChunkBytes(t *testing.T) {
	// The frame spelled out byte by byte, as docs/PROTOCOL.md shows it.
	want, err := hex.DecodeString("" +
		"01" + // version
		"01" + // flags: last
		"0000" + // reserved
		"01020304" + // handle
		"00004000" + // offset 16384
		"00000010" + // length 16
		"fd1f22e4" + // CRC-32C of the payload
		hex.EncodeToString([]byte("flota-chunk-0001")))
	require.NoError(t, err)
	got, err := os.ReadFile(filepath.Join(goldenDir, "chunk.bin"))
	require.NoError(t, err)
	assert.Equal(t, want, got)
}

func TestGolden_ImageDigest(t *testing.T) {
	// The offer's digest is that of the image the golden chunks carry.
	img := append(make([]byte, 16384), "flota-chunk-0001"...)
	sum := sha256.Sum256(img)
	assert.Equal(t, goldenSHA256, hex.EncodeToString(sum[:]))
	assert.Len(t, img, goldenSize)
}

// goldenValid is the decoded value of every valid vector in goldenDir.
var goldenValid = map[string]any{
	"hello.json": Hello{
		V: 1, Model: "esp32-c3", Version: "1.4.2",
		Tags: map[string]string{"site": "lyon", "ring": "beta"},
	},
	"hello_resume.json": Hello{
		V: 1, Model: "esp32-c3", Version: "1.4.2",
		Tags:     map[string]string{"site": "lyon", "ring": "beta"},
		Transfer: &Held{Update: goldenUpdate, Handle: goldenHandle, Offset: 16384, State: fleet.StateDownloading},
	},
	"hello_rebooted.json": Hello{
		V: 1, Model: "esp32-c3", Version: "1.5.0",
		Tags:     map[string]string{"site": "lyon", "ring": "beta"},
		Transfer: &Held{Update: goldenUpdate, Handle: goldenHandle, Offset: goldenSize, State: fleet.StateRebooting},
	},
	"hello_limits.json": Hello{
		V: 1, Model: "esp32-c3", Version: "1.4.2",
		MaxChunk: 4096, MaxWindow: 4, Caps: []string{"ota-dual-bank"},
	},
	"hello_conn.json": Hello{V: 1, Model: "esp32-c3", Version: "1.4.2", Conn: 2868215391},
	"hello_unknown_fields.json": Hello{
		V: 1, Model: "esp32-c3", Version: "1.4.2",
		Tags: map[string]string{"site": "lyon"},
	},
	"report_accepted.json": Report{
		V: 1, Update: goldenUpdate, Handle: goldenHandle, State: fleet.StateAccepted, Offset: 0,
	},
	"report_accepted_resume.json": Report{
		V: 1, Update: goldenUpdate, Handle: goldenHandle, State: fleet.StateAccepted, Offset: 16384,
	},
	"report_rejected.json": Report{
		V: 1, Update: goldenUpdate, Handle: goldenHandle, State: fleet.StateRejected,
		Reason: fleet.ReasonIncompatibleModel, Version: "1.4.2",
	},
	"report_rejected_chunk_too_large.json": Report{
		V: 1, Update: goldenUpdate, Handle: goldenHandle, State: fleet.StateRejected,
		Reason: fleet.ReasonChunkTooLarge, Version: "1.4.2",
	},
	"report_downloaded.json": Report{
		V: 1, Update: goldenUpdate, Handle: goldenHandle, State: fleet.StateDownloaded, Offset: goldenSize,
	},
	"report_rebooting.json": Report{
		V: 1, Update: goldenUpdate, Handle: goldenHandle, State: fleet.StateRebooting,
	},
	"report_failed.json": Report{
		V: 1, Update: goldenUpdate, Handle: goldenHandle, State: fleet.StateFailed, Reason: fleet.ReasonBadDigest,
	},
	"report_cancelled.json": Report{
		V: 1, Update: goldenUpdate, Handle: goldenHandle, State: fleet.StateCancelled, Reason: fleet.ReasonOperator,
	},
	"ack.json": Ack{V: 1, Handle: goldenHandle, Offset: goldenSize},
	"offer.json": Offer{
		V: 1, Update: goldenUpdate, Handle: goldenHandle, Attempt: 1,
		Firmware: FirmwareInfo{
			ID: "fw-8c1d2e3f4a5b", Name: "sensor-fw", Version: "1.5.0", Model: "esp32-c3",
			Size: goldenSize, SHA256: goldenSHA256,
		},
		ChunkSize: 16384, Window: 8,
	},
	"offer_signed.json": Offer{
		V: 1, Update: goldenUpdate, Handle: goldenHandle, Attempt: 1,
		Firmware: goldenSignedFirmware, ChunkSize: 16384, Window: 8,
	},
	"cancel.json": Cancel{V: 1, Update: goldenUpdate, Handle: goldenHandle, Reason: fleet.ReasonOperator},
	"chunk.bin":   goldenFrame,
}

// goldenInvalid is the error that refuses each vector in goldenDir/invalid:
// a sentinel (errors.Is) or a JSON error marker (errors.As).
var goldenInvalid = map[string]error{
	"hello_protocol_v_2.json":            ErrBadVersion,
	"hello_protocol_v_missing.json":      ErrBadVersion,
	"hello_running_version_missing.json": ErrMissing,
	"hello_bad_transfer_state.json":      ErrBadValue,
	"hello_version_not_string.json":      errJSONType,
	"hello_too_large.json":               ErrTooLarge,
	"report_offset_string.json":          errJSONType,
	"report_bad_state.json":              ErrBadValue,
	"report_missing_update.json":         ErrMissing,
	"report_negative_offset.json":        ErrBadValue,
	// Device-supplied strings out of their length or charset.
	"hello_version_escape_sequence.json":      ErrBadValue,
	"hello_version_too_long.json":             ErrBadValue,
	"hello_version_invalid_utf8.json":         ErrBadValue,
	"hello_model_control_char.json":           ErrBadValue,
	"hello_model_c1_control.json":             ErrBadValue,
	"hello_model_not_ascii.json":              ErrBadValue,
	"hello_model_too_long.json":               ErrBadValue,
	"hello_tag_value_escape_sequence.json":    ErrBadValue,
	"hello_tag_value_too_long.json":           ErrBadValue,
	"hello_tag_key_empty.json":                ErrBadValue,
	"hello_too_many_tags.json":                ErrBadValue,
	"hello_transfer_update_control_char.json": ErrBadValue,
	"report_reason_bad_charset.json":          ErrBadValue,
	"report_reason_escape_sequence.json":      ErrBadValue,
	"report_reason_too_long.json":             ErrBadValue,
	"report_version_control_char.json":        ErrBadValue,
	"report_update_escape_sequence.json":      ErrBadValue,
	"hello_max_chunk_below_256.json":          ErrBadValue,
	"hello_max_chunk_over_65536.json":         ErrBadValue,
	"hello_max_chunk_zero.json":               ErrBadValue,
	"hello_max_chunk_string.json":             errJSONType,
	"hello_max_window_zero.json":              ErrBadValue,
	"hello_max_window_over_64.json":           ErrBadValue,
	"hello_caps_over_16.json":                 ErrBadValue,
	"hello_caps_not_array.json":               errJSONType,
	"hello_cap_upper_case.json":               ErrBadValue,
	"hello_cap_empty.json":                    ErrBadValue,
	"hello_cap_over_32_bytes.json":            ErrBadValue,
	"hello_conn_negative.json":                errJSONType,
	"hello_conn_over_u32.json":                errJSONType,
	"offer_missing_handle.json":               ErrMissing,
	"offer_window_over_64.json":               ErrBadValue,
	"ack_protocol_v_0.json":                   ErrBadVersion,
	"ack_negative_handle.json":                errJSONType,
	"ack_not_json.json":                       errJSONSyntax,
	"offer_bad_chunk_size.json":               ErrBadValue,
	"cancel_missing_update.json":              ErrMissing,
	"chunk_bad_crc.bin":                       ErrFrameCRC,
	"chunk_bad_version.bin":                   ErrFrameVer,
	"chunk_truncated.bin":                     ErrFrameLength,
	"chunk_short_header.bin":                  ErrShortFrame,
}

// Markers for JSON errors, which have no sentinel: matchErr checks them with
// errors.As.
var (
	errJSONType   = errors.New("json type error")
	errJSONSyntax = errors.New("json syntax error")
)

// matchErr asserts that err is the expected refusal.
func matchErr(t *testing.T, want, err error) {
	t.Helper()
	require.Error(t, err)
	switch want {
	case errJSONType:
		var te *json.UnmarshalTypeError
		assert.ErrorAs(t, err, &te)
	case errJSONSyntax:
		var se *json.SyntaxError
		assert.ErrorAs(t, err, &se)
	default:
		assert.ErrorIs(t, err, want)
	}
}

// decodeByName decodes a vector with the decoder its file name starts with.
func decodeByName(name string, b []byte) (any, error) {
	kind, _, _ := strings.Cut(strings.TrimSuffix(name, filepath.Ext(name)), "_")
	switch kind {
	case KindHello:
		return DecodeHello(b)
	case KindReport:
		return DecodeReport(b)
	case KindAck:
		return DecodeAck(b)
	case KindOffer:
		return DecodeOffer(b)
	case KindCancel:
		return DecodeCancel(b)
	case KindChunk:
		return DecodeFrame(b)
	}
	return nil, fmt.Errorf("no decoder for %s", name)
}

// vectorFiles lists the vector files of dir: .json and .bin.
func vectorFiles(t testing.TB, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	var names []string
	for _, e := range entries {
		if e.Type().IsRegular() && (strings.HasSuffix(e.Name(), ".json") || strings.HasSuffix(e.Name(), ".bin")) {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	return names
}

func TestGolden_DecodeValid(t *testing.T) {
	names := vectorFiles(t, goldenDir)
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			want, ok := goldenValid[name]
			require.True(t, ok, "vector %s has no expected value in goldenValid", name)
			b, err := os.ReadFile(filepath.Join(goldenDir, name))
			require.NoError(t, err)
			got, err := decodeByName(name, b)
			require.NoError(t, err)
			assert.Equal(t, want, got)
		})
	}
	for name := range goldenValid {
		assert.Contains(t, names, name, "expected vector missing")
	}
}

func TestGolden_RefuseInvalid(t *testing.T) {
	dir := filepath.Join(goldenDir, "invalid")
	names := vectorFiles(t, dir)
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			want, ok := goldenInvalid[name]
			require.True(t, ok, "vector invalid/%s has no expected error in goldenInvalid", name)
			b, err := os.ReadFile(filepath.Join(dir, name))
			require.NoError(t, err)
			got, err := decodeByName(name, b)
			matchErr(t, want, err)
			if strings.HasSuffix(name, ".json") {
				var de *DecodeError
				if assert.ErrorAs(t, err, &de) {
					kind, _, _ := strings.Cut(name, "_")
					assert.Equal(t, kind, de.Kind)
				}
			}
			assert.Zero(t, got, "a refused message decodes to the zero value")
		})
	}
	for name := range goldenInvalid {
		assert.Contains(t, names, name, "expected invalid vector missing")
	}
}

func TestGolden_EncodeRoundTrip(t *testing.T) {
	// What the orchestrator encodes, its decoders read back unchanged.
	for name, want := range goldenValid {
		if _, isFrame := want.(Frame); isFrame {
			continue
		}
		t.Run(name, func(t *testing.T) {
			got, err := decodeByName(name, Encode(want))
			require.NoError(t, err)
			assert.Equal(t, want, got)
		})
	}
}

func TestGolden_DocShowsVectors(t *testing.T) {
	// docs/PROTOCOL.md quotes these vectors verbatim; keep them in step.
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "PROTOCOL.md"))
	require.NoError(t, err)
	for _, name := range []string{
		"hello.json", "hello_resume.json", "hello_rebooted.json", "hello_limits.json",
		"report_rejected_chunk_too_large.json",
		"report_accepted.json", "report_accepted_resume.json", "report_rejected.json",
		"report_downloaded.json", "report_rebooting.json", "report_failed.json",
		"report_cancelled.json", "ack.json", "offer.json", "cancel.json", "chunk.hex",
		"offer_signed.json", "signature/signed.hex", "signature/test.pub", "signature/signature.b64",
	} {
		b, err := os.ReadFile(filepath.Join(goldenDir, name))
		require.NoError(t, err)
		assert.Contains(t, string(doc), strings.TrimSpace(string(b)), "docs/PROTOCOL.md must quote %s", name)
	}
}
