package broker

import (
	"slices"
	"strings"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/logsafe"
)

// Topic trees of the ACL (see the package comment).
const (
	devicesPrefix = "flota/devices/"
	upLevel       = "/up/"
	downLevel     = "/down"
	eventsTree    = "flota/events"
	statusTree    = "flota/status"
)

// hook is the broker's mochi hook: connect authentication, the topic ACL,
// presence, drop counting and the delivery of stored device statuses
// (status.go). mochi calls OnACLCheck for every delivery to every
// subscriber, so it is allocation-free string comparison only.
type hook struct {
	mqtt.HookBase
	b *Broker
}

// ID names the hook in mochi's logs.
func (h *hook) ID() string { return "flota" }

// Provides tells mochi which events the hook handles.
func (h *hook) Provides(event byte) bool {
	switch event {
	case mqtt.OnConnect, mqtt.OnConnectAuthenticate, mqtt.OnACLCheck,
		mqtt.OnSessionEstablished, mqtt.OnDisconnect, mqtt.OnPublishDropped,
		mqtt.OnPublish, mqtt.OnWill, // OnPublish, OnWill: retain.go
		mqtt.OnSubscribe, mqtt.OnSubscribed, mqtt.OnUnsubscribed, mqtt.OnPacketSent,
		mqtt.OnUnsubscribe,     // limits.go
		mqtt.OnPacketProcessed, // status.go
		mqtt.OnSysInfoTick:     // logs.go
		return true
	}
	return false
}

// OnConnect refuses an invalid client ID with CONNACK "identifier rejected"
// (0x02 in MQTT 3.1.1), which tells a firmware author more than the "not
// authorised" that mochi sends when OnConnectAuthenticate says no, a will
// topic the client could not publish to itself with "not authorised", and
// a client ID over its reconnect limit with "server unavailable" (0x03;
// 0x9F "connection rate exceeded" in MQTT 5) before any password is
// checked (identity.go).
func (h *hook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	if cl.Net.Conn != nil {
		h.b.gate.connectRead(cl.Net.Conn)
	}
	code := packets.CodeSuccess
	switch {
	case fleet.ValidDeviceID(cl.ID) && !h.b.connectAllowed(cl):
		return h.b.refuseConnect(cl)
	case !fleet.ValidDeviceID(cl.ID):
		code = packets.ErrClientIdentifierNotValid
	case pk.Connect.WillFlag && !h.b.willAllowed(cl, pk.Connect.WillTopic):
		code = packets.ErrNotAuthorized
		if cl.Properties.ProtocolVersion < 5 {
			code = packets.ErrBadUsernameOrPassword // the one mochi maps to 3.1.1's 0x05 "not authorised"
		}
	default:
		return nil
	}
	h.b.authRefused.Add(1)
	h.b.log.Debug("connection refused", "client", logsafe.Clean(cl.ID, 64), "remote", cl.Net.Remote, "reason", code.Reason)
	if err := h.b.srv.SendConnack(cl, code, false, nil); err != nil {
		h.b.log.Debug("send connack", "client", cl.ID, "error", err)
	}
	return code
}

// willAllowed reports whether cl may set a will on topic: one within the
// topic limits (a refusal counted as such) that it could publish to itself.
func (b *Broker) willAllowed(cl *mqtt.Client, topic string) bool {
	if !b.topicFits(topic) {
		b.refuseTopic(cl, "will", topic)
		return false
	}
	return canWrite(cl.ID, topic, b.opts.UpKinds)
}

// OnConnectAuthenticate accepts a valid client ID with credentials that
// Options.Authenticate accepts, and records the connection's role.
func (h *hook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	role, err := h.b.authenticate(cl, pk)
	if err != nil {
		h.b.authRefused.Add(1)
		h.b.log.Info("authentication refused", "client", cl.ID, "remote", cl.Net.Remote, "reason", err)
		return false
	}
	h.b.clients.set(cl, &clientState{role: role})
	h.b.monitorQueue(cl, role)
	h.b.gate.authenticated(cl.Net.Conn)
	return true
}

