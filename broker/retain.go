package broker

import (
	"strings"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/flotaio/flota/internal/protocol"
)

// No client's retained message is kept: the broker clears the retain flag of
// every publish and will from a client, and delivers the message as it
// would otherwise. Only the orchestrator (the inline client) retains: its
// update summaries, and device statuses, which status.go keeps.
//
// The protocol retains one thing, a device's presence ({"v":1,"online":...}
// on flota/devices/{id}/up/status, also its last will), so that an
// orchestrator behind an external broker learns every device's last status
// when it subscribes (docs/ARCHITECTURE.md, "Presence"). On the embedded
// broker nobody can use the retained copy: the ACL lets no client read
// another client's up tree, and the orchestrator, the only other reader,
// learns presence from the connection hooks and starts together with the
// broker, whose retained messages live in memory only. mochi keeps each
// retained message as an 800-byte packet in a map that it copies whole
// every second to look for expired ones, so with 100,000 devices these
// copies would cost about 100 MB of live memory, and a copy of it each
// second, for nothing. The protocol forbids retaining anything else
// (docs/PROTOCOL.md, "Topics"); such a message is delivered without the
// flag and counted (Stats.RetainRefused), so that a device cannot make the
// broker hold anything after its message is delivered.

// unretain clears the retain flag of a client's publish, counting it unless
// it is a device's presence; OnPublish (hook.go) calls it for every publish
// a client makes.
func (b *Broker) unretain(pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Retain {
		pk.FixedHeader.Retain = false
		if !presenceTopic(pk.TopicName) {
			b.retainRefused.Add(1)
		}
	}
	return pk
}

// OnWill clears the retain flag of a client's will, as unretain.
func (h *hook) OnWill(cl *mqtt.Client, will mqtt.Will) (mqtt.Will, error) {
	if will.Retain && !cl.Net.Inline {
		will.Retain = false
		if !presenceTopic(will.TopicName) {
			h.b.retainRefused.Add(1)
		}
	}
	return will, nil
}

// presenceTopic reports whether topic is some device's up/status topic.
func presenceTopic(topic string) bool {
	if !strings.HasSuffix(topic, "/up/"+protocol.KindStatus) {
		return false
	}
	_, kind, ok := protocol.ParseUpTopic(topic)
	return ok && kind == protocol.KindStatus
}
