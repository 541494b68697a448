package delta

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"index/suffixarray"
	"io"
	"math/rand/v2"
	"sort"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/protocol"
)

// decodeAll decodes payload in pieces of at most split bytes.
func decodeAll(t testing.TB, encoding string, base, payload []byte, split int) ([]byte, error) {
	t.Helper()
	var out bytes.Buffer
	d, err := NewDecoder(encoding, bytes.NewReader(base), int64(len(base)), &out, Checkpoint{})
	require.NoError(t, err)
	for p := payload; len(p) > 0; {
		k := min(split, len(p))
		if _, err := d.Write(p[:k]); err != nil {
			d.Close()
			return out.Bytes(), err
		}
		p = p[k:]
	}
	return out.Bytes(), d.Close()
}

// mutate returns a copy of img with about pct% of its bytes changed in
// places runs, and ins random bytes inserted in the middle.
func mutate(r *rand.Rand, img []byte, places int, pct float64, ins int) []byte {
	out := bytes.Clone(img)
	per := int(float64(len(img)) * pct / 100 / float64(places))
	for range places {
		at := r.IntN(len(out) - per)
		for i := range per {
			out[at+i] ^= byte(1 + r.IntN(255))
		}
	}
	extra := make([]byte, ins)
	fillRandom(r, extra)
	mid := len(out) / 2
	return append(out[:mid:mid], append(extra, out[mid:]...)...)
}

func fillRandom(r *rand.Rand, b []byte) {
	for i := range b {
		b[i] = byte(r.Uint32())
	}
}

// codeLike returns n bytes that deflate somewhat, like machine code: random
// words from a small vocabulary.
func codeLike(r *rand.Rand, n int) []byte {
	vocab := make([][]byte, 512)
	for i := range vocab {
		vocab[i] = make([]byte, 1+r.IntN(7))
		fillRandom(r, vocab[i])
	}
	var b []byte
	for len(b) < n {
		b = append(b, vocab[r.IntN(len(vocab))]...)
	}
	return b[:n]
}

func TestEncodings_NamesMatchTheProtocol(t *testing.T) {
	require.Equal(t, protocol.EncodingDeflate, Deflate)
	require.Equal(t, protocol.EncodingBSDiff, BSDiff)
}

func TestCompress_RoundTripsInAnySplit(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, size := range []int{0, 1, 1000, MaxSegmentOutput - 1, MaxSegmentOutput, MaxSegmentOutput + 1, 300_000} {
		for _, kind := range []string{"random", "code", "zeros"} {
			t.Run(fmt.Sprintf("%s-%d", kind, size), func(t *testing.T) {
				img := make([]byte, size)
				switch kind {
				case "random":
					fillRandom(r, img)
				case "code":
					img = codeLike(r, size)
				}
				var payload bytes.Buffer
				n, err := Compress(&payload, bytes.NewReader(img))
				require.NoError(t, err)
				require.Equal(t, int64(payload.Len()), n)
				for _, split := range []int{7, 4096, len(payload.Bytes()) + 1} {
					got, err := decodeAll(t, Deflate, nil, payload.Bytes(), split)
					require.NoError(t, err)
					require.True(t, bytes.Equal(img, got), "split %d", split)
				}
			})
		}
	}
}

func TestDiff_RoundTripsInAnySplit(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	code := codeLike(r, 150_000)
	random := make([]byte, 100_000)
	fillRandom(r, random)
	cases := []struct {
		name         string
		base, target []byte
	}{
		{"empty both", nil, nil},
		{"empty base", nil, code[:5000]},
		{"empty target", code[:5000], nil},
		{"same", code, code},
		{"small changes", code, mutate(r, code, 10, 1, 4096)},
		{"many changes", code, mutate(r, code, 500, 10, 30_000)},
		{"random changes", random, mutate(r, random, 10, 1, 4096)},
		{"unrelated", random, code[:100_000]},
		{"one byte base", []byte{7}, code[:100_000]},
		{"zeros", make([]byte, 200_000), make([]byte, 300_000)},
		{"longer than a segment", code[:100], code},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var payload bytes.Buffer
			n, err := Diff(&payload, c.base, c.target, DiffOptions{})
			require.NoError(t, err)
			require.Equal(t, int64(payload.Len()), n)
			for _, split := range []int{5, 1000, len(payload.Bytes()) + 1} {
				got, err := decodeAll(t, BSDiff, c.base, payload.Bytes(), split)
				require.NoError(t, err)
				require.True(t, bytes.Equal(c.target, got), "split %d", split)
			}
		})
	}
}

