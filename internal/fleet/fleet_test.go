package fleet

import (
	"encoding/json"
	"errors"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestValidDeviceID(t *testing.T) {
	tests := []struct {
		id   string
		want bool
	}{
		{"dev-1", true},
		{"a", true},
		{"A.Z_a-z.0_9", true},
		{".", true},
		{"inline-2", true},
		{"Inline", true},
		{strings.Repeat("x", 64), true},
		{"", false},
		{"inline", false},
		{strings.Repeat("x", 65), false},
		{"dev 1", false},
		{"dev/1", false},
		{"dev+", false},
		{"dev#", false},
		{"$SYS", false},
		{"dév", false},
		{"dev\n", false},
		{"dev:1", false},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, ValidDeviceID(tt.id), "%q", tt.id)
	}
}

func TestSelector_Matches(t *testing.T) {
	d := Device{ID: "dev-1", Model: "esp32", Version: "1.0", Tags: map[string]string{"site": "lyon", "ring": "beta"}}
	tests := []struct {
		name string
		sel  Selector
		want bool
	}{
		{"empty matches all", Selector{}, true},
		{"model", Selector{Model: "esp32"}, true},
		{"other model", Selector{Model: "nrf52"}, false},
		{"version", Selector{Version: "1.0"}, true},
		{"other version", Selector{Version: "1.0.1"}, false},
		{"one tag", Selector{Tags: map[string]string{"site": "lyon"}}, true},
		{"every tag", Selector{Tags: map[string]string{"site": "lyon", "ring": "beta"}}, true},
		{"one tag differs", Selector{Tags: map[string]string{"site": "lyon", "ring": "prod"}}, false},
		{"tag absent", Selector{Tags: map[string]string{"floor": "2"}}, false},
		{"empty tag value matches an absent tag", Selector{Tags: map[string]string{"floor": ""}}, true},
		{"device listed", Selector{Devices: []string{"dev-0", "dev-1"}}, true},
		{"device not listed", Selector{Devices: []string{"dev-0", "dev-2"}}, false},
		{"all fields", Selector{Model: "esp32", Version: "1.0", Tags: map[string]string{"ring": "beta"}, Devices: []string{"dev-1"}}, true},
		{"all fields but one", Selector{Model: "esp32", Version: "1.0", Tags: map[string]string{"ring": "beta"}, Devices: []string{"dev-9"}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, tt.sel.Matches(d))
		})
	}
	assert.False(t, Selector{Tags: map[string]string{"a": "b"}}.Matches(Device{ID: "x"}), "device without tags")
}

func TestPolicy_WithDefaults(t *testing.T) {
	defaults := Policy{
		MaxInFlight:      DefaultMaxInFlight,
		Window:           DefaultWindow,
		ChunkSize:        DefaultChunkSize,
		MaxAttempts:      DefaultMaxAttempts,
		SuccessThreshold: DefaultSuccessThreshold,
		IdleTimeout:      Duration(DefaultIdleTimeout),
		ConfirmTimeout:   Duration(DefaultConfirmTimeout),
		RetryBackoff:     Duration(DefaultRetryBackoff),
		OfflineAfter:     Duration(DefaultOfflineAfter),
	}
	assert.Equal(t, defaults, Policy{}.WithDefaults())

	set := defaults
	set.MaxInFlight, set.Window, set.ChunkSize, set.MaxAttempts = 5, 2, 4096, 1
	assert.Equal(t, set, set.WithDefaults(), "set fields are kept")

	one := defaults
	one.MaxInFlight = 5
	assert.Equal(t, one, Policy{MaxInFlight: 5}.WithDefaults())
	assert.NoError(t, Policy{}.WithDefaults().Validate(), "the defaults are valid")
}

