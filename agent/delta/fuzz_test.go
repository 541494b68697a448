package delta

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"testing"
)

// countWriter counts the target bytes a decoder writes, holding none.
type countWriter struct{ n int64 }

func (w *countWriter) Write(p []byte) (int, error) {
	w.n += int64(len(p))
	return len(p), nil
}

// FuzzDecoder feeds arbitrary payloads, in arbitrary pieces, to both
// decoders: they return nil or an error wrapping ErrCorrupt, never panic,
// and write no more target than the payload's segments allow.
func FuzzDecoder(f *testing.F) {
	r := rand.New(rand.NewPCG(15, 16))
	base := codeLike(r, 20_000)
	target := mutate(r, base, 5, 5, 1000)
	enc := encodeBoth(f, base, target)
	f.Add(false, uint16(0), enc[Deflate])
	f.Add(true, uint16(0), enc[BSDiff])
	f.Add(true, uint16(7), enc[BSDiff][:len(enc[BSDiff])/2])
	f.Add(false, uint16(1), []byte{0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01})
	f.Fuzz(func(t *testing.T, bsdiff bool, split uint16, payload []byte) {
		encoding := Deflate
		if bsdiff {
			encoding = BSDiff
		}
		var out countWriter
		dec, err := NewDecoder(encoding, bytes.NewReader(base), int64(len(base)), &out, Checkpoint{})
		if err != nil {
			t.Fatal(err)
		}
		step := int(split)%4096 + 1
		var werr error
		for p := payload; len(p) > 0 && werr == nil; {
			k := min(step, len(p))
			_, werr = dec.Write(p[:k])
			p = p[k:]
		}
		err = errors.Join(werr, dec.Close())
		if err != nil && !errors.Is(err, ErrCorrupt) {
			t.Fatalf("error not wrapping ErrCorrupt: %v", err)
		}
		// A segment takes at least 2 payload bytes and writes at most
		// MaxSegmentOutput target bytes.
		if out.n > int64(len(payload)/2+1)*MaxSegmentOutput {
			t.Fatalf("%d target bytes from %d payload bytes", out.n, len(payload))
		}
		cp := dec.Checkpoint()
		if cp.Payload > int64(len(payload)) || cp.Target > out.n {
			t.Fatalf("checkpoint %+v beyond %d payload, %d target bytes", cp, len(payload), out.n)
		}
	})
}

func TestDecoder_HeapStaysUnderBoundWhileDecodingMiBs(t *testing.T) {
	// A target of 1 MiB of changed base and 2 MiB of new bytes, as ADD and
	// COPY operations written directly: the search of Diff is not what
	// this test is about.
	r := rand.New(rand.NewPCG(17, 18))
	base := codeLike(r, 1<<20)
	var target []byte
	var d bytes.Buffer
	sw, err := newSegmentWriter(&d)
	if err != nil {
		t.Fatal(err)
	}
	ow := &opWriter{sw: sw}
	for o := 0; o < len(base); o += 64 << 10 {
		next := bytes.Clone(base[o : o+64<<10])
		next[r.IntN(len(next))]++
		if err := ow.add(o, base[o:o+64<<10], next); err != nil {
			t.Fatal(err)
		}
		lit := make([]byte, 128<<10)
		fillRandom(r, lit)
		if err := ow.copy(lit); err != nil {
			t.Fatal(err)
		}
		target = append(append(target, next...), lit...)
	}
	if err := ow.flush(); err != nil {
		t.Fatal(err)
	}
	var c bytes.Buffer
	if _, err := Compress(&c, bytes.NewReader(target)); err != nil {
		t.Fatal(err)
	}
	for encoding, payload := range map[string][]byte{Deflate: c.Bytes(), BSDiff: d.Bytes()} {
		t.Run(encoding, func(t *testing.T) {
			if len(payload) < 2<<20 {
				t.Fatalf("payload of %d bytes: not multi-MiB", len(payload))
			}
			var out countWriter
			var before, after runtimeStats
			before.read()
			dec, err := NewDecoder(encoding, bytes.NewReader(base), int64(len(base)), &out, Checkpoint{})
			if err != nil {
				t.Fatal(err)
			}
			for p := payload; len(p) > 0; {
				k := min(4096, len(p))
				if _, err := dec.Write(p[:k]); err != nil {
					t.Fatal(err)
				}
				p = p[k:]
			}
			if err := dec.Close(); err != nil {
				t.Fatal(err)
			}
			after.read()
			if out.n != int64(len(target)) {
				t.Fatalf("decoded %d bytes of %d", out.n, len(target))
			}
			allocated := after.totalAlloc - before.totalAlloc
			t.Logf("%s: %d payload bytes decoded with %d bytes allocated in all", encoding, len(payload), allocated)
			if allocated > DecoderMemoryBound {
				t.Fatalf("decoder allocated %d bytes, bound %d", allocated, DecoderMemoryBound)
			}
		})
	}
}
