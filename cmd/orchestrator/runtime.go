package main

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/http/pprof"
	"runtime/debug"
	"runtime/metrics"
	"strings"
	"sync"
	"time"
)

// Runtime settings of the serve command (docs/BENCHMARKS.md).
const (
	// gcPercent is the garbage collector's target unless GOGC is set. The
	// heap churns with the data path (packets, reports, events, store
	// batches); a target above Go's 100 trades some memory for less GC CPU.
	gcPercent = 300

	// DefaultMemoryLimit is the soft memory limit unless GOMEMLIMIT is set
	// or --memory-limit says otherwise. Below it the GC target above holds;
	// near it the collector runs more often, so that the headroom the target
	// buys shrinks instead of the process growing.
	DefaultMemoryLimit = 320 << 20

	// liveHeadroom is the least room the governor leaves above the live
	// heap: the limit never falls below the runtime's other memory plus
	// this many times the live heap, so a fleet whose live data outgrows
	// the limit costs memory, not a collector that never stops.
	liveHeadroom = 1.5
	// governEvery is how often the governor revises the limit.
	governEvery = 500 * time.Millisecond
)

// setGCDefaults applies the GC target and the soft memory limit, each unless
// the environment (GOGC, GOMEMLIMIT) already set it; an explicit limit
// (--memory-limit, > 0) wins over GOMEMLIMIT, and a negative one means none.
// It returns the limit in effect (math.MaxInt64 for none).
func setGCDefaults(getenv func(string) string, limit int64) int64 {
	if getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
	switch {
	case limit > 0:
		debug.SetMemoryLimit(limit)
	case limit < 0:
		debug.SetMemoryLimit(math.MaxInt64)
	case getenv("GOMEMLIMIT") == "":
		debug.SetMemoryLimit(DefaultMemoryLimit)
	}
	return debug.SetMemoryLimit(-1) // reads the limit without changing it
}

// memoryGovernor keeps a soft memory limit (set by --memory-limit or the
// default, not GOMEMLIMIT, which the runtime applies as is) from turning into
// back-to-back collections: Go's limit counts goroutine stacks and runtime
// overhead too, and with 10,000 connections mochi's stacks alone take about
// 200 MB. Every governEvery it sets the runtime's limit to the larger of the
// configured one and what the live data needs with liveHeadroom.
type memoryGovernor struct {
	limit  int64
	stop   chan struct{}
	wg     sync.WaitGroup
	sample []metrics.Sample
}

var governorMetrics = []string{
	"/gc/heap/live:bytes",
	"/memory/classes/total:bytes",
	"/memory/classes/heap/objects:bytes",
	"/memory/classes/heap/free:bytes",
	"/memory/classes/heap/released:bytes",
	"/memory/classes/heap/unused:bytes",
}

// startMemoryGovernor starts governing limit (> 0); Close stops it.
func startMemoryGovernor(limit int64) *memoryGovernor {
	g := &memoryGovernor{limit: limit, stop: make(chan struct{})}
	for _, name := range governorMetrics {
		g.sample = append(g.sample, metrics.Sample{Name: name})
	}
	g.wg.Go(func() {
		t := time.NewTicker(governEvery)
		defer t.Stop()
		for {
			select {
			case <-g.stop:
				return
			case <-t.C:
				debug.SetMemoryLimit(g.next())
			}
		}
	})
	return g
}

// next is the limit to apply now.
func (g *memoryGovernor) next() int64 {
	metrics.Read(g.sample)
	v := func(i int) uint64 {
		if g.sample[i].Value.Kind() != metrics.KindUint64 {
			return 0
		}
		return g.sample[i].Value.Uint64()
	}
	live, total := v(0), v(1)
	heap := v(2) + v(3) + v(4) + v(5) // objects, free, released, unused: the heap's share of total
	return governedLimit(g.limit, live, total-min(total, heap))
}

// governedLimit is the configured limit, raised if the live heap with its
// headroom plus the runtime's other memory (stacks, metadata) exceeds it.
func governedLimit(limit int64, live, other uint64) int64 {
	need := int64(other) + int64(float64(live)*liveHeadroom)
	return max(limit, need)
}

// Close stops the governor; the last limit stays.
func (g *memoryGovernor) Close() error {
	close(g.stop)
	g.wg.Wait()
	return nil
}

// parseMemoryLimit reads --memory-limit: a byte count as parseSize64 reads
// it, "off" for no limit, or "" for the default.
func parseMemoryLimit(s string) (int64, error) {
	s = strings.TrimSpace(s)
	switch s {
	case "":
		return 0, nil
	case "off", "none":
		return -1, nil
	}
	n, err := parseSize64(s)
	if err != nil {
		return 0, fmt.Errorf("--memory-limit %q: want a size such as 400MiB or 1GB, or off", s)
	}
	if n < 32<<20 {
		return 0, fmt.Errorf("--memory-limit %q: below 32MiB the collector would run without pause", s)
	}
	return n, nil
}

// debugServer serves Go's runtime profiles (net/http/pprof) on a listener of
// its own, never on the API's: profiles reveal memory contents and cost CPU,
// so they are for an operator on a private address only.
type debugServer struct {
	ln  net.Listener
	srv *http.Server
	wg  sync.WaitGroup
}

// openDebugServer listens on addr and serves /debug/pprof/ there.
func openDebugServer(addr string, log *slog.Logger) (*debugServer, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("debug listen %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	d := &debugServer{ln: ln, srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}}
	d.wg.Go(func() {
		if err := d.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("debug serve", "err", err)
		}
	})
	return d, nil
}

// URL is the base URL of the profiles.
func (d *debugServer) URL() string { return "http://" + d.ln.Addr().String() + "/debug/pprof/" }

// Close stops the server at once (profiles in progress are cut) and waits.
func (d *debugServer) Close() error {
	err := d.srv.Close()
	d.wg.Wait()
	return err
}