func TestPolicy_Validate(t *testing.T) {
	ok := Policy{}.WithDefaults()
	with := func(mut func(*Policy)) Policy { p := ok; mut(&p); return p }
	tests := []struct {
		name string
		p    Policy
		want bool
	}{
		{"defaults", ok, true},
		{"max_in_flight 1", with(func(p *Policy) { p.MaxInFlight = 1 }), true},
		{"max_in_flight 0", with(func(p *Policy) { p.MaxInFlight = 0 }), false},
		{"max_in_flight negative", with(func(p *Policy) { p.MaxInFlight = -1 }), false},
		{"window 1", with(func(p *Policy) { p.Window = 1 }), true},
		{"window max", with(func(p *Policy) { p.Window = MaxWindow }), true},
		{"window 0", with(func(p *Policy) { p.Window = 0 }), false},
		{"window over max", with(func(p *Policy) { p.Window = MaxWindow + 1 }), false},
		{"chunk_size min", with(func(p *Policy) { p.ChunkSize = MinChunkSize }), true},
		{"chunk_size max", with(func(p *Policy) { p.ChunkSize = MaxChunkSize }), true},
		{"chunk_size under min", with(func(p *Policy) { p.ChunkSize = MinChunkSize - 1 }), false},
		{"chunk_size over max", with(func(p *Policy) { p.ChunkSize = MaxChunkSize + 1 }), false},
		{"max_attempts 1", with(func(p *Policy) { p.MaxAttempts = 1 }), true},
		{"max_attempts 0", with(func(p *Policy) { p.MaxAttempts = 0 }), false},
		{"zero policy", Policy{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.p.Validate()
			if tt.want {
				assert.NoError(t, err)
				return
			}
			assert.ErrorIs(t, err, ErrInvalidPolicy)
		})
	}
}

func TestParseTags(t *testing.T) {
	tests := []struct {
		in      string
		want    map[string]string
		wantErr bool
	}{
		{"", nil, false},
		{"   ", nil, false},
		{"site=lyon", map[string]string{"site": "lyon"}, false},
		{"site=lyon,ring=beta", map[string]string{"site": "lyon", "ring": "beta"}, false},
		{" site = lyon , ring= beta ", map[string]string{"site": "lyon", "ring": "beta"}, false},
		{"empty=", map[string]string{"empty": ""}, false},
		{"a=b=c", map[string]string{"a": "b=c"}, false},
		{"a=1,a=2", map[string]string{"a": "2"}, false},
		{"site", nil, true},
		{"=lyon", nil, true},
		{" =lyon", nil, true},
		{"a=b,", nil, true},
		{",a=b", nil, true},
		{"a=b,,c=d", nil, true},
	}
	for _, tt := range tests {
		got, err := ParseTags(tt.in)
		if tt.wantErr {
			assert.ErrorIs(t, err, ErrInvalidInput, "%q", tt.in)
			assert.Nil(t, got)
			continue
		}
		require.NoError(t, err, "%q", tt.in)
		assert.Equal(t, tt.want, got, "%q", tt.in)
	}
}

func TestErrorf_Wraps(t *testing.T) {
	err := Errorf(ErrDeviceNotFound, "device %q", "dev-1")
	assert.ErrorIs(t, err, ErrDeviceNotFound)
	assert.Equal(t, `device not found: device "dev-1"`, err.Error())
	assert.False(t, errors.Is(err, ErrUpdateNotFound))
}

func TestNewID_Format(t *testing.T) {
	re := regexp.MustCompile(`^upd-[0-9a-f]{12}$`)
	a, b := NewID("upd"), NewID("upd")
	assert.Regexp(t, re, a)
	assert.Regexp(t, re, b)
	assert.NotEqual(t, a, b)
}

func TestUpdateSummary_Finished(t *testing.T) {
	s := UpdateSummary{Counts: map[DeviceState]int{
		StateSucceeded: 3, StateFailed: 2, StateRejected: 1, StateCancelled: 1, StateSkipped: 4,
		StateDownloading: 5, StateQueued: 6, StateRebooting: 7,
	}}
	assert.Equal(t, 11, s.Finished())
	assert.Equal(t, 0, UpdateSummary{}.Finished())
}

func TestEvent_JSON(t *testing.T) {
	// The field names device authors and monitors see on flota/events/...
	ev := Event{
		Seq: 42, Time: time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC), Type: EventDevice,
		UpdateID: "upd-1", DeviceID: "dev-1", From: "downloading", State: "failed",
		Reason: ReasonTransferTimeout, Offset: 16384, Attempt: 2,
	}
	b, err := json.Marshal(ev)
	require.NoError(t, err)
	assert.JSONEq(t, `{"seq":42,"time":"2025-03-01T12:00:00Z","type":"device","update":"upd-1",
		"device":"dev-1","from":"downloading","state":"failed","reason":"transfer_timeout",
		"offset":16384,"attempt":2}`, string(b))

	b, err = json.Marshal(Event{Seq: 1, Time: ev.Time, Type: EventUpdate, UpdateID: "upd-1", State: "running"})
	require.NoError(t, err)
	assert.JSONEq(t, `{"seq":1,"time":"2025-03-01T12:00:00Z","type":"update","update":"upd-1","state":"running"}`, string(b))
}
