package broker

import (
	"strings"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/flotaio/flota/internal/protocol"
)

// Defaults of TopicLimits. flota's longest topic or filter is about 100
// bytes and 5 levels (flota/devices/{64-character id}/down/#); a device
// needs one subscription and subscribes once per connection, a monitor a
// few. mosquitto and EMQX allow 65,535 bytes and 200 or 128 levels because
// they serve any topic layout; flota's is fixed, so the bounds are tight
// with room for a later level or two.
const (
	DefaultMaxTopicLength   = 256 // bytes of a topic name or filter
	DefaultMaxTopicLevels   = 16  // levels of a topic name or filter
	DefaultMaxSubscriptions = 32  // filters one client may hold
	DefaultSubscribeRate    = 5   // SUBSCRIBE packets per second, sustained
	DefaultSubscribeBurst   = 20  // SUBSCRIBE packets in a burst
)

// The least MaxTopicLength and MaxTopicLevels that the protocol's own
// topics fit in: flota/devices/{64-character id}/down/cancel.
const (
	MinTopicLength = 90
	MinTopicLevels = 5
)

// TopicLimits bound what one client may make the broker hold or walk: the
// topic index, which mochi builds a level at a time, and each client's
// subscriptions, which a persistent session keeps after it disconnects
// (for DefaultSessionExpiry). Zero values take the defaults above.
type TopicLimits struct {
	// MaxTopicLength and MaxTopicLevels bound every topic a client
	// publishes to, its will topic, and every filter it subscribes or
	// unsubscribes. A publish over them is refused like one the ACL denies,
	// a will makes the connection refused, a filter gets SUBACK or UNSUBACK
	// 0x8F (0x80 in MQTT 3.1.1), before the topic index sees any of them.
	MaxTopicLength int
	MaxTopicLevels int
	// MaxSubscriptions is how many filters one client may hold; a filter
	// beyond it gets SUBACK 0x97 (0x80 in MQTT 3.1.1).
	MaxSubscriptions int
	// SubscribeRate is the sustained number of SUBSCRIBE packets per second
	// one connection may send, SubscribeBurst its burst; over it, every
	// filter of the packet gets SUBACK 0x97 (0x80). A negative
	// SubscribeRate disables the limit.
	SubscribeRate  float64
	SubscribeBurst int
}

// withDefaults fills the zero fields of l.
func (l TopicLimits) withDefaults() TopicLimits {
	if l.MaxTopicLength <= 0 {
		l.MaxTopicLength = DefaultMaxTopicLength
	}
	if l.MaxTopicLevels <= 0 {
		l.MaxTopicLevels = DefaultMaxTopicLevels
	}
	if l.MaxSubscriptions <= 0 {
		l.MaxSubscriptions = DefaultMaxSubscriptions
	}
	if l.SubscribeRate == 0 {
		l.SubscribeRate = DefaultSubscribeRate
	}
	if l.SubscribeBurst <= 0 {
		l.SubscribeBurst = DefaultSubscribeBurst
	}
	return l
}

// defaultUpKinds are the message kinds a device publishes (docs/PROTOCOL.md,
// "Topics"): the only topics of its up tree it may write.
var defaultUpKinds = []string{protocol.KindHello, protocol.KindReport, protocol.KindAck, protocol.KindStatus}

// topicFits reports whether topic is within the length and depth limits.
// The length is checked first, so the levels are counted in a bounded
// number of bytes.
func (b *Broker) topicFits(topic string) bool {
	l := &b.opts.Topics
	return len(topic) <= l.MaxTopicLength && strings.Count(topic, "/") < l.MaxTopicLevels
}

// refuseTopic counts a topic or filter over the limits and logs its size
// (never the topic itself, which may be 128 KiB).
func (b *Broker) refuseTopic(cl *mqtt.Client, what, topic string) {
	b.topicRefused.Add(1)
	b.log.Debug("topic over the limits refused", "client", cl.ID, "remote", cl.Net.Remote, "what", what,
		"bytes", len(topic), "max_bytes", b.opts.Topics.MaxTopicLength, "max_levels", b.opts.Topics.MaxTopicLevels)
}

