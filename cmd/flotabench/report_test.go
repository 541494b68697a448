package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func sampleResults() []result {
	flota := result{Name: runFlota, Devices: 2000, Completed: 2000, Seconds: 5.0, P50Ms: 1000.4, P99Ms: 2000.6,
		PeakRSS: 256 * mib, BrokerCPU: 4.94, DevicesCPU: 6.31, DevicesPeakRSS: 150 * mib, SQLiteTx: 80, Resends: 3, Note: "flota note"}
	flota.rates(262144)
	raw := result{Name: runRaw, Devices: 2000, Completed: 2000, Seconds: 2.5, P50Ms: 250, P99Ms: 800,
		PeakRSS: 300 * mib, BrokerCPU: 2, DevicesCPU: 3.5, DevicesPeakRSS: 120.25 * mib, BrokerDropped: 1, Note: "raw note"}
	raw.rates(262144)
	saw := result{Name: runSaw, Devices: 2000, Completed: 2000, Seconds: 20, P50Ms: 2500, P99Ms: 3000,
		PeakRSS: 100 * mib, BrokerCPU: 6, DevicesCPU: 5, Note: "saw note"}
	saw.rates(262144)
	return []result{flota, raw, saw}
}

func TestResult_Rates(t *testing.T) {
	r := result{Devices: 2000, Seconds: 5}
	r.rates(262144)
	assert.InDelta(t, 400, r.DevicesPerSec, 1e-9)
	assert.InDelta(t, 100, r.MiBPerSec, 1e-9, "2000 x 256 KiB = 500 MiB in 5 s")

	var zero result
	zero.rates(262144)
	assert.Zero(t, zero.MiBPerSec, "no division by zero seconds")
}

func TestWriteTable_Format(t *testing.T) {
	o := options{Devices: 2000, Size: 262144, MaxInFlight: 256, Window: 8, ChunkSize: 16384}
	rep := newReport(o, sampleResults())
	assert.InDelta(t, 0.5, rep.Ratio, 1e-9)

	var b bytes.Buffer
	writeTable(&b, rep)
	want := `2000 devices x 262144 bytes, 16 chunks of 16384 bytes each, window 8, max in flight 256

    run  devices  seconds  devices/s  MiB/s  p50 ms  p99 ms  peak RSS MiB  CPU s broker  CPU s devices  devices RSS MiB  sqlite tx  resends  dropped
  flota     2000     5.00        400  100.0    1000    2001         256.0           4.9            6.3            150.0         80        3        0
    raw     2000     2.50        800  200.0     250     800         300.0           2.0            3.5            120.2          -        0        1
    saw     2000    20.00        100   25.0    2500    3000         100.0           6.0            5.0              0.0          -        0        0

flota/raw MiB/s: 0.50
flota/saw MiB/s: 4.00

flota: flota note
raw: raw note
saw: saw note
`
	assert.Equal(t, want, b.String())
}

func TestWriteTable_OneRunHasNoRatio(t *testing.T) {
	o := options{Devices: 2000, Size: 262144, MaxInFlight: 256, Window: 8, ChunkSize: 16384}
	rep := newReport(o, sampleResults()[1:2])
	assert.Zero(t, rep.Ratio)
	assert.Zero(t, rep.SawRatio)
	var b bytes.Buffer
	writeTable(&b, rep)
	assert.NotContains(t, b.String(), "flota/raw")
	assert.Contains(t, b.String(), "\n  raw     2000     2.50")
}

func TestWriteJSON_RoundTrips(t *testing.T) {
	o := options{Devices: 2000, Size: 262144, MaxInFlight: 256, Window: 8, ChunkSize: 16384, Run: runBoth, Timeout: time.Minute}
	path := filepath.Join(t.TempDir(), "bench.json")
	require.NoError(t, writeJSON(path, newReport(o, sampleResults())))
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	var got struct {
		Options struct {
			Devices int `json:"devices"`
		} `json:"options"`
		Chunks  int `json:"chunks_per_device"`
		Results []struct {
			Name      string  `json:"name"`
			MiBPerSec float64 `json:"mib_per_second"`
			SQLiteTx  int64   `json:"sqlite_transactions"`
		} `json:"results"`
		Ratio    float64 `json:"flota_raw_ratio"`
		SawRatio float64 `json:"flota_saw_ratio"`
	}
	require.NoError(t, json.Unmarshal(b, &got))
	assert.Equal(t, 2000, got.Options.Devices)
	assert.Equal(t, 16, got.Chunks)
	require.Len(t, got.Results, 3)
	assert.Equal(t, "saw", got.Results[2].Name)
	assert.InDelta(t, 4, got.SawRatio, 1e-9)
	assert.Equal(t, "flota", got.Results[0].Name)
	assert.Equal(t, int64(80), got.Results[0].SQLiteTx)
	assert.InDelta(t, 0.5, got.Ratio, 1e-9)
}

func TestParseMem_ReadsRSSAndHWM(t *testing.T) {
	status := "Name:\torchestrator\nVmPeak:\t 1000 kB\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\nThreads:\t9\n"
	m, err := parseMem(strings.NewReader(status))
	require.NoError(t, err)
	assert.Equal(t, memStatus{RSS: 1 << 20, HWM: 2 << 20}, m)

	_, err = parseMem(strings.NewReader("Name:\tx\n"))
	assert.Error(t, err)
	_, err = parseMem(strings.NewReader("VmHWM:\t1 MB\nVmRSS:\t1 kB\n"))
	assert.Error(t, err)

	own, err := readMem(0)
	require.NoError(t, err)
	assert.Positive(t, own.RSS)
}

func TestParseCPU_SumsUserAndSystem(t *testing.T) {
	// Fields 14 and 15 (utime, stime) are 150 and 50 ticks; the name has spaces and a ')'.
	stat := "1234 (my (odd) prog) S 1 2 3 4 5 6 7 8 9 10 150 50 0 0 20 0 9 0 100 200 300\n"
	d, err := parseCPU(stat)
	require.NoError(t, err)
	assert.Equal(t, 2*time.Second, d)

	_, err = parseCPU("1234 noparen")
	assert.Error(t, err)
	_, err = parseCPU("1 (x) S 1 2")
	assert.Error(t, err)
}

func TestLineWatcher_ReportsWatchedLines(t *testing.T) {
	var out bytes.Buffer
	l := newLineWatcher(&out, "mqtt listening on ", "http listening on ")
	for _, chunk := range []string{"time=x level=INFO msg=hi\nmqtt lis", "tening on tcp://127.0.0.1:1\n", "http listening on http://h\nno newline"} {
		n, err := l.Write([]byte(chunk))
		require.NoError(t, err)
		assert.Equal(t, len(chunk), n)
	}
	assert.Equal(t, "mqtt listening on tcp://127.0.0.1:1", <-l.lines)
	assert.Equal(t, "http listening on http://h", <-l.lines)
	assert.Empty(t, l.lines)
	assert.Equal(t, "time=x level=INFO msg=hi\nmqtt listening on tcp://127.0.0.1:1\nhttp listening on http://h\nno newline", out.String())
}