func TestDiff_SmallChangesGiveASmallPayload(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	base := codeLike(r, 1<<20)
	target := mutate(r, base, 10, 1, 4096)
	enc := encodeBoth(t, base, target)
	t.Logf("target %d, compressed %d, delta %d (%.2f%%)", len(target), len(enc[Deflate]), len(enc[BSDiff]), 100*float64(len(enc[BSDiff]))/float64(len(target)))
	require.Less(t, len(enc[BSDiff]), len(target)*3/100)
}

func TestDiff_RefusesInputsOverMaxSize(t *testing.T) {
	var payload bytes.Buffer
	_, err := Diff(&payload, make([]byte, 1001), make([]byte, 10), DiffOptions{MaxSize: 1000})
	require.ErrorIs(t, err, ErrTooLarge)
	_, err = Diff(&payload, make([]byte, 10), make([]byte, 1001), DiffOptions{MaxSize: 1000})
	require.ErrorIs(t, err, ErrTooLarge)
	require.Zero(t, payload.Len())
	_, err = Diff(&payload, make([]byte, 1000), make([]byte, 1000), DiffOptions{MaxSize: 1000})
	require.NoError(t, err)
}

// failAfter is a writer that fails once it has taken n bytes.
type failAfter struct{ n int }

var errStop = errors.New("stop")

func (w *failAfter) Write(p []byte) (int, error) {
	if len(p) > w.n {
		return 0, errStop
	}
	w.n -= len(p)
	return len(p), nil
}

func TestDiff_StopsAtTheSegmentWhoseWriteFails(t *testing.T) {
	r := rand.New(rand.NewPCG(23, 24))
	base := codeLike(r, 300_000)
	target := mutate(r, base, 300, 5, 0)
	var whole bytes.Buffer
	_, err := Diff(&whole, base, target, DiffOptions{})
	require.NoError(t, err)
	w := &failAfter{n: whole.Len() / 2}
	n, err := Diff(w, base, target, DiffOptions{})
	require.ErrorIs(t, err, errStop)
	require.LessOrEqual(t, n, int64(whole.Len()/2))
	_, err = Compress(&failAfter{n: 10}, bytes.NewReader(target))
	require.ErrorIs(t, err, errStop)
}

func TestSuffixArray_MatchesNaiveSort(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	for _, n := range []int{1, 2, 3, 100, 5000, 70_000} {
		for _, alphabet := range []int{1, 2, 256} {
			data := make([]byte, n)
			for i := range data {
				data[i] = byte(r.IntN(alphabet))
			}
			sa, err := suffixArray(data)
			require.NoError(t, err)
			want := make([]int32, n)
			for i := range want {
				want[i] = int32(i)
			}
			sort.Slice(want, func(i, j int) bool { return bytes.Compare(data[want[i]:], data[want[j]:]) < 0 })
			require.Equal(t, want, sa, "n %d alphabet %d", n, alphabet)
		}
	}
}

func TestSaParser_AcceptsAnySplit(t *testing.T) {
	data := codeLike(rand.New(rand.NewPCG(9, 10)), 50_000)
	want, err := suffixArray(data)
	require.NoError(t, err)
	var stream bytes.Buffer
	require.NoError(t, suffixarrayWrite(data, &stream))
	for _, split := range []int{1, 3, 11, 4096} {
		p := &saParser{sa: make([]int32, 0, len(data))}
		for b := stream.Bytes(); len(b) > 0; {
			k := min(split, len(b))
			_, err := p.Write(b[:k])
			require.NoError(t, err)
			b = b[k:]
		}
		require.Equal(t, want, p.sa)
	}
}

