package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/flotaio/flota/internal/fleet"
)

// Defaults of the flags.
const (
	DefaultDevices     = 2000
	DefaultSize        = 256 * 1024
	DefaultConnectRate = 1000
	DefaultTimeout     = 3 * time.Minute
	DefaultBinDir      = "bin"
	DefaultLogLevel    = "warn"

	maxDevices = 99999     // devicesim numbers devices with 5 digits
	maxSize    = 512 << 20 // the HTTP API's default firmware limit
	maxLatency = 10 * time.Second
)

// What --run selects; runSaw is also the name of the stop-and-wait row.
const (
	runAll   = "all"
	runBoth  = "both" // flota and raw
	runFlota = "flota"
	runRaw   = "raw"
	runSaw   = "saw"
)

// DefaultPlot is where --sweep draws its plot.
const DefaultPlot = "docs/throughput.svg"

// usageError is a bad command line: exit status 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// options are flotabench's flags.
type options struct {
	Devices     int           `json:"devices"`
	Size        int           `json:"size"`
	MaxInFlight int           `json:"max_in_flight"`
	Window      int           `json:"window"`
	ChunkSize   int           `json:"chunk_size"`
	BinDir      string        `json:"bin_dir"`
	JSONFile    string        `json:"-"`
	Run         string        `json:"run"`
	ConnectRate int           `json:"connect_rate"`
	Timeout     time.Duration `json:"-"`
	LogLevel    string        `json:"orchestrator_log_level"`
	// Sweep lists the max-in-flight values of a sweep (empty: no sweep);
	// Plot is the SVG file it draws.
	Sweep []int  `json:"sweep,omitempty"`
	Plot  string `json:"-"`
	// ProfileDir, when set, receives the orchestrator's CPU and heap
	// profiles taken during the flota update.
	ProfileDir string `json:"-"`
	// Latency is the one-way delay every peer adds to each message it
	// receives and sends (devicesim --latency for flota; the raw and
	// stop-and-wait subscribers apply it themselves).
	Latency time.Duration `json:"latency,omitempty"`
}

// chunks is the number of chunk frames per device.
func (o options) chunks() int { return (o.Size + o.ChunkSize - 1) / o.ChunkSize }

// runs reports whether --run selects the named measurement.
func (o options) runs(name string) bool {
	switch o.Run {
	case runAll:
		return true
	case runBoth:
		return name == runFlota || name == runRaw
	}
	return o.Run == name
}

// intList is a flag.Value: a comma-separated list of positive integers.
type intList []int

func (l *intList) String() string {
	if l == nil {
		return ""
	}
	parts := make([]string, len(*l))
	for i, v := range *l {
		parts[i] = strconv.Itoa(v)
	}
	return strings.Join(parts, ",")
}

func (l *intList) Set(s string) error {
	var out []int
	for _, part := range strings.Split(s, ",") {
		v, err := strconv.Atoi(strings.TrimSpace(part))
		if err != nil {
			return fmt.Errorf("%q is not a number", part)
		}
		out = append(out, v)
	}
	*l = out
	return nil
}

