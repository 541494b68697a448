package broker

import (
	"strings"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/flotaio/flota/internal/protocol"
)

// Devices publish their presence ({"v":1,"online":...}) retained on
// flota/devices/{id}/up/status, and set the same topic as their retained
// last will, so that an orchestrator behind an external broker learns every
// device's last status when it subscribes (docs/ARCHITECTURE.md,
// "Presence"). On the embedded broker nobody can use the retained copy: the
// ACL lets no client read another client's up tree, and the orchestrator,
// the only other reader, learns presence from the connection hooks and
// starts together with the broker, whose retained messages live in memory
// only. mochi keeps each retained message as an 800-byte packet in a map
// that it copies whole every second to look for expired ones, so with
// 100,000 devices these copies would cost about 100 MB of live memory, and
// a copy of it each second, for nothing. The hook therefore clears the
// retain flag of presence messages and wills; they are delivered to
// subscribers as before.

// unretainPresence clears the retain flag of a device's presence message;
// OnPublish (hook.go) calls it for every publish a client makes.
func unretainPresence(pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Retain && presenceTopic(pk.TopicName) {
		pk.FixedHeader.Retain = false
	}
	return pk
}

// OnWill clears the retain flag of a device's presence will.
func (h *hook) OnWill(_ *mqtt.Client, will mqtt.Will) (mqtt.Will, error) {
	if will.Retain && presenceTopic(will.TopicName) {
		will.Retain = false
	}
	return will, nil
}

// presenceTopic reports whether topic is some device's up/status topic. It
// runs for every publish, chunks included: the suffix test comes first.
func presenceTopic(topic string) bool {
	if !strings.HasSuffix(topic, "/up/"+protocol.KindStatus) {
		return false
	}
	_, kind, ok := protocol.ParseUpTopic(topic)
	return ok && kind == protocol.KindStatus
}