// limitSubscribe marks, in pk.ReasonCodes, the filters of a SUBSCRIBE that
// the broker refuses before mochi looks at them (mochi answers each with
// its code and subscribes the others): all of them when the connection is
// over its SUBSCRIBE rate; otherwise a filter over the topic limits, and
// each new filter beyond the client's subscription quota. A filter the
// client already holds replaces its subscription and counts nothing; a
// filter that the ACL will refuse still counts against the quota of this
// packet, which costs only a client that asks for what it may not have.
func (b *Broker) limitSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	st := b.clients.get(cl)
	if st == nil { // not authenticated: the ACL refuses everything
		return pk
	}
	codes := make([]byte, len(pk.Filters))
	if !b.allowSubscribe(cl, st) {
		for i := range codes {
			codes[i] = packets.ErrQuotaExceeded.Code
		}
		pk.ReasonCodes = codes
		return pk
	}
	held := cl.State.Subscriptions.Len()
	for i, sub := range pk.Filters {
		if !b.topicFits(sub.Filter) {
			codes[i] = packets.ErrTopicFilterInvalid.Code
			b.refuseTopic(cl, "subscribe", sub.Filter)
			continue
		}
		if _, ok := cl.State.Subscriptions.Get(sub.Filter); ok {
			continue
		}
		if held >= b.opts.Topics.MaxSubscriptions {
			codes[i] = packets.ErrQuotaExceeded.Code
			b.subsRefused.Add(1)
			if !st.subs.quotaLogged {
				st.subs.quotaLogged = true
				b.log.Warn("client over its subscription quota: refusing its new filters", "client", cl.ID,
					"remote", cl.Net.Remote, "max_subscriptions", b.opts.Topics.MaxSubscriptions)
			}
			continue
		}
		held++
	}
	pk.ReasonCodes = codes
	return pk
}

// allowSubscribe applies cl's SUBSCRIBE token bucket to one packet. It runs
// on the connection's read goroutine, the only one that touches the bucket.
func (b *Broker) allowSubscribe(cl *mqtt.Client, st *clientState) bool {
	l := &b.opts.Topics
	if l.SubscribeRate < 0 || st.subs.bucket.take(time.Now(), l.SubscribeRate, float64(l.SubscribeBurst)) {
		return true
	}
	b.subRateLimited.Add(1)
	if !st.subs.rateLogged {
		st.subs.rateLogged = true
		b.log.Warn("client over its SUBSCRIBE rate: refusing its subscriptions", "client", cl.ID,
			"remote", cl.Net.Remote, "limit_per_s", l.SubscribeRate, "burst", l.SubscribeBurst)
	}
	return false
}

// OnUnsubscribe refuses, with UNSUBACK 0x8F, the filters over the topic
// limits, which no subscription can have, before mochi walks the topic
// index with them.
func (h *hook) OnUnsubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if cl.Net.Inline {
		return pk
	}
	var codes []byte
	for i, sub := range pk.Filters {
		if h.b.topicFits(sub.Filter) {
			continue
		}
		if codes == nil {
			codes = make([]byte, len(pk.Filters))
		}
		codes[i] = packets.ErrTopicFilterInvalid.Code
		h.b.refuseTopic(cl, "unsubscribe", sub.Filter)
	}
	pk.ReasonCodes = codes
	return pk
}

// subscribeState is what the broker tracks of one connection's
// subscriptions (clientState.subs); only its read goroutine touches it.
type subscribeState struct {
	bucket      bucket // SUBSCRIBE packets (identity.go)
	rateLogged  bool   // the rate offence was logged for this connection
	quotaLogged bool   // the quota offence was logged for this connection
}
