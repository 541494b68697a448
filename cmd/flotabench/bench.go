package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
)

// runBench is the benchmark: parse the flags, measure flota and raw, print
// the table and write the JSON file.
func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parseOptions(args)
	if errors.Is(err, flag.ErrHelp) {
		usage(stdout)
		return err
	}
	if err != nil {
		return err
	}
	if n, q := o.chunks(), clientQueue(o.Window); n > q && o.runs(runRaw) {
		fmt.Fprintf(stderr, "warning: %d chunks per device exceed the broker's per-client queue (%d): the raw run will lose chunks\n", n, q)
	}

	tmp, err := os.MkdirTemp("", "flotabench-")
	if err != nil {
		return fmt.Errorf("temp dir: %w", err)
	}
	defer os.RemoveAll(tmp)

	// The same random image for every run.
	image := make([]byte, o.Size)
	rng := rand.NewChaCha8([32]byte{'f', 'l', 'o', 't', 'a'})
	_, _ = rng.Read(image) // never fails

	if len(o.Sweep) > 0 {
		return runSweep(ctx, o, image, tmp, stdout, stderr)
	}
	results, err := measure(ctx, o, image, tmp, stderr)
	if err != nil {
		return err
	}
	rep := newReport(o, results)
	fmt.Fprintln(stdout)
	writeTable(stdout, rep)
	if o.JSONFile != "" {
		return writeJSON(o.JSONFile, rep)
	}
	return nil
}

// measure runs what o.Run selects, in the order flota, raw, stop-and-wait.
func measure(ctx context.Context, o options, image []byte, tmp string, stderr io.Writer) ([]result, error) {
	var results []result
	if o.runs(runFlota) {
		fmt.Fprintf(stderr, "flota: %d devices x %d bytes...\n", o.Devices, o.Size)
		r, err := runFlotaBench(ctx, o, image, tmp, stderr)
		if err != nil {
			return nil, fmt.Errorf("flota: %w", err)
		}
		results = append(results, r)
	}
	if o.runs(runRaw) {
		fmt.Fprintf(stderr, "raw: %d devices x %d bytes...\n", o.Devices, o.Size)
		r, err := runRawBench(ctx, o, image, tmp, stderr)
		if err != nil {
			return nil, fmt.Errorf("raw: %w", err)
		}
		results = append(results, r)
	}
	if o.runs(runSaw) {
		fmt.Fprintf(stderr, "saw: %d devices x %d bytes, stop-and-wait...\n", o.Devices, o.Size)
		r, err := runSawBench(ctx, o, image, tmp, stderr)
		if err != nil {
			return nil, fmt.Errorf("saw: %w", err)
		}
		results = append(results, r)
	}
	return results, nil
}

// clientQueue is the broker's per-client outbound queue for a window (see
// broker.New): mochi drops a QoS 1 delivery when it is full.
func clientQueue(window int) int { return min(max(4*window+64, 256), 65535) }
