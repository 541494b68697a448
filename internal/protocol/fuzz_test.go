package protocol

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flotaio/flota/internal/fleet"
)

// seedVectors adds every golden vector, valid or invalid, whose file name
// starts with prefix.
func seedVectors(f *testing.F, prefix string) {
	f.Helper()
	n := 0
	for _, dir := range []string{goldenDir, filepath.Join(goldenDir, "invalid")} {
		for _, name := range vectorFiles(f, dir) {
			if !strings.HasPrefix(name, prefix) {
				continue
			}
			b, err := os.ReadFile(filepath.Join(dir, name))
			if err != nil {
				f.Fatal(err)
			}
			f.Add(b)
			n++
		}
	}
	if n == 0 {
		f.Fatalf("no golden vector starts with %q", prefix)
	}
}

func FuzzDecodeFrame(f *testing.F) {
	seedVectors(f, KindChunk)
	f.Add(AppendFrame(nil, Frame{}))
	f.Add(AppendFrame(nil, Frame{Flags: 0xFF, Handle: ^uint32(0), Offset: ^uint32(0), Payload: []byte{0}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		in := bytes.Clone(b)
		fr, err := DecodeFrame(b)
		if !bytes.Equal(in, b) {
			t.Fatal("DecodeFrame modified its input")
		}
		if err != nil {
			if !errors.Is(err, ErrShortFrame) && !errors.Is(err, ErrFrameVer) &&
				!errors.Is(err, ErrFrameLength) && !errors.Is(err, ErrFrameCRC) {
				t.Fatalf("error without a frame sentinel: %v", err)
			}
			return
		}
		if len(fr.Payload) > MaxChunkPayload {
			t.Fatalf("accepted a payload of %d bytes", len(fr.Payload))
		}
		// Re-encoding gives the input back, except the reserved bytes, which
		// a decoder ignores and an encoder writes as zero.
		want := bytes.Clone(b)
		want[2], want[3] = 0, 0
		if got := AppendFrame(nil, fr); !bytes.Equal(got, want) {
			t.Fatalf("re-encoded frame differs:\n got %x\nwant %x", got, want)
		}
		buf := bytes.Clone(b)
		PutFrameHeader(buf, fr.Flags, fr.Handle, fr.Offset)
		if !bytes.Equal(buf, want) {
			t.Fatalf("PutFrameHeader differs:\n got %x\nwant %x", buf, want)
		}
	})
}

// checkDecoded asserts the properties every decoder's output has: a refusal
// is a *DecodeError of the right kind, and an accepted message survives an
// encode/decode round trip.
func checkDecoded[T any](t *testing.T, kind string, m T, err error, normalize func(*T), decode func([]byte) (T, error)) {
	t.Helper()
	if err != nil {
		var de *DecodeError
		if !errors.As(err, &de) || de.Kind != kind {
			t.Fatalf("error is not a %s DecodeError: %v", kind, err)
		}
		return
	}
	enc := Encode(m)
	if len(enc) > MaxControlSize {
		// Go escapes some characters longer than the input spelled them.
		return
	}
	again, err := decode(enc)
	if err != nil {
		t.Fatalf("re-encoded message %s refused: %v", enc, err)
	}
	normalize(&m)
	normalize(&again)
	if a, b := Encode(m), Encode(again); !bytes.Equal(a, b) {
		t.Fatalf("round trip changed the message:\n got %s\nwant %s", b, a)
	}
}

func FuzzDecodeHello(f *testing.F) {
	seedVectors(f, KindHello)
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeHello(b)
		if err == nil {
			if m.V != Version || m.Version == "" {
				t.Fatalf("accepted %+v", m)
			}
			if m.Transfer != nil && (m.Transfer.Offset < 0 || !m.Transfer.State.Valid()) {
				t.Fatalf("accepted transfer %+v", *m.Transfer)
			}
		}
		checkDecoded(t, KindHello, m, err, func(h *Hello) {
			if len(h.Tags) == 0 {
				h.Tags = nil
			}
		}, DecodeHello)
	})
}

func FuzzDecodeReport(f *testing.F) {
	seedVectors(f, KindReport)
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeReport(b)
		if err == nil && (m.V != Version || m.Update == "" || m.Offset < 0 || !m.State.Valid()) {
			t.Fatalf("accepted %+v", m)
		}
		if err == nil && (m.State == fleet.StateQueued || m.State == fleet.StateSucceeded) {
			t.Fatalf("accepted orchestrator-only state %q", m.State)
		}
		checkDecoded(t, KindReport, m, err, func(*Report) {}, DecodeReport)
	})
}

func FuzzDecodeAck(f *testing.F) {
	seedVectors(f, KindAck)
	f.Add([]byte(`{"v":1,"handle":4294967295,"offset":9223372036854775807}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeAck(b)
		if err == nil && (m.V != Version || m.Offset < 0) {
			t.Fatalf("accepted %+v", m)
		}
		checkDecoded(t, KindAck, m, err, func(*Ack) {}, DecodeAck)
	})
}

func FuzzParseUpTopic(f *testing.F) {
	for _, s := range []string{
		"flota/devices/dev-1/up/hello",
		"flota/devices/dev-1/up/report",
		"flota/devices/dev-1/up/ack",
		"flota/devices/dev-1/down/chunk",
		"flota/devices/inline/up/hello",
		"flota/devices//up/",
		"flota/devices/a/up/b/c",
		"flota/events/updates/upd-1",
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, topic string) {
		id, kind, ok := ParseUpTopic(topic)
		if !ok {
			if id != "" || kind != "" {
				t.Fatalf("refused topic %q returned %q, %q", topic, id, kind)
			}
			return
		}
		if !fleet.ValidDeviceID(id) {
			t.Fatalf("accepted invalid device ID %q", id)
		}
		if kind == "" || strings.Contains(kind, "/") {
			t.Fatalf("accepted kind %q", kind)
		}
		if UpTopic(id, kind) != topic {
			t.Fatalf("UpTopic(%q, %q) != %q", id, kind, topic)
		}
	})
}

// FuzzDecodeOffer and FuzzDecodeCancel cover the device-side decoders, which
// the Go agent runs on what it receives.
func FuzzDecodeOffer(f *testing.F) {
	seedVectors(f, KindOffer)
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeOffer(b)
		if err == nil && (m.ChunkSize <= 0 || m.ChunkSize > MaxChunkPayload || m.Window <= 0) {
			t.Fatalf("accepted %+v", m)
		}
		checkDecoded(t, KindOffer, m, err, func(*Offer) {}, DecodeOffer)
	})
}

func FuzzDecodeCancel(f *testing.F) {
	seedVectors(f, KindCancel)
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeCancel(b)
		checkDecoded(t, KindCancel, m, err, func(*Cancel) {}, DecodeCancel)
	})
}
