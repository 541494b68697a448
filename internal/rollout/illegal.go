package rollout

import (
	"strings"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/logsafe"
	"github.com/flotaio/flota/internal/protocol"
)

// recordIllegal records an illegal change of t as an event, unless one of
// t's was recorded less than IllegalEventInterval ago: a device that keeps
// sending reports the state machine refuses would otherwise write a row per
// report (hundreds of thousands a minute) into the event log. The first of
// each interval shows an operator what the device does; the rest are
// counted in Stats.IllegalChanges and IllegalEventsSuppressed.
func (e *Engine) recordIllegal(t *target, from, to fleet.DeviceState, reason fleet.Reason) {
	now := e.now()
	if t.illegalAt != 0 && e.IllegalEventInterval > 0 && now.UnixNano()-t.illegalAt < int64(e.IllegalEventInterval) {
		e.stats.illegalSuppressed.Add(1)
		return
	}
	t.illegalAt = now.UnixNano()
	e.emit(fleet.Event{Type: fleet.EventIllegal, UpdateID: t.r.u.ID, DeviceID: t.p.DeviceID, From: string(from), State: string(to), Reason: reason, Time: now.UTC()})
}

// logLinesSuppressed returns the log lines the per-device limit dropped.
func (e *Engine) logLinesSuppressed() int64 {
	if e.logs == nil {
		return 0
	}
	return e.logs.Suppressed()
}

// topicDevice returns the device level of a topic under the devices tree,
// cleaned, for the log limit's key: a device that floods a topic the engine
// cannot parse (its ACL lets it publish below its up tree) is limited as
// itself. "" when there is none.
func topicDevice(topic string) string {
	rest, ok := strings.CutPrefix(topic, protocol.DevicesRoot)
	if !ok {
		return ""
	}
	id, _, _ := strings.Cut(rest, "/")
	return logsafe.Clean(id, 64)
}