// OnACLCheck applies the topic ACL of the client's role to a publish
// (write), a subscription filter or a delivery (read): a map read and string
// comparisons.
func (h *hook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	return h.b.aclCheck(cl, topic, write)
}

// aclCheck is OnACLCheck; the delivery of stored device statuses
// (status.go) asks it too. A publish over the topic limits is refused
// first, and counted as such; the filters of a subscription were checked
// against them before (limitSubscribe), and a delivery's topic was
// published within them.
func (b *Broker) aclCheck(cl *mqtt.Client, topic string, write bool) bool {
	if cl.Net.Inline {
		return true
	}
	if write && !b.topicFits(topic) {
		b.refuseTopic(cl, "publish", topic)
		return false
	}
	var ok bool
	if st := b.clients.get(cl); st != nil {
		switch {
		case st.role == fleet.RoleMonitor:
			ok = !write && monitorCanRead(topic)
		case write:
			ok = canWrite(cl.ID, topic, b.opts.UpKinds)
		default:
			ok = canRead(cl.ID, topic)
		}
	}
	if !ok {
		b.aclDenied.Add(1)
		b.log.Debug("acl denied", "client", cl.ID, "topic", logsafe.Clean(topic, 128), "write", write)
	}
	return ok
}

// OnPublish applies the per-client rate limit to a publish the ACL allowed
// (over the limit, the message is acknowledged and dropped) and keeps
// every client's message from being retained (retain.go).
func (h *hook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline {
		return pk, nil
	}
	if st := h.b.clients.get(cl); st != nil && !h.b.allowPublish(cl, st) {
		return pk, packets.CodeSuccessIgnore
	}
	return h.b.unretain(pk), nil
}

// OnSessionEstablished counts the connection against its client ID's
// limits and reports the client online.
func (h *hook) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	if st := h.b.clients.get(cl); st != nil {
		h.b.attachIdentity(cl, st)
	}
	h.b.sessionUp(cl)
}

// OnDisconnect reports the client offline unless its connection was taken
// over, and ends its deliveries of stored statuses.
func (h *hook) OnDisconnect(cl *mqtt.Client, err error, _ bool) {
	h.b.endFeeds(cl)
	h.b.slowMonitor(cl)
	if st := h.b.clients.get(cl); st != nil {
		h.b.detachIdentity(st)
	}
	h.b.clients.drop(cl)
	h.b.sessionDown(cl, err)
}

// OnPublishDropped counts a delivery dropped on a full client queue.
func (h *hook) OnPublishDropped(cl *mqtt.Client, pk packets.Packet) {
	h.b.queueDrops.Add(1)
	h.b.log.Debug("delivery dropped: client queue full", "client", cl.ID, "topic", pk.TopicName)
}

// canWrite reports whether client id may publish to topic: only
// flota/devices/{id}/up/{kind} with kind one of kinds, which are few
// (Options.UpKinds), so this stays a few string comparisons.
func canWrite(id, topic string, kinds []string) bool {
	rest, ok := strings.CutPrefix(topic, devicesPrefix)
	if !ok {
		return false
	}
	rest, ok = strings.CutPrefix(rest, id)
	if !ok {
		return false
	}
	rest, ok = strings.CutPrefix(rest, upLevel)
	return ok && slices.Contains(kinds, rest)
}

// canRead reports whether client id may receive topic, or subscribe to it as
// a filter: it must be one of the read trees or lie below one. Because the
// trees are literal and the comparison stops at a level boundary, a filter
// passes only if everything it matches passes.
func canRead(id, topic string) bool {
	if monitorCanRead(topic) {
		return true
	}
	rest, ok := strings.CutPrefix(topic, devicesPrefix)
	if !ok {
		return false
	}
	rest, ok = strings.CutPrefix(rest, id)
	return ok && inTree(rest, downLevel)
}

// monitorCanRead reports whether a monitor may receive topic, or subscribe
// to it as a filter: the events and status trees only.
func monitorCanRead(topic string) bool {
	return inTree(topic, eventsTree) || inTree(topic, statusTree)
}

// inTree reports whether topic is tree or lies below it.
func inTree(topic, tree string) bool {
	rest, ok := strings.CutPrefix(topic, tree)
	return ok && (rest == "" || rest[0] == '/')
}