func newFlagSet(o *options) *flag.FlagSet {
	fs := flag.NewFlagSet("flotabench", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are returned; --help prints the usage
	fs.IntVar(&o.Devices, "devices", DefaultDevices, "number of devices (1..99999)")
	fs.IntVar(&o.Size, "size", DefaultSize, "firmware size in bytes")
	fs.IntVar(&o.MaxInFlight, "max-in-flight", fleet.DefaultMaxInFlight, "devices receiving at once")
	fs.IntVar(&o.Window, "window", fleet.DefaultWindow, "unacknowledged chunks per device; also sizes the broker's per-client queues")
	fs.IntVar(&o.ChunkSize, "chunk-size", fleet.DefaultChunkSize, "chunk payload size in bytes")
	fs.StringVar(&o.BinDir, "bin-dir", DefaultBinDir, "directory holding the orchestrator and devicesim binaries")
	fs.StringVar(&o.JSONFile, "json", "", "also write the results as JSON to this file")
	fs.StringVar(&o.Run, "run", runAll, "what to measure: all (flota, raw and stop-and-wait), both (flota and raw), flota, raw or saw")
	fs.Var((*intList)(&o.Sweep), "sweep", "comma-separated max-in-flight values: measure flota and raw at each and plot MiB/s (e.g. 16,64,256,1000,2000)")
	fs.StringVar(&o.Plot, "plot", DefaultPlot, "SVG file the sweep draws")
	fs.IntVar(&o.ConnectRate, "connect-rate", DefaultConnectRate, "connections opened per second by devicesim")
	fs.DurationVar(&o.Timeout, "timeout", DefaultTimeout, "longest time each measured transfer may take")
	fs.StringVar(&o.LogLevel, "log-level", DefaultLogLevel, "the orchestrator's log level: debug, info, warn or error")
	fs.StringVar(&o.ProfileDir, "profile", "", "write the orchestrator's heap profile at the update's start, its CPU profile ("+fmt.Sprint(profileSeconds)+" s from the update's start) and then its heap profile again, and devicesim's CPU profile (devicesim-cpu.pprof, the whole run) and heap profile (devicesim-heap.pprof, as the run ends: alloc_space is all it allocated), to this directory")
	fs.DurationVar(&o.Latency, "latency", 0, "one-way delay every device adds to each message it receives and sends (round trip +2x)")
	return fs
}

func usage(w io.Writer) {
	var o options
	fs := newFlagSet(&o)
	fmt.Fprint(w, "usage: flotabench [flags]\n\n"+
		"Updates a devicesim fleet through the orchestrator, then publishes the same\n"+
		"bytes through the same embedded broker without flota (raw), and to a\n"+
		"stop-and-wait peer that requests one chunk at a time (saw), and compares them.\n"+
		"With --sweep it measures flota and raw at several max-in-flight values and\n"+
		"plots MiB/s against them.\n\n"+
		"examples:\n  flotabench --devices 500 --size 65536 --json bench.json\n"+
		"  flotabench --sweep 16,64,256,1000,2000 --devices 2000 --size 262144\n\nflags:\n")
	fs.SetOutput(w)
	fs.PrintDefaults()
}

// parseOptions parses and validates the command line. It returns a
// *usageError for a bad one and flag.ErrHelp for --help.
func parseOptions(args []string) (options, error) {
	var o options
	fs := newFlagSet(&o)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return o, err
		}
		return o, usagef("%v", err)
	}
	if fs.NArg() > 0 {
		return o, usagef("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	switch {
	case o.Devices < 1 || o.Devices > maxDevices:
		return o, usagef("--devices must be 1..%d, got %d", maxDevices, o.Devices)
	case o.Size < 1 || o.Size > maxSize:
		return o, usagef("--size must be 1..%d bytes, got %d", maxSize, o.Size)
	case o.MaxInFlight < 1:
		return o, usagef("--max-in-flight must be at least 1, got %d", o.MaxInFlight)
	case o.Window < 1 || o.Window > fleet.MaxWindow:
		return o, usagef("--window must be 1..%d, got %d", fleet.MaxWindow, o.Window)
	case o.ChunkSize < fleet.MinChunkSize || o.ChunkSize > fleet.MaxChunkSize:
		return o, usagef("--chunk-size must be %d..%d bytes, got %d", fleet.MinChunkSize, fleet.MaxChunkSize, o.ChunkSize)
	case o.Run != runAll && o.Run != runBoth && o.Run != runFlota && o.Run != runRaw && o.Run != runSaw:
		return o, usagef("--run must be all, both, flota, raw or saw, got %q", o.Run)
	case o.ConnectRate < 1:
		return o, usagef("--connect-rate must be at least 1, got %d", o.ConnectRate)
	case o.Timeout <= 0:
		return o, usagef("--timeout must be positive, got %v", o.Timeout)
	case o.Latency < 0 || o.Latency > maxLatency:
		return o, usagef("--latency must be 0..%v, got %v", maxLatency, o.Latency)
	}
	switch o.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return o, usagef("--log-level must be debug, info, warn or error, got %q", o.LogLevel)
	}
	if err := o.checkSweep(); err != nil {
		return o, err
	}
	if o.runs(runFlota) || len(o.Sweep) > 0 {
		for _, name := range []string{"orchestrator", "devicesim"} {
			p := filepath.Join(o.BinDir, name)
			if st, err := os.Stat(p); err != nil || !st.Mode().IsRegular() {
				return o, usagef("--bin-dir %q: no %s binary there (run 'make build')", o.BinDir, name)
			}
		}
	}
	return o, nil
}

// maxSweepPoints bounds --sweep: every point is a full flota and raw run.
const maxSweepPoints = 12

// checkSweep validates --sweep and --plot.
func (o options) checkSweep() error {
	if len(o.Sweep) == 0 {
		return nil
	}
	if len(o.Sweep) > maxSweepPoints {
		return usagef("--sweep takes at most %d values, got %d", maxSweepPoints, len(o.Sweep))
	}
	for i, v := range o.Sweep {
		if v < 1 {
			return usagef("--sweep values must be at least 1, got %d", v)
		}
		if i > 0 && v <= o.Sweep[i-1] {
			return usagef("--sweep values must increase, got %d after %d", v, o.Sweep[i-1])
		}
	}
	if o.Run != runAll && o.Run != runBoth {
		return usagef("--sweep measures flota and raw: --run %s does not apply", o.Run)
	}
	if o.Plot == "" {
		return usagef("--plot must name a file")
	}
	return nil
}
