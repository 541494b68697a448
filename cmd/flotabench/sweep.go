package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"text/tabwriter"
)

// sweepPoint is one max-in-flight value of a sweep.
type sweepPoint struct {
	MaxInFlight int      `json:"max_in_flight"`
	Results     []result `json:"results"`
	Ratio       float64  `json:"flota_raw_ratio,omitempty"`
}

// sweepReport is what --json writes for a sweep.
type sweepReport struct {
	Options options      `json:"options"`
	Chunks  int          `json:"chunks_per_device"`
	Points  []sweepPoint `json:"points"`
}

// runSweep measures flota and raw at every --sweep value, each point with a
// fresh orchestrator, devicesim fleet and broker (so that no point inherits
// another's store, connections or heap), prints a table per point and a
// summary, and draws the plot.
func runSweep(ctx context.Context, o options, image []byte, tmp string, stdout, stderr io.Writer) error {
	rep := sweepReport{Options: o, Chunks: o.chunks()}
	for _, m := range o.Sweep {
		po := o
		po.MaxInFlight = m
		po.Run = runBoth
		po.Sweep = nil
		dir := filepath.Join(tmp, "sweep-"+strconv.Itoa(m))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		fmt.Fprintf(stderr, "sweep: max in flight %d\n", m)
		results, err := measure(ctx, po, image, dir, stderr)
		if err != nil {
			return fmt.Errorf("max in flight %d: %w", m, err)
		}
		r := newReport(po, results)
		fmt.Fprintln(stdout)
		writeTable(stdout, r)
		rep.Points = append(rep.Points, sweepPoint{MaxInFlight: m, Results: results, Ratio: r.Ratio})
	}
	fmt.Fprintln(stdout)
	writeSweepTable(stdout, rep)

	if err := writePlotFile(o.Plot, sweepPlot(rep)); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "\nplot: %s\n", o.Plot)
	if o.JSONFile != "" {
		b, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			return fmt.Errorf("encode results: %w", err)
		}
		if err := os.WriteFile(o.JSONFile, append(b, '\n'), 0o644); err != nil {
			return fmt.Errorf("write results: %w", err)
		}
	}
	return nil
}

// writeSweepTable prints MiB/s of every run at every point.
func writeSweepTable(w io.Writer, rep sweepReport) {
	o := rep.Options
	fmt.Fprintf(w, "sweep: %d devices x %d bytes, %d chunks of %d bytes each, window %d\n\n",
		o.Devices, o.Size, rep.Chunks, o.ChunkSize, o.Window)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprint(tw, "in flight\tflota MiB/s\traw MiB/s\tflota/raw\tflota p50 ms\traw p50 ms\t\n")
	for _, p := range rep.Points {
		var flota, raw result
		for _, r := range p.Results {
			switch r.Name {
			case runFlota:
				flota = r
			case runRaw:
				raw = r
			}
		}
		fmt.Fprintf(tw, "%d\t%.1f\t%.1f\t%.2f\t%.0f\t%.0f\t\n", p.MaxInFlight, flota.MiBPerSec, raw.MiBPerSec, p.Ratio, flota.P50Ms, raw.P50Ms)
	}
	_ = tw.Flush() // writes to w; its error is w's
}

// sweepPlot is the plot of a sweep: one line per run name.
func sweepPlot(rep sweepReport) plot {
	o := rep.Options
	p := plot{
		Title:  fmt.Sprintf("%d devices x %d KiB, %d KiB chunks, window %d", o.Devices, o.Size/1024, o.ChunkSize/1024, o.Window),
		XLabel: "devices in flight (max_in_flight, log scale)",
		YLabel: "MiB/s",
	}
	colors := map[string]string{runFlota: "#1f77b4", runRaw: "#d62728", runSaw: "#2ca02c"}
	names := map[string]string{runFlota: "flota", runRaw: "raw MQTT (same bytes, no acks, no store)", runSaw: "stop-and-wait"}
	for _, name := range []string{runFlota, runRaw, runSaw} {
		s := series{Name: names[name], Color: colors[name]}
		for _, pt := range rep.Points {
			for _, r := range pt.Results {
				if r.Name == name {
					s.Points = append(s.Points, point{X: float64(pt.MaxInFlight), Y: r.MiBPerSec})
				}
			}
		}
		if len(s.Points) > 0 {
			p.Series = append(p.Series, s)
		}
	}
	return p
}

// writePlotFile writes the plot to path.
func writePlotFile(path string, p plot) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("plot: %w", err)
	}
	if err := writeSVG(f, p); err != nil {
		f.Close()
		return fmt.Errorf("plot %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("plot: %w", err)
	}
	return nil
}
