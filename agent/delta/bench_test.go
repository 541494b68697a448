package delta

import (
	"bytes"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The devicesim builds BenchmarkDiff compares: FLOTA_DELTA_OLD and
// FLOTA_DELTA_NEW name two commits (default: 38 commits apart, three of
// which change code devicesim is built from).
const (
	defaultOldCommit = "68bfbe6"
	defaultNewCommit = "8140a73"
)

// BenchmarkDiff measures payload sizes (as % of the image), the time and
// CPU time of Diff and its peak heap:
//
//	go test -run XXX -bench 'BenchmarkDiff$' -benchtime 1x ./agent/delta
//
// "devicesim" builds cmd/devicesim at two commits with git worktree (cached
// under $TMPDIR/flota-delta-bench), as go build makes it, stripped as
// firmware ships (-s -w), and with uncompressed DWARF; "small-changes" is
// a 1 MiB image with 1% of its bytes changed in 10 places and a 4 KiB
// insertion.
func BenchmarkDiff(b *testing.B) {
	b.Run("small-changes", func(b *testing.B) {
		r := rand.New(rand.NewPCG(19, 20))
		base := codeLike(r, 1<<20)
		benchDiff(b, base, mutate(r, base, 10, 1, 4096))
	})
	variants := []struct{ name, ldflags string }{
		{"devicesim", ""},
		{"devicesim-stripped", "-s -w"},
		{"devicesim-dwarf-uncompressed", "-compressdwarf=false"},
	}
	for _, v := range variants {
		b.Run(v.name, func(b *testing.B) {
			old := buildDevicesim(b, envOr("FLOTA_DELTA_OLD", defaultOldCommit), v.ldflags)
			new := buildDevicesim(b, envOr("FLOTA_DELTA_NEW", defaultNewCommit), v.ldflags)
			benchDiff(b, old, new)
		})
	}
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// benchDiff reports Diff's payload and Compress's as % of the target, with
// Diff's wall and CPU seconds and its heap peak above what was live before.
func benchDiff(b *testing.B, base, target []byte) {
	var full bytes.Buffer
	if _, err := Compress(&full, bytes.NewReader(target)); err != nil {
		b.Fatal(err)
	}
	var payload bytes.Buffer
	var cpu time.Duration
	var peak uint64
	b.ResetTimer()
	for range b.N {
		payload.Reset()
		payload.Grow(len(target))
		runtime.GC()
		sampler := startHeapSampler()
		cpu0 := cpuTime()
		if _, err := Diff(&payload, base, target, DiffOptions{}); err != nil {
			b.Fatal(err)
		}
		cpu += cpuTime() - cpu0
		peak = max(peak, sampler.stop())
	}
	b.StopTimer()
	got, err := decodeAll(b, BSDiff, base, payload.Bytes(), 1<<16)
	if err != nil || !bytes.Equal(got, target) {
		b.Fatalf("the payload does not decode to the target: %v", err)
	}
	size := float64(len(target))
	b.ReportMetric(float64(len(target))/1e6, "image-MB")
	b.ReportMetric(100*float64(payload.Len())/size, "delta-%")
	b.ReportMetric(100*float64(full.Len())/size, "deflate-%")
	b.ReportMetric(cpu.Seconds()/float64(b.N), "cpu-s/op")
	b.ReportMetric(float64(peak)/1e6, "heap-peak-MB")
	b.ReportMetric(float64(peak)/float64(len(base)), "heap-peak/base")
}

// cpuTime is the process's user and system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// heapSampler polls the heap's size (live and not yet collected objects)
// every millisecond and keeps the highest above where it started.
type heapSampler struct {
	done chan struct{}
	wg   sync.WaitGroup
	peak uint64
}

const heapObjects = "/memory/classes/heap/objects:bytes"

func heapNow() uint64 {
	s := []metrics.Sample{{Name: heapObjects}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

func startHeapSampler() *heapSampler {
	s := &heapSampler{done: make(chan struct{})}
	start := heapNow()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		for {
			if h := heapNow(); h > start {
				s.peak = max(s.peak, h-start)
			}
			select {
			case <-s.done:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

func (s *heapSampler) stop() uint64 {
	close(s.done)
	s.wg.Wait()
	return s.peak
}

// buildDevicesim returns cmd/devicesim built at commit with ldflags,
// building it in a temporary git worktree the first time.
func buildDevicesim(b *testing.B, commit, ldflags string) []byte {
	top, err := exec.Command("git", "rev-parse", "--show-toplevel").Output()
	if err != nil {
		b.Skip("not in a git checkout: no devicesim builds to compare")
	}
	repo := strings.TrimSpace(string(top))
	rev, err := exec.Command("git", "-C", repo, "rev-parse", "--short=12", commit+"^{commit}").Output()
	if err != nil {
		b.Skipf("commit %s is not in this checkout (set FLOTA_DELTA_OLD and FLOTA_DELTA_NEW)", commit)
	}
	name := strings.TrimSpace(string(rev)) + "-" + strings.NewReplacer(" ", "", "-", "", "=", "").Replace(ldflags)
	cache := filepath.Join(os.TempDir(), "flota-delta-bench")
	bin := filepath.Join(cache, "devicesim-"+name)
	if img, err := os.ReadFile(bin); err == nil {
		return img
	}
	if err := os.MkdirAll(cache, 0o755); err != nil {
		b.Fatal(err)
	}
	src := filepath.Join(b.TempDir(), "src")
	if out, err := exec.Command("git", "-C", repo, "worktree", "add", "--detach", src, commit).CombinedOutput(); err != nil {
		b.Fatalf("git worktree add: %v\n%s", err, out)
	}
	defer func() {
		if out, err := exec.Command("git", "-C", repo, "worktree", "remove", "--force", src).CombinedOutput(); err != nil {
			b.Errorf("git worktree remove: %v\n%s", err, out)
		}
	}()
	build := exec.Command("go", "build", "-ldflags="+ldflags, "-o", bin+".tmp", "./cmd/devicesim")
	build.Dir = src
	if out, err := build.CombinedOutput(); err != nil {
		b.Fatalf("go build at %s: %v\n%s", commit, err, out)
	}
	if err := os.Rename(bin+".tmp", bin); err != nil {
		b.Fatal(err)
	}
	img, err := os.ReadFile(bin)
	if err != nil {
		b.Fatal(err)
	}
	return img
}

// BenchmarkDecoder measures decoding speed, in target bytes per second,
// with the target discarded and the base in memory.
func BenchmarkDecoder(b *testing.B) {
	base, target, enc := payloads(b)
	for _, encoding := range []string{Deflate, BSDiff} {
		b.Run(encoding, func(b *testing.B) {
			payload := enc[encoding]
			b.SetBytes(int64(len(target)))
			for range b.N {
				var out countWriter
				d, err := NewDecoder(encoding, bytes.NewReader(base), int64(len(base)), &out, Checkpoint{})
				if err != nil {
					b.Fatal(err)
				}
				for p := payload; len(p) > 0; {
					k := min(16<<10, len(p))
					if _, err := d.Write(p[:k]); err != nil {
						b.Fatal(err)
					}
					p = p[k:]
				}
				if err := d.Close(); err != nil || out.n != int64(len(target)) {
					b.Fatalf("decoded %d bytes: %v", out.n, err)
				}
			}
		})
	}
}

// BenchmarkDiffAdversarial measures Diff on 4 MiB pairs that are hard for
// bsdiff's search: long runs, periodic data, random data against sparse
// changes, unrelated images.
func BenchmarkDiffAdversarial(b *testing.B) {
	const n = 4 << 20
	r := rand.New(rand.NewPCG(25, 26))
	random := make([]byte, n)
	fillRandom(r, random)
	zeros := make([]byte, n)
	periodic := func(period int, k byte) []byte {
		p := make([]byte, n)
		for i := range p {
			p[i] = byte(i%period) * k
		}
		return p
	}
	sparse := func(p []byte, every int) []byte {
		p = bytes.Clone(p)
		for i := 0; i < len(p); i += every {
			p[i] ^= 0x5a
		}
		return p
	}
	cases := []struct {
		name         string
		base, target []byte
	}{
		{"random-sparse", random, sparse(random, 1000)},
		{"zeros-ff", zeros, bytes.Repeat([]byte{0xff}, n)},
		{"zeros-sparse", zeros, sparse(zeros, 37)},
		{"periodic-sparse", periodic(16, 3), sparse(periodic(16, 3), 101)},
		{"periodic-other-period", periodic(7, 5), periodic(16, 3)},
		{"random-zeros-sparse", random, sparse(zeros, 13)},
		{"zeros-random", zeros, random},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			benchDiff(b, c.base, c.target)
		})
	}
}
