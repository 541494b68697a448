package main

import (
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestPeakRSSOf_ReadsARunningChildOnly(t *testing.T) {
	pr, pw, err := os.Pipe()
	require.NoError(t, err)
	c, err := startChild("sh", "/bin/sh", []string{"-c", "read line"}, nil, pr, nil, nil)
	require.NoError(t, err)
	pr.Close()
	t.Cleanup(c.stop)

	peak := peakRSSOf(c)
	mem, err := readMem(c.pid())
	require.NoError(t, err)
	assert.Positive(t, peak, "the shell's VmHWM while it runs")
	assert.LessOrEqual(t, peak, mem.HWM, "a peak read before the later one")

	pw.Close() // read sees EOF; the shell exits
	require.True(t, c.waitExit(t.Context(), 10*time.Second))
	assert.Zero(t, peakRSSOf(c), "nothing to read once it exited")
}

func TestSimEnv_SetsGOGCUnlessSet(t *testing.T) {
	t.Setenv("GOGC", "") // restored after the test
	require.NoError(t, os.Unsetenv("GOGC"))
	assert.Contains(t, simEnv(), "GOGC=400")

	t.Setenv("GOGC", "50")
	env := simEnv()
	assert.Contains(t, env, "GOGC=50", "the caller's GOGC is kept")
	assert.NotContains(t, env, "GOGC=400")
}