func suffixarrayWrite(data []byte, w io.Writer) error {
	return suffixarray.New(data).Write(w)
}

// payloads returns a deflate and a bsdiff payload of a few hundred KiB,
// with their base and target.
func payloads(t testing.TB) (base, target []byte, enc map[string][]byte) {
	testPayloads.once.Do(func() {
		r := rand.New(rand.NewPCG(11, 12))
		p := &testPayloads
		p.base = codeLike(r, 250_000)
		p.target = mutate(r, p.base, 100, 20, 20_000)
		p.enc = encodeBoth(t, p.base, p.target)
	})
	require.NotNil(t, testPayloads.enc)
	return testPayloads.base, testPayloads.target, testPayloads.enc
}

// encodeBoth returns target's deflate payload and its bsdiff payload from
// base, by encoding name.
func encodeBoth(t testing.TB, base, target []byte) map[string][]byte {
	t.Helper()
	var c, d bytes.Buffer
	_, err := Compress(&c, bytes.NewReader(target))
	require.NoError(t, err)
	_, err = Diff(&d, base, target, DiffOptions{})
	require.NoError(t, err)
	return map[string][]byte{Deflate: c.Bytes(), BSDiff: d.Bytes()}
}

// testPayloads is made once for the tests that share it, read-only.
var testPayloads struct {
	once         sync.Once
	base, target []byte
	enc          map[string][]byte
}

// checkpoints decodes payload in pieces of 3 bytes and returns every
// checkpoint, from the first, checking that each is where a segment ends
// and counts only target bytes written.
func checkpoints(t *testing.T, encoding string, base, payload []byte) []Checkpoint {
	t.Helper()
	ends := map[int64]bool{}
	for p := int64(0); p < int64(len(payload)); {
		l, n := binary.Uvarint(payload[p:])
		require.Positive(t, n)
		p += int64(n) + int64(l)
		ends[p] = true
	}
	var out bytes.Buffer
	d, err := NewDecoder(encoding, bytes.NewReader(base), int64(len(base)), &out, Checkpoint{})
	require.NoError(t, err)
	cps := []Checkpoint{d.Checkpoint()}
	for i := 0; i < len(payload); i += 3 {
		_, err := d.Write(payload[i:min(i+3, len(payload))])
		require.NoError(t, err)
		cp := d.Checkpoint()
		require.LessOrEqual(t, cp.Target, int64(out.Len()), "a checkpoint counts only written target")
		if cp != cps[len(cps)-1] {
			require.True(t, ends[cp.Payload], "a checkpoint is where a segment ends")
			cps = append(cps, cp)
		}
	}
	require.NoError(t, d.Close())
	return cps
}

func TestDecoder_ResumesFromEveryCheckpoint(t *testing.T) {
	base, target, enc := payloads(t)
	for encoding, payload := range enc {
		t.Run(encoding, func(t *testing.T) {
			cps := checkpoints(t, encoding, base, payload)
			require.Equal(t, Checkpoint{int64(len(payload)), int64(len(target))}, cps[len(cps)-1])
			require.Greater(t, len(cps), 5)

			// Resume from each one, the target truncated to it.
			for _, cp := range cps {
				var out bytes.Buffer
				out.Write(target[:cp.Target])
				d, err := NewDecoder(encoding, bytes.NewReader(base), int64(len(base)), &out, cp)
				require.NoError(t, err)
				_, err = d.Write(payload[cp.Payload:])
				require.NoError(t, err)
				require.NoError(t, d.Close())
				require.Equal(t, int64(len(payload)), d.Checkpoint().Payload)
				require.True(t, bytes.Equal(target, out.Bytes()), "resume from %+v", cp)
			}
		})
	}
}

// checkpointSpy is a decoder's output that, at each Write, compares the
// decoder's checkpoint with the bytes it holds.
type checkpointSpy struct {
	d       *Decoder
	n       int64
	last    Checkpoint
	exact   int // checkpoints first seen with exactly their Target written
	inexact int
}

