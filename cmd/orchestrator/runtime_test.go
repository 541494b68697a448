package main

import (
	"io"
	"math"
	"net/http"
	"runtime/debug"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseMemoryLimit(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
	}{
		{"", 0}, {"off", -1}, {"none", -1},
		{"400MiB", 400 << 20}, {"1GiB", 1 << 30}, {"512MB", 512e6}, {"1GB", 1e9},
		{"67108864", 64 << 20}, {" 100MiB ", 100 << 20}, {"65536KiB", 64 << 20},
	} {
		got, err := parseMemoryLimit(tc.in)
		require.NoError(t, err, tc.in)
		assert.Equal(t, tc.want, got, tc.in)
	}
	for _, bad := range []string{"lots", "-5MiB", "0", "10MiB", "1TB", "9223372036854775807GiB"} {
		_, err := parseMemoryLimit(bad)
		assert.Error(t, err, bad)
	}
}

func TestSetGCDefaults_EnvironmentAndFlagPrecedence(t *testing.T) {
	oldLimit := debug.SetMemoryLimit(-1)
	oldGC := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetMemoryLimit(oldLimit); debug.SetGCPercent(oldGC) })
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

	assert.EqualValues(t, DefaultMemoryLimit, setGCDefaults(env(nil), 0), "no flag, no GOMEMLIMIT: the default")
	assert.Equal(t, gcPercent, debug.SetGCPercent(gcPercent), "no GOGC: the serve target")

	debug.SetMemoryLimit(123 << 20) // what the runtime read from GOMEMLIMIT=123MiB
	debug.SetGCPercent(50)          // and from GOGC=50
	assert.EqualValues(t, 123<<20, setGCDefaults(env(map[string]string{"GOMEMLIMIT": "123MiB", "GOGC": "50"}), 0),
		"GOMEMLIMIT is kept")
	assert.Equal(t, 50, debug.SetGCPercent(50), "GOGC is kept")

	assert.EqualValues(t, 400<<20, setGCDefaults(env(map[string]string{"GOMEMLIMIT": "123MiB"}), 400<<20), "--memory-limit wins")
	assert.EqualValues(t, math.MaxInt64, setGCDefaults(env(nil), -1), "--memory-limit off")
}

func TestDebugServer_ServesProfilesOnItsOwnListener(t *testing.T) {
	d, err := openDebugServer("127.0.0.1:0", nil)
	require.NoError(t, err)
	t.Cleanup(func() { d.Close() })

	resp, err := http.Get(d.URL() + "heap?debug=1")
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Contains(t, string(body), "# HeapAlloc")

	require.NoError(t, d.Close())
	_, err = http.Get(d.URL())
	assert.Error(t, err, "closed")
}

func TestGovernedLimit_NeverBelowLiveDataWithHeadroom(t *testing.T) {
	const mib = 1 << 20
	assert.EqualValues(t, 384*mib, governedLimit(384*mib, 100*mib, 50*mib), "small live heap: the configured limit")
	// 10,000 connections: 200 MiB of stacks and 150 MiB live need 425 MiB.
	assert.EqualValues(t, 425*mib, governedLimit(384*mib, 150*mib, 200*mib))
}

func TestMemoryGovernor_AppliesALimitAtLeastTheConfiguredOne(t *testing.T) {
	old := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(old) })
	debug.SetMemoryLimit(math.MaxInt64)

	g := startMemoryGovernor(64 << 20)
	require.Eventually(t, func() bool { return debug.SetMemoryLimit(-1) != math.MaxInt64 }, 10*time.Second, 10*time.Millisecond)
	require.NoError(t, g.Close())
	assert.GreaterOrEqual(t, debug.SetMemoryLimit(-1), int64(64<<20))
	assert.Equal(t, g.next(), max(g.next(), 64<<20))
}
