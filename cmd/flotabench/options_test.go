package main

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fakeBinDir returns a directory holding empty orchestrator and devicesim files.
func fakeBinDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, name := range []string{"orchestrator", "devicesim"} {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), nil, 0o755))
	}
	return dir
}

func TestParseOptions_Defaults(t *testing.T) {
	bin := fakeBinDir(t)
	o, err := parseOptions([]string{"--bin-dir", bin})
	require.NoError(t, err)
	assert.Equal(t, options{
		Devices: 2000, Size: 262144, MaxInFlight: 256, Window: 8, ChunkSize: 16384, BinDir: bin,
		Run: runAll, ConnectRate: DefaultConnectRate, Timeout: DefaultTimeout, LogLevel: "warn", Plot: DefaultPlot,
	}, o)
	for _, name := range []string{runFlota, runRaw, runSaw} {
		assert.True(t, o.runs(name), name)
	}
	assert.Equal(t, 16, o.chunks())
}

func TestParseOptions_Valid(t *testing.T) {
	o, err := parseOptions([]string{"--run", "raw", "--bin-dir", "/nonexistent", "--devices", "500", "--size", "65537",
		"--max-in-flight", "10", "--window", "64", "--chunk-size", "1024", "--json", "out.json", "--timeout", "10s", "--latency", "20ms"})
	require.NoError(t, err, "raw alone needs no binaries")
	assert.Equal(t, 20*time.Millisecond, o.Latency)
	assert.Equal(t, 500, o.Devices)
	assert.Equal(t, 65, o.chunks(), "a partial last chunk counts")
	assert.Equal(t, "out.json", o.JSONFile)
	assert.Equal(t, 10*time.Second, o.Timeout)
	assert.True(t, o.runs(runRaw))
	assert.False(t, o.runs(runFlota))
}

func TestParseOptions_Invalid(t *testing.T) {
	bin := fakeBinDir(t)
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"unknown flag", []string{"--bogus"}, "flag provided but not defined"},
		{"positional", []string{"extra"}, "unexpected arguments: extra"},
		{"zero devices", []string{"--devices", "0"}, "--devices must be 1..99999"},
		{"too many devices", []string{"--devices", "100000"}, "--devices must be 1..99999"},
		{"not a number", []string{"--devices", "many"}, "invalid value"},
		{"zero size", []string{"--size", "0"}, "--size must be"},
		{"huge size", []string{"--size", "1073741824"}, "--size must be"},
		{"zero in flight", []string{"--max-in-flight", "0"}, "--max-in-flight must be at least 1"},
		{"zero window", []string{"--window", "0"}, "--window must be 1..64"},
		{"window too big", []string{"--window", "65"}, "--window must be 1..64"},
		{"chunk too small", []string{"--chunk-size", "1023"}, "--chunk-size must be 1024..65536"},
		{"chunk too big", []string{"--chunk-size", "65537"}, "--chunk-size must be 1024..65536"},
		{"bad run", []string{"--run", "every"}, `--run must be all, both, flota, raw or saw, got "every"`},
		{"sweep not a number", []string{"--sweep", "16,x"}, `"x" is not a number`},
		{"sweep empty item", []string{"--sweep", "16,,64"}, "is not a number"},
		{"sweep zero", []string{"--sweep", "0,16"}, "--sweep values must be at least 1, got 0"},
		{"sweep not increasing", []string{"--sweep", "64,16"}, "--sweep values must increase, got 16 after 64"},
		{"sweep repeated", []string{"--sweep", "16,16"}, "--sweep values must increase"},
		{"sweep too long", []string{"--sweep", "1,2,3,4,5,6,7,8,9,10,11,12,13"}, "--sweep takes at most 12 values, got 13"},
		{"sweep with one run", []string{"--sweep", "16,64", "--run", "saw"}, "--run saw does not apply"},
		{"sweep without plot", []string{"--sweep", "16,64", "--plot", ""}, "--plot must name a file"},
		{"zero connect rate", []string{"--connect-rate", "0"}, "--connect-rate must be at least 1"},
		{"zero timeout", []string{"--timeout", "0s"}, "--timeout must be positive"},
		{"negative latency", []string{"--latency", "-1ms"}, "--latency must be 0..10s"},
		{"bad log level", []string{"--log-level", "loud"}, "--log-level must be"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseOptions(append([]string{"--bin-dir", bin}, tt.args...))
			var ue *usageError
			require.ErrorAs(t, err, &ue)
			assert.Contains(t, ue.Error(), tt.want)
		})
	}
	t.Run("missing binaries", func(t *testing.T) {
		_, err := parseOptions([]string{"--bin-dir", t.TempDir()})
		var ue *usageError
		require.ErrorAs(t, err, &ue)
		assert.Contains(t, ue.Error(), "no orchestrator binary there (run 'make build')")
	})
}

