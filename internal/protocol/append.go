package protocol

import (
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/flotaio/flota/internal/fleet"
)

// The messages sent most often (acks and reports on the device's side,
// events and device statuses on the orchestrator's) are encoded by
// appending their fields, without reflection. The output is byte for byte
// what encoding/json produces for the same struct (append_test.go compares
// them on every input its fuzz test finds).

// AppendJSONString appends s as a JSON string, as encoding/json writes it
// (HTML characters escaped, invalid UTF-8 replaced).
func AppendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			// Rare here (IDs, states and versions are plain ASCII):
			// encoding/json's own escaping is the reference.
			q, _ := json.Marshal(s) // a string always marshals
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// AppendJSONTime appends t as encoding/json writes a time.Time (RFC 3339
// with nanoseconds, quoted); false, with b as it was, for a time that
// encoding/json refuses because RFC 3339 cannot write it: a year outside
// [0,9999] or a zone offset of 24 hours or more (the checks of
// time.Time.MarshalJSON, on the same text).
func AppendJSONTime(b []byte, t time.Time) ([]byte, bool) {
	n0 := len(b)
	b = append(b, '"')
	b = t.AppendFormat(b, time.RFC3339Nano)
	s := b[n0+1:]
	if len(s) < len("2006-01-02T15:04:05Z") || s[len("2006")] != '-' {
		return b[:n0], false
	}
	if s[len(s)-1] != 'Z' {
		z := s[len(s)-len("-07:00"):]
		if ('0' <= z[0] && z[0] <= '9') || 10*(z[1]-'0')+(z[2]-'0') >= 24 {
			return b[:n0], false
		}
	}
	return append(b, '"'), true
}

// AppendJSON appends a's JSON encoding.
func (a Ack) AppendJSON(b []byte) []byte {
	b = append(b, `{"v":`...)
	b = strconv.AppendInt(b, int64(a.V), 10)
	b = append(b, `,"handle":`...)
	b = strconv.AppendUint(b, uint64(a.Handle), 10)
	b = append(b, `,"offset":`...)
	b = strconv.AppendInt(b, a.Offset, 10)
	return append(b, '}')
}

// AppendJSON appends r's JSON encoding.
func (r Report) AppendJSON(b []byte) []byte {
	b = append(b, `{"v":`...)
	b = strconv.AppendInt(b, int64(r.V), 10)
	b = append(b, `,"update":`...)
	b = AppendJSONString(b, r.Update)
	b = append(b, `,"handle":`...)
	b = strconv.AppendUint(b, uint64(r.Handle), 10)
	b = append(b, `,"state":`...)
	b = AppendJSONString(b, string(r.State))
	b = append(b, `,"offset":`...)
	b = strconv.AppendInt(b, r.Offset, 10)
	if r.Reason != "" {
		b = append(b, `,"reason":`...)
		b = AppendJSONString(b, string(r.Reason))
	}
	if r.Version != "" {
		b = append(b, `,"version":`...)
		b = AppendJSONString(b, r.Version)
	}
	return append(b, '}')
}

// Event is a fleet.Event with its JSON encoding appended without
// reflection: what the orchestrator publishes on the events topics.
type Event fleet.Event

// AppendJSON appends e's JSON encoding, as encoding/json writes a
// fleet.Event.
func (e Event) AppendJSON(b []byte) []byte {
	b = append(b, `{"seq":`...)
	b = strconv.AppendInt(b, e.Seq, 10)
	b = append(b, `,"time":`...)
	b, ok := AppendJSONTime(b, e.Time)
	if !ok {
		panic(fmt.Sprintf("protocol: encode event: time out of range: %v", e.Time)) // as encoding/json refuses it
	}
	b = append(b, `,"type":`...)
	b = AppendJSONString(b, e.Type)
	if e.UpdateID != "" {
		b = append(b, `,"update":`...)
		b = AppendJSONString(b, e.UpdateID)
	}
	if e.DeviceID != "" {
		b = append(b, `,"device":`...)
		b = AppendJSONString(b, e.DeviceID)
	}
	if e.From != "" {
		b = append(b, `,"from":`...)
		b = AppendJSONString(b, e.From)
	}
	b = append(b, `,"state":`...)
	b = AppendJSONString(b, e.State)
	if e.Reason != "" {
		b = append(b, `,"reason":`...)
		b = AppendJSONString(b, string(e.Reason))
	}
	if e.Offset != 0 {
		b = append(b, `,"offset":`...)
		b = strconv.AppendInt(b, e.Offset, 10)
	}
	if e.Attempt != 0 {
		b = append(b, `,"attempt":`...)
		b = strconv.AppendInt(b, int64(e.Attempt), 10)
	}
	if e.Phase != 0 {
		b = append(b, `,"phase":`...)
		b = strconv.AppendInt(b, int64(e.Phase), 10)
	}
	return append(b, '}')
}
