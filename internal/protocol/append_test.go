package protocol

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
)

// Types with the same fields and tags but no AppendJSON: encoding/json's
// reflection encodes them, the reference the appenders must equal.
type (
	plainAck    Ack
	plainReport Report
)

// oddStrings exercise every branch of the string encoder: plain ASCII,
// HTML characters, quotes and backslashes, control characters, DEL,
// multi-byte and invalid UTF-8, and the line separators JSON escapes.
var oddStrings = []string{"", "upd-3f9a1c0b7e21", "a<b>&c", `q"uo\te`, "tab\there\nnl\x00", "del\x7f", "ünï©ødé", "bad\xff\xfeutf8", "ls\u2028ps\u2029", "emoji 🙂"}

func TestAppendJSON_EqualsEncodingJSON(t *testing.T) {
	times := []time.Time{{}, time.Date(2026, 11, 27, 11, 29, 10, 123456789, time.UTC),
		time.Date(2026, 1, 2, 3, 4, 5, 0, time.FixedZone("x", -3*3600-1800)), time.Date(9999, 12, 31, 23, 59, 59, 1, time.UTC)}
	for _, s := range oddStrings {
		for _, n := range []int64{0, 1, -7, 1 << 40} {
			a := Ack{V: int(n), Handle: uint32(n), Offset: n}
			want, err := json.Marshal(plainAck(a))
			require.NoError(t, err)
			assert.Equal(t, string(want), string(Encode(a)))

			r := Report{V: 1, Update: s, Handle: uint32(n), State: fleet.DeviceState(s), Offset: n, Reason: fleet.Reason(s), Version: s}
			want, err = json.Marshal(plainReport(r))
			require.NoError(t, err)
			assert.Equal(t, string(want), string(Encode(r)), "%q", s)

			for _, tm := range times {
				e := fleet.Event{Seq: n, Time: tm, Type: s, UpdateID: s, DeviceID: s, From: s, State: s,
					Reason: fleet.Reason(s), Offset: n, Attempt: int(n), Phase: int(n)}
				want, err = json.Marshal(e)
				require.NoError(t, err)
				assert.Equal(t, string(want), string(Encode(Event(e))), "%q %v", s, tm)
			}
		}
	}
}

func TestAppendJSON_EventTimeThatEncodingJSONRefusesStillPanics(t *testing.T) {
	for _, tm := range []time.Time{
		time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(2026, 1, 1, 0, 0, 0, 0, time.FixedZone("far", 25*3600)),
		time.Date(2026, 1, 1, 0, 0, 0, 0, time.FixedZone("far", -24*3600)),
		time.Date(2026, 1, 1, 0, 0, 0, 0, time.FixedZone("three digits", 100*3600)), // "+100:00"
		time.Date(2026, 1, 1, 0, 0, 0, 0, time.FixedZone("three digits", -123*3600)),
	} {
		e := fleet.Event{Seq: 1, Time: tm, Type: fleet.EventDevice, State: "queued"}
		_, err := json.Marshal(e)
		require.Error(t, err, "%v", tm)
		assert.Panics(t, func() { Encode(Event(e)) }, "%v", tm)
	}
	b, ok := AppendJSONTime([]byte("x"), time.Date(2026, 1, 1, 0, 0, 0, 0, time.FixedZone("far", 24*3600)))
	assert.False(t, ok)
	assert.Equal(t, "x", string(b), "b is returned as it was")
	b, ok = AppendJSONTime(nil, time.Date(2026, 1, 1, 0, 0, 0, 0, time.FixedZone("near", 23*3600+59*60)))
	assert.True(t, ok)
	assert.Equal(t, `"2026-01-01T00:00:00+23:59"`, string(b))
}

func FuzzAppendJSON(f *testing.F) {
	for _, s := range oddStrings {
		f.Add(s, s, int64(3), int64(1700000000123456789))
	}
	f.Fuzz(func(t *testing.T, a, b string, n, nanos int64) {
		r := Report{V: int(n), Update: a, Handle: uint32(n), State: fleet.DeviceState(b), Offset: n, Reason: fleet.Reason(a), Version: b}
		want, err := json.Marshal(plainReport(r))
		require.NoError(t, err)
		require.Equal(t, string(want), string(Encode(r)))

		e := fleet.Event{Seq: n, Time: time.Unix(0, nanos).In(time.FixedZone("z", int(n%200000))), Type: a, UpdateID: b, DeviceID: a,
			From: b, State: a, Reason: fleet.Reason(b), Offset: -n, Attempt: int(n), Phase: int(n >> 3)}
		want, err = json.Marshal(e)
		if err != nil {
			require.Panics(t, func() { Encode(Event(e)) })
			return
		}
		require.Equal(t, string(want), string(Encode(Event(e))))
	})
}

func BenchmarkEncode(b *testing.B) {
	e := fleet.Event{Seq: 123456, Time: time.Date(2026, 11, 27, 11, 29, 10, 123456789, time.UTC), Type: fleet.EventDevice,
		UpdateID: "upd-3f9a1c0b7e21", DeviceID: "sim-00042", From: "offered", State: "accepted", Attempt: 1}
	r := Report{V: 1, Update: "upd-3f9a1c0b7e21", Handle: 16909060, State: fleet.StateDownloaded, Offset: 262144}
	b.Run("event/appender", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			Encode(Event(e))
		}
	})
	b.Run("event/encoding-json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			Encode(e)
		}
	})
	b.Run("report/appender", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			Encode(r)
		}
	})
	b.Run("report/encoding-json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			Encode(plainReport(r))
		}
	})
}