func TestParseOptions_RunSelects(t *testing.T) {
	tests := []struct {
		run             string
		flota, raw, saw bool
	}{
		{runAll, true, true, true},
		{runBoth, true, true, false},
		{runFlota, true, false, false},
		{runRaw, false, true, false},
		{runSaw, false, false, true},
	}
	bin := fakeBinDir(t)
	for _, tt := range tests {
		o, err := parseOptions([]string{"--bin-dir", bin, "--run", tt.run})
		require.NoError(t, err, tt.run)
		assert.Equal(t, tt.flota, o.runs(runFlota), tt.run)
		assert.Equal(t, tt.raw, o.runs(runRaw), tt.run)
		assert.Equal(t, tt.saw, o.runs(runSaw), tt.run)
	}
	_, err := parseOptions([]string{"--bin-dir", "/nonexistent", "--run", "saw"})
	assert.NoError(t, err, "stop-and-wait alone needs no binaries")
}

func TestParseOptions_Sweep(t *testing.T) {
	bin := fakeBinDir(t)
	o, err := parseOptions([]string{"--bin-dir", bin, "--sweep", "16, 64,256,1000,2000", "--plot", "out.svg"})
	require.NoError(t, err)
	assert.Equal(t, []int{16, 64, 256, 1000, 2000}, o.Sweep)
	assert.Equal(t, "out.svg", o.Plot)

	_, err = parseOptions([]string{"--bin-dir", t.TempDir(), "--sweep", "16", "--run", "both"})
	var ue *usageError
	require.ErrorAs(t, err, &ue, "a sweep runs flota: it needs the binaries")
	assert.Contains(t, ue.Error(), "no orchestrator binary")

	l := intList{1, 22}
	assert.Equal(t, "1,22", l.String())
}

func TestParseOptions_Help(t *testing.T) {
	_, err := parseOptions([]string{"--help"})
	assert.True(t, errors.Is(err, flag.ErrHelp))
}

func TestRun_UsageExitCode(t *testing.T) {
	var stdout, stderr bytes.Buffer
	assert.Equal(t, exitUsage, run(t.Context(), []string{"--devices", "-1"}, &stdout, &stderr))
	assert.Contains(t, stderr.String(), "flotabench: --devices must be 1..99999, got -1\n")
	assert.Empty(t, stdout.String())

	stderr.Reset()
	assert.Equal(t, exitUsage, run(t.Context(), []string{subscribersCmd, "--devices", "3"}, &stdout, &stderr))
	assert.Contains(t, stderr.String(), "--broker")

	stderr.Reset()
	assert.Equal(t, exitOK, run(t.Context(), []string{"--help"}, &stdout, &stderr))
	assert.Contains(t, stdout.String(), "usage: flotabench [flags]")
}

func TestParseSubOptions_Validates(t *testing.T) {
	o, err := parseSubOptions([]string{"--broker", "tcp://127.0.0.1:1883", "--devices", "3", "--size", "10"})
	require.NoError(t, err)
	assert.Equal(t, subOptions{mode: subModeRaw, broker: "tcp://127.0.0.1:1883", devices: 3, size: 10}, o)

	o, err = parseSubOptions([]string{"--mode", "stop-and-wait", "--broker", "tcp://127.0.0.1:1883", "--devices", "3", "--size", "10", "--latency", "5ms"})
	require.NoError(t, err)
	assert.Equal(t, subModeSaw, o.mode)
	assert.Equal(t, 5*time.Millisecond, o.latency)

	for _, args := range [][]string{
		{"--devices", "3", "--size", "10"},
		{"--broker", "127.0.0.1:1883", "--devices", "3", "--size", "10"},
		{"--broker", "tcp://127.0.0.1:1883", "--devices", "0", "--size", "10"},
		{"--broker", "tcp://127.0.0.1:1883", "--devices", "3", "--size", "0"},
		{"--broker", "tcp://127.0.0.1:1883", "--devices", "3", "--size", "10", "--latency", "11s"},
		{"--broker", "tcp://127.0.0.1:1883", "--devices", "3", "--size", "10", "extra"},
		{"--mode", "push", "--broker", "tcp://127.0.0.1:1883", "--devices", "3", "--size", "10"},
	} {
		_, err := parseSubOptions(args)
		var ue *usageError
		assert.ErrorAs(t, err, &ue, "%v", args)
	}
}
