package broker

import (
	"fmt"
	"log/slog"
	"strings"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/mochi-mqtt/server/v2/system"

	"github.com/flotaio/flota/internal/logsafe"
)

// What the broker's logs never hold: a client's password, a message's
// payload, or a whole packet or will (which carry both). mochi's own log
// lines that passed packets were changed to log the packet type (a flota
// patch); redact below is the second line of defence, for any attribute
// mochi logs, whatever its name or the line it is on.

// redactedKeys are attribute names whose value is never logged.
var redactedKeys = map[string]bool{"password": true, "payload": true}

// redact returns a with any packet, will, byte slice or secret replaced by
// a short description, and whether it changed anything.
func redact(a slog.Attr) (slog.Attr, bool) {
	if redactedKeys[strings.ToLower(a.Key)] {
		return slog.String(a.Key, "[redacted]"), true
	}
	switch a.Value.Kind() {
	case slog.KindGroup:
		attrs := a.Value.Group()
		changed := false
		out := make([]slog.Attr, len(attrs))
		for i, g := range attrs {
			var c bool
			out[i], c = redact(g)
			changed = changed || c
		}
		if !changed {
			return a, false
		}
		return slog.Attr{Key: a.Key, Value: slog.GroupValue(out...)}, true
	case slog.KindAny:
	default:
		return a, false
	}
	switch v := a.Value.Any().(type) {
	case packets.Packet:
		return slog.String(a.Key, describePacket(&v)), true
	case *packets.Packet:
		if v == nil {
			return a, false
		}
		return slog.String(a.Key, describePacket(v)), true
	case mqtt.Will:
		return slog.String(a.Key, fmt.Sprintf("will topic=%s payload_bytes=%d", logsafe.Clean(v.TopicName, 64), len(v.Payload))), true
	case []byte:
		return slog.String(a.Key, fmt.Sprintf("[%d bytes]", len(v))), true
	}
	return a, false
}

// describePacket names a packet without its payload or credentials.
func describePacket(pk *packets.Packet) string {
	name := packets.PacketNames[pk.FixedHeader.Type]
	if pk.FixedHeader.Type == packets.Publish {
		return fmt.Sprintf("%s qos=%d topic=%s payload_bytes=%d", name, pk.FixedHeader.Qos, logsafe.Clean(pk.TopicName, 64), len(pk.Payload))
	}
	return name
}

// redactRecord returns r with its attributes redacted, r itself when none
// needed it.
func redactRecord(r slog.Record) slog.Record {
	changed := false
	r.Attrs(func(a slog.Attr) bool {
		if _, c := redact(a); c {
			changed = true
			return false
		}
		return true
	})
	if !changed {
		return r
	}
	out := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
	r.Attrs(func(a slog.Attr) bool {
		a, _ = redact(a)
		out.AddAttrs(a)
		return true
	})
	return out
}

func redactAttrs(attrs []slog.Attr) []slog.Attr {
	out := make([]slog.Attr, len(attrs))
	for i, a := range attrs {
		out[i], _ = redact(a)
	}
	return out
}

// OnSysInfoTick writes the log limiter's summaries of clients whose window
// ended (mochi calls it every SysTopicResendInterval), so that a client
// that went quiet after a flood still gets its "log lines suppressed" line.
func (h *hook) OnSysInfoTick(*system.Info) {
	h.b.logs.Sweep()
}

// sweepLogs is for tests: the limiter's periodic pass, now.
func (b *Broker) sweepLogs() { b.logs.Sweep() }
