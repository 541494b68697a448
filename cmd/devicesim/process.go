package main

import (
	"bufio"
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"time"
)

// processSampleInterval is how often the process's memory is sampled
// (runtime.ReadMemStats stops the world briefly).
const processSampleInterval = time.Second

// processStats is what devicesim itself costs, for sizing a fleet: the
// summary's "process" object. RSS figures come from /proc/self/status (zero
// where it does not exist); peaks are sampled every second and at the end.
type processStats struct {
	RSSBytes       int64 `json:"rss_bytes"`      // VmRSS at the end
	PeakRSSBytes   int64 `json:"peak_rss_bytes"` // VmHWM at the end
	HeapInuseBytes int64 `json:"heap_inuse_bytes"`
	// LiveHeapBytes is the heap in use right after a collection, at exit:
	// what the fleet holds, without garbage.
	LiveHeapBytes      int64 `json:"live_heap_bytes"`
	PeakHeapInuseBytes int64 `json:"peak_heap_inuse_bytes"`
	StackInuseBytes    int64 `json:"stack_inuse_bytes"`
	Goroutines         int   `json:"goroutines"`
	PeakGoroutines     int   `json:"peak_goroutines"`
	// RSSPerDeviceBytes is RSSBytes over the number of devices.
	RSSPerDeviceBytes int64 `json:"rss_per_device_bytes"`
}

// processSampler keeps the peaks of processStats. It is used by one
// goroutine.
type processSampler struct {
	stats processStats
	last  time.Time
}

// maybeSample samples when processSampleInterval passed since the last one.
func (p *processSampler) maybeSample() {
	if time.Since(p.last) >= processSampleInterval {
		p.sample()
	}
}

func (p *processSampler) sample() {
	p.last = time.Now()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	s := &p.stats
	s.HeapInuseBytes = int64(ms.HeapInuse)
	s.StackInuseBytes = int64(ms.StackInuse)
	s.PeakHeapInuseBytes = max(s.PeakHeapInuseBytes, s.HeapInuseBytes)
	s.Goroutines = runtime.NumGoroutine()
	s.PeakGoroutines = max(s.PeakGoroutines, s.Goroutines)
	if b, err := os.ReadFile("/proc/self/status"); err == nil {
		s.RSSBytes, s.PeakRSSBytes = procStatusKB(b, "VmRSS")*1024, procStatusKB(b, "VmHWM")*1024
	}
}

// final samples once more and returns the stats for n devices.
func (p *processSampler) final(n int) processStats {
	p.sample()
	s := p.stats
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	s.LiveHeapBytes = int64(ms.HeapAlloc)
	if n > 0 {
		s.RSSPerDeviceBytes = s.RSSBytes / int64(n)
	}
	return s
}

// procStatusKB returns the value in kB of a "Key:   123 kB" line of
// /proc/PID/status, or 0.
func procStatusKB(status []byte, key string) int64 {
	sc := bufio.NewScanner(bytes.NewReader(status))
	for sc.Scan() {
		k, v, ok := bytes.Cut(sc.Bytes(), []byte(":"))
		if !ok || string(k) != key {
			continue
		}
		f := bytes.Fields(v)
		if len(f) == 0 {
			return 0
		}
		n, _ := strconv.ParseInt(string(f[0]), 10, 64)
		return n
	}
	return 0
}

// writeHeapProfile writes a heap profile (go tool pprof) of live memory.
func writeHeapProfile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("heap profile: %w", err)
	}
	runtime.GC()
	err = pprof.WriteHeapProfile(f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("heap profile: %w", err)
	}
	return nil
}

// startCPUProfile starts a CPU profile written to path; stop ends it.
func startCPUProfile(path string) (stop func(*slog.Logger), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	return func(log *slog.Logger) {
		pprof.StopCPUProfile()
		if err := f.Close(); err != nil {
			log.Warn("cpu profile not written", "err", err)
		}
	}, nil
}
