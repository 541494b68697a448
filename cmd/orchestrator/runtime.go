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
	"strconv"
	"strings"
	"sync"
	"time"
)

// Runtime settings of the serve command (docs/BENCHMARKS.md).
const (
	// gcPercent is the garbage collector's target unless GOGC is set. The
	// broker copies every message for each subscriber, so the heap churns at
	// the rate of the data path; a target above Go's 100 trades some memory
	// for much less GC CPU.
	gcPercent = 300

	// DefaultMemoryLimit is the soft memory limit unless GOMEMLIMIT is set
	// or --memory-limit says otherwise. Below it the GC target above holds;
	// near it the collector runs more often, so that the headroom the target
	// buys shrinks instead of the process growing.
	DefaultMemoryLimit = 320 << 20
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

// parseMemoryLimit reads --memory-limit: a byte count with an optional
// suffix (KiB, MiB, GiB, or KB, MB, GB as powers of 1000), "off" for no
// limit, or "" for the default.
func parseMemoryLimit(s string) (int64, error) {
	s = strings.TrimSpace(s)
	switch s {
	case "":
		return 0, nil
	case "off", "none":
		return -1, nil
	}
	num, mult := s, int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"B", 1}} {
		if strings.HasSuffix(num, u.suffix) {
			num, mult = strings.TrimSuffix(num, u.suffix), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(strings.TrimSpace(num), 10, 64)
	if err != nil || n <= 0 || n > math.MaxInt64/mult {
		return 0, fmt.Errorf("--memory-limit %q: want a size such as 400MiB or 1GB, or off", s)
	}
	if n*mult < 32<<20 {
		return 0, fmt.Errorf("--memory-limit %q: below 32MiB the collector would run without pause", s)
	}
	return n * mult, nil
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
