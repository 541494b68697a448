package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
)

const mib = 1 << 20

// result is one measured run: flota, raw or saw (stop-and-wait).
type result struct {
	Name          string  `json:"name"` // "flota", "raw" or "saw"
	Devices       int     `json:"devices"`
	Completed     int     `json:"completed"` // devices that got the whole image
	Seconds       float64 `json:"seconds"`
	DevicesPerSec float64 `json:"devices_per_second"`
	MiBPerSec     float64 `json:"mib_per_second"`
	P50Ms         float64 `json:"device_time_p50_ms"`
	P99Ms         float64 `json:"device_time_p99_ms"`
	// PeakRSS is the highest VmRSS sampled every 100 ms of the process that
	// holds the broker; HWM is its VmHWM at the end.
	PeakRSS    int64  `json:"peak_rss_bytes"`
	HWM        int64  `json:"vm_hwm_bytes"`
	RSSProcess string `json:"rss_process"`
	// CPU seconds used during the measured interval by the process that
	// holds the broker and by the process that simulates the devices.
	BrokerCPU  float64 `json:"broker_process_cpu_seconds"`
	DevicesCPU float64 `json:"devices_process_cpu_seconds"`
	// DevicesPeakRSS is the peak RSS (VmHWM) of the process that simulates
	// the devices, read when the transfer ended.
	DevicesPeakRSS int64 `json:"devices_peak_rss_bytes"`
	// SQLiteTx counts the store's transactions from the update's creation to
	// its end; SQLiteTxTotal all of them, device registration included.
	// Flota only.
	SQLiteTx      int64  `json:"sqlite_transactions,omitempty"`
	SQLiteTxTotal int64  `json:"sqlite_transactions_total,omitempty"`
	Resends       int64  `json:"resends"`
	Acks          int64  `json:"acks,omitempty"` // cumulative acks the orchestrator received; flota only
	BrokerDropped int64  `json:"broker_dropped"` // deliveries mochi dropped on a full client queue
	Note          string `json:"note"`
}

// rates fills the derived columns from Devices, Seconds and the image size.
func (r *result) rates(size int) {
	if r.Seconds <= 0 {
		return
	}
	r.DevicesPerSec = float64(r.Devices) / r.Seconds
	r.MiBPerSec = float64(r.Devices) * float64(size) / r.Seconds / mib
}

// report is what --json writes.
type report struct {
	Options options  `json:"options"`
	Chunks  int      `json:"chunks_per_device"`
	Results []result `json:"results"`
	// Ratio is flota's MiB/s over raw's, when both ran; SawRatio over the
	// stop-and-wait peer's.
	Ratio    float64 `json:"flota_raw_ratio,omitempty"`
	SawRatio float64 `json:"flota_saw_ratio,omitempty"`
}

func newReport(o options, results []result) report {
	rep := report{Options: o, Chunks: o.chunks(), Results: results}
	var flota, raw, saw *result
	for i := range results {
		switch results[i].Name {
		case runFlota:
			flota = &results[i]
		case runRaw:
			raw = &results[i]
		case runSaw:
			saw = &results[i]
		}
	}
	if flota != nil && raw != nil && raw.MiBPerSec > 0 {
		rep.Ratio = flota.MiBPerSec / raw.MiBPerSec
	}
	if flota != nil && saw != nil && saw.MiBPerSec > 0 {
		rep.SawRatio = flota.MiBPerSec / saw.MiBPerSec
	}
	return rep
}

// writeTable prints the results as one table, then the ratio and the notes.
func writeTable(w io.Writer, rep report) {
	o := rep.Options
	fmt.Fprintf(w, "%d devices x %d bytes, %d chunks of %d bytes each, window %d, max in flight %d\n\n",
		o.Devices, o.Size, rep.Chunks, o.ChunkSize, o.Window, o.MaxInFlight)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprint(tw, "run\tdevices\tseconds\tdevices/s\tMiB/s\tp50 ms\tp99 ms\tpeak RSS MiB\tCPU s broker\tCPU s devices\tdevices RSS MiB\tsqlite tx\tresends\tdropped\t\n")
	for _, r := range rep.Results {
		tx := "-"
		if r.Name == runFlota {
			tx = fmt.Sprint(r.SQLiteTx)
		}
		fmt.Fprintf(tw, "%s\t%d\t%.2f\t%.0f\t%.1f\t%.0f\t%.0f\t%.1f\t%.1f\t%.1f\t%.1f\t%s\t%d\t%d\t\n",
			r.Name, r.Devices, r.Seconds, r.DevicesPerSec, r.MiBPerSec, r.P50Ms, r.P99Ms,
			float64(r.PeakRSS)/mib, r.BrokerCPU, r.DevicesCPU, float64(r.DevicesPeakRSS)/mib, tx, r.Resends, r.BrokerDropped)
	}
	_ = tw.Flush() // writes to w; its error is w's
	if rep.Ratio > 0 || rep.SawRatio > 0 {
		fmt.Fprintln(w)
	}
	if rep.Ratio > 0 {
		fmt.Fprintf(w, "flota/raw MiB/s: %.2f\n", rep.Ratio)
	}
	if rep.SawRatio > 0 {
		fmt.Fprintf(w, "flota/saw MiB/s: %.2f\n", rep.SawRatio)
	}
	fmt.Fprintln(w)
	for _, r := range rep.Results {
		fmt.Fprintf(w, "%s: %s\n", r.Name, r.Note)
	}
}

// writeJSON writes the report to path.
func writeJSON(path string, rep report) error {
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return fmt.Errorf("encode results: %w", err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write results: %w", err)
	}
	return nil
}
