package fleet

import (
	"encoding/json"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestResolvePhases(t *testing.T) {
	tests := []struct {
		name   string
		phases []string
		total  int
		want   []int
		bad    bool
	}{
		{"none is one phase", nil, 50, []int{50}, false},
		{"percentages", []string{"1%", "10%", "50%", "100%"}, 1000, []int{10, 100, 500, 1000}, false},
		{"rounded up: a canary of 1% of 30 is one device", []string{"1%", "100%"}, 30, []int{1, 30}, false},
		{"counts", []string{"5", "50"}, 200, []int{5, 50, 200}, false},
		{"mixed, short list gets a final phase", []string{"2", "10%"}, 100, []int{2, 10, 100}, false},
		{"small fleet collapses repeated totals", []string{"50%", "90%", "100%"}, 2, []int{1, 2}, false},
		{"count past the fleet", []string{"10", "100"}, 4, []int{4}, false},
		{"shrinking", []string{"50%", "10%"}, 100, nil, true},
		{"zero", []string{"0"}, 100, nil, true},
		{"junk", []string{"ten"}, 100, nil, true},
		{"over 100%", []string{"150%"}, 100, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ResolvePhases(tt.phases, tt.total)
			if tt.bad {
				assert.ErrorIs(t, err, ErrInvalidPolicy)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestThreshold(t *testing.T) {
	tests := []struct {
		in                 string
		failures, finished int
		reached            bool
	}{
		{"10%", 1, 10, true},
		{"10%", 1, 11, false},
		{"50%", 5, 10, true},
		{"50%", 0, 0, false},
		{"3", 2, 100, false},
		{"3", 3, 3, true},
		{"", 100, 100, false},
	}
	for _, tt := range tests {
		th, err := ParseThreshold(tt.in)
		require.NoError(t, err, tt.in)
		assert.Equal(t, tt.reached, th.Reached(tt.failures, tt.finished), "%s with %d/%d", tt.in, tt.failures, tt.finished)
	}
	for _, bad := range []string{"x", "-1", "0", "0%", "101%"} {
		_, err := ParseThreshold(bad)
		assert.ErrorIs(t, err, ErrInvalidPolicy, bad)
	}

	var p Policy
	require.NoError(t, json.Unmarshal([]byte(`{"failure_threshold":"20%","soak":"90s","idle_timeout":30}`), &p))
	assert.Equal(t, Threshold{Percent: 20}, p.FailureThreshold)
	assert.Equal(t, 90*time.Second, p.Soak.D())
	assert.Equal(t, 30*time.Second, p.IdleTimeout.D())
	require.NoError(t, json.Unmarshal([]byte(`{"failure_threshold":5}`), &p))
	assert.Equal(t, Threshold{Count: 5}, p.FailureThreshold)
	b, err := json.Marshal(Policy{FailureThreshold: Threshold{Percent: 12.5}, Soak: Duration(time.Minute)})
	require.NoError(t, err)
	assert.Contains(t, string(b), `"failure_threshold":"12.5%"`)
	assert.Contains(t, string(b), `"soak":"1m0s"`)
	empty, err := json.Marshal(Policy{})
	require.NoError(t, err)
	assert.NotContains(t, string(empty), "failure_threshold", "an unset threshold is omitted")
	assert.Error(t, json.Unmarshal([]byte(`{"soak":"soon"}`), &p))
}

func TestMaintenanceWindow_Contains(t *testing.T) {
	berlin := MaintenanceWindow{Start: "22:00", End: "04:00", TimeZone: "Europe/Berlin"}
	day := MaintenanceWindow{Start: "09:30", End: "17:00"}
	at := func(s string) time.Time {
		tm, err := time.Parse(time.RFC3339, s)
		require.NoError(t, err)
		return tm
	}
	tests := []struct {
		w    MaintenanceWindow
		t    string
		want bool
	}{
		{berlin, "2026-01-15T21:30:00Z", true},  // 22:30 in Berlin (CET)
		{berlin, "2026-01-15T20:59:00Z", false}, // 21:59
		{berlin, "2026-01-16T02:59:00Z", true},  // 03:59 CET
		{berlin, "2026-07-15T01:30:00Z", true},  // 03:30 CEST
		{berlin, "2026-07-15T02:00:00Z", false}, // 04:00 CEST: the end is excluded
		{day, "2026-03-01T09:30:00Z", true},
		{day, "2026-03-01T17:00:00Z", false},
		{day, "2026-03-01T09:29:59Z", false},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, tt.w.Contains(at(tt.t)), "%v at %s", tt.w, tt.t)
	}
	assert.ErrorIs(t, MaintenanceWindow{Start: "25:00", End: "01:00"}.Validate(), ErrInvalidPolicy)
	assert.ErrorIs(t, MaintenanceWindow{Start: "01:00", End: "01:00"}.Validate(), ErrInvalidPolicy)
	assert.ErrorIs(t, MaintenanceWindow{Start: "01:00", End: "02:00", TimeZone: "Mars/Olympus"}.Validate(), ErrInvalidPolicy)
	assert.NoError(t, berlin.Validate())
}

func TestBackoff_DoublesWithJitterAndCaps(t *testing.T) {
	assert.Equal(t, 10*time.Second, Backoff(10*time.Second, 1, nil))
	assert.Equal(t, 40*time.Second, Backoff(10*time.Second, 3, nil))
	assert.Equal(t, MaxRetryBackoff, Backoff(10*time.Second, 50, nil))
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 100; i++ {
		d := Backoff(10*time.Second, 2, r)
		assert.GreaterOrEqual(t, d, 10*time.Second)
		assert.Less(t, d, 30*time.Second)
	}
}

func TestSelector_VersionRanges(t *testing.T) {
	dev := func(v string) Device { return Device{ID: "d", Model: "m", Version: v} }
	tests := []struct {
		sel  string
		ver  string
		want bool
	}{
		{"1.0.0", "1.0.0", true},
		{"1.0.0", "1.0.1", false},
		{"<1.2.0", "1.1.9", true},
		{"<1.2.0", "1.2.0", false},
		{">=1.0.0 <2.0.0", "1.5.0", true},
		{">=1.0.0, <2.0.0", "2.0.0", false},
		{"~1.4", "1.4.7", true},
		{"1.x", "1.9.0", true},
		{"<1.2.0", "not-semver", false},
		{"vendor-7", "vendor-7", true}, // exact, not semver
	}
	for _, tt := range tests {
		s := Selector{Version: tt.sel}
		require.NoError(t, s.Validate(), tt.sel)
		assert.Equal(t, tt.want, s.Matches(dev(tt.ver)), "%q matches %q", tt.sel, tt.ver)
	}
	assert.ErrorIs(t, Selector{Version: "<<1"}.Validate(), ErrInvalidInput)
	assert.ErrorIs(t, Selector{Devices: []string{"a b"}}.Validate(), ErrInvalidInput)
	v, ok := Selector{Version: "1.0.0"}.ExactVersion()
	assert.True(t, ok)
	assert.Equal(t, "1.0.0", v)
	_, ok = Selector{Version: "<1.0.0"}.ExactVersion()
	assert.False(t, ok)
}

func TestCompareVersions(t *testing.T) {
	c, ok := CompareVersions("1.2.0", "1.10.0")
	assert.True(t, ok)
	assert.Equal(t, -1, c)
	c, ok = CompareVersions("2.0.0", "2.0.0")
	assert.True(t, ok)
	assert.Zero(t, c)
	_, ok = CompareVersions("a", "1.0.0")
	assert.False(t, ok)
}

func TestUpdateStateMachine(t *testing.T) {
	all := []UpdateState{UpdateScheduled, UpdateRunning, UpdatePaused, UpdateCompleted, UpdateCompletedWithFailures, UpdateAborted, UpdateCancelled}
	legal := map[[2]UpdateState]bool{
		{UpdateScheduled, UpdateRunning}: true, {UpdateScheduled, UpdateCancelled}: true,
		{UpdateRunning, UpdatePaused}: true, {UpdateRunning, UpdateCompleted}: true, {UpdateRunning, UpdateCompletedWithFailures}: true,
		{UpdateRunning, UpdateAborted}: true, {UpdateRunning, UpdateCancelled}: true,
		{UpdatePaused, UpdateRunning}: true, {UpdatePaused, UpdateCompleted}: true, {UpdatePaused, UpdateCompletedWithFailures}: true,
		{UpdatePaused, UpdateAborted}: true, {UpdatePaused, UpdateCancelled}: true,
		{UpdateCompletedWithFailures, UpdateRunning}: true, {UpdateAborted, UpdateRunning}: true,
	}
	for _, from := range all {
		for _, to := range all {
			assert.Equal(t, legal[[2]UpdateState{from, to}], CanUpdateTransition(from, to), "%s -> %s", from, to)
		}
	}
	for _, s := range all {
		assert.Equal(t, s == UpdateScheduled || s == UpdateRunning || s == UpdatePaused, s.Active(), s)
		assert.Equal(t, !s.Active(), s.Terminal(), s)
	}
}

func TestMaintenanceWindow_NextOpen(t *testing.T) {
	w := MaintenanceWindow{Start: "22:00", End: "04:00", TimeZone: "Europe/Berlin"}
	berlin, err := time.LoadLocation("Europe/Berlin")
	require.NoError(t, err)
	inside := time.Date(2026, 3, 1, 23, 0, 0, 0, berlin)
	assert.Equal(t, inside, w.NextOpen(inside), "inside: now")
	assert.True(t, time.Date(2026, 3, 1, 22, 0, 0, 0, berlin).Equal(w.NextOpen(time.Date(2026, 3, 1, 12, 0, 0, 0, berlin))), "later today")
	assert.True(t, time.Date(2026, 3, 1, 22, 0, 0, 0, berlin).Equal(w.NextOpen(time.Date(2026, 3, 1, 4, 0, 0, 0, berlin))), "at the end: tonight")
	assert.True(t, MaintenanceWindow{Start: "bad"}.NextOpen(inside).IsZero())
}