func (w *checkpointSpy) Write(p []byte) (int, error) {
	if cp := w.d.Checkpoint(); cp != w.last {
		if cp.Target == w.n {
			w.exact++
		} else {
			w.inexact++
		}
		w.last = cp
	}
	w.n += int64(len(p))
	return len(p), nil
}

func TestDecoder_CheckpointMovesBeforeTheNextSegmentsFirstByte(t *testing.T) {
	base, _, enc := payloads(t)
	for encoding, payload := range enc {
		t.Run(encoding, func(t *testing.T) {
			spy := &checkpointSpy{}
			d, err := NewDecoder(encoding, bytes.NewReader(base), int64(len(base)), spy, Checkpoint{})
			require.NoError(t, err)
			spy.d = d
			_, err = d.Write(payload) // all at once: segments end mid-Write
			require.NoError(t, err)
			require.NoError(t, d.Close())
			require.Zero(t, spy.inexact)
			require.Greater(t, spy.exact, 3)
		})
	}
}

func TestDecoder_TruncatedOrFlippedPayloadIsCorruptOrDiffers(t *testing.T) {
	base, target, enc := payloads(t)
	want := sha256.Sum256(target)
	r := rand.New(rand.NewPCG(13, 14))
	for encoding, payload := range enc {
		t.Run(encoding, func(t *testing.T) {
			boundaries := map[int64]bool{}
			for _, cp := range checkpoints(t, encoding, base, payload) {
				boundaries[cp.Payload] = true
			}
			for range 15 {
				// A cut at a segment boundary decodes to a short target,
				// which only ExpectTarget catches.
				cut := int64(r.IntN(len(payload)))
				if r.IntN(4) == 0 {
					for cut > 0 && !boundaries[cut] {
						cut--
					}
				}
				got, err := decodeAll(t, encoding, base, payload[:cut], 997)
				if boundaries[cut] {
					require.NoError(t, err)
					require.Less(t, len(got), len(target))
				} else {
					require.ErrorIs(t, err, ErrCorrupt, "cut at %d of %d", cut, len(payload))
				}
				var out bytes.Buffer
				d, err := NewDecoder(encoding, bytes.NewReader(base), int64(len(base)), &out, Checkpoint{})
				require.NoError(t, err)
				d.ExpectTarget(int64(len(target)))
				_, werr := d.Write(payload[:cut])
				require.ErrorIs(t, errors.Join(werr, d.Close()), ErrCorrupt, "cut at %d of %d", cut, len(payload))
			}
			for range 25 {
				bad := bytes.Clone(payload)
				bad[r.IntN(len(bad))] ^= 1 << r.IntN(8)
				got, err := decodeAll(t, encoding, base, bad, 4096)
				if err != nil {
					require.ErrorIs(t, err, ErrCorrupt)
					continue
				}
				require.NotEqual(t, want, sha256.Sum256(got))
			}
		})
	}
}

func TestDecoder_ExpectTargetRefusesLongerAndShorterTargets(t *testing.T) {
	_, target, enc := payloads(t)
	payload := enc[Deflate]
	for _, size := range []int64{int64(len(target)) - 1, int64(len(target)) + 1} {
		var out bytes.Buffer
		d, err := NewDecoder(Deflate, nil, 0, &out, Checkpoint{})
		require.NoError(t, err)
		d.ExpectTarget(size)
		_, werr := d.Write(payload)
		err = errors.Join(werr, d.Close())
		require.ErrorIs(t, err, ErrCorrupt, "expecting %d", size)
		require.LessOrEqual(t, int64(out.Len()), size)
	}
}

func TestDecoder_RejectsUnknownEncodingAndDataAfterTheEnd(t *testing.T) {
	_, err := NewDecoder("zstd", nil, 0, &bytes.Buffer{}, Checkpoint{})
	require.ErrorIs(t, err, ErrEncoding)
	_, _, enc := payloads(t)
	var out bytes.Buffer
	d, err := NewDecoder(Deflate, nil, 0, &out, Checkpoint{})
	require.NoError(t, err)
	_, err = d.Write(append(bytes.Clone(enc[Deflate]), 0))
	require.ErrorIs(t, errors.Join(err, d.Close()), ErrCorrupt)
}
