package broker

import (
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Defaults of the per-identity connection limit (Options.ConnectRate,
// Options.ConnectBan). An honest device connects once at boot, once after
// each install's reboot and after a network fault, a few times an hour;
// devicesim's injected faults add one or two connections per transfer.
// Thirty in a minute is a device (or two devices sharing a client ID)
// in a loop, the flapping EMQX's flapping detection bans (15 a minute,
// 5 minutes, by default there).
const (
	DefaultConnectRate = 30 // connections per minute per client ID, also the burst
	DefaultConnectBan  = time.Minute
)

// Intervals of the identities' bookkeeping.
const (
	// limitLogInterval: an identity over a limit is logged at most once per
	// interval and limit, with the count of what was refused since.
	limitLogInterval = time.Minute
	// identitySweepInterval: how often a connection forgets the idle
	// identities (sweep).
	identitySweepInterval = 10 * time.Second
)

// bucket is a token bucket.
type bucket struct {
	tokens float64
	last   time.Time // zero: never used, the bucket is full
}

// refill brings the bucket to now and returns its tokens.
func (k *bucket) refill(now time.Time, rate, burst float64) float64 {
	if k.last.IsZero() {
		k.tokens = burst
	} else {
		k.tokens = min(burst, k.tokens+now.Sub(k.last).Seconds()*rate)
	}
	k.last = now
	return k.tokens
}

// take takes one token if there is one.
func (k *bucket) take(now time.Time, rate, burst float64) bool {
	if k.refill(now, rate, burst) < 1 {
		return false
	}
	k.tokens--
	return true
}

// full reports whether the bucket would be full at now, as a new one is.
func (k *bucket) full(now time.Time, rate, burst float64) bool {
	return k.last.IsZero() || k.tokens+now.Sub(k.last).Seconds()*rate >= burst
}

// throttle counts refusals and says when one is to be logged: the first,
// then at most one per limitLogInterval, with the count since the last.
type throttle struct {
	logged  time.Time
	pending int64 // refusals since the last log line
}

// note counts one refusal and returns the count to log, or 0.
func (t *throttle) note(now time.Time) int64 {
	t.pending++
	if !t.logged.IsZero() && now.Sub(t.logged) < limitLogInterval {
		return 0
	}
	n := t.pending
	t.logged, t.pending = now, 0
	return n
}

// identity is the limiter state of one client ID, kept across its
// connections, so that reconnecting resets nothing: the publish token
// bucket, the connection token bucket and a ban.
type identity struct {
	mu      sync.Mutex // guards the fields below
	publish bucket
	connect bucket
	banned  time.Time // connections are refused until then
	conns   int       // established connections that hold this identity
	pubLog  throttle  // publishes dropped by the rate limit
	banLog  throttle  // connections refused by the ban
}

// idle reports whether the identity is as a new one would be, so that
// forgetting it changes nothing. Called with i.mu held.
func (i *identity) idle(b *Broker, now time.Time) bool {
	return i.conns == 0 && !now.Before(i.banned) && i.pubLog.pending == 0 && i.banLog.pending == 0 &&
		i.publish.full(now, b.opts.RateLimit, float64(b.opts.RateBurst)) &&
		i.connect.full(now, b.connectRate(), float64(b.opts.ConnectRate))
}

// identities maps client IDs to their *identity. An entry exists for an
// identity with a connection, and for one that connected, published, or
// was refused recently (its buckets not yet full again, its ban running):
// the others are forgotten at the next sweep. Only authenticated
// connections make entries.
type identities struct {
	mu    sync.Mutex // guards m and swept; taken before an identity's mu
	m     map[string]*identity
	swept time.Time
}

// connectRate is Options.ConnectRate in connections per second.
func (b *Broker) connectRate() float64 { return float64(b.opts.ConnectRate) / 60 }

// connectAllowed applies the reconnect limit of cl's client ID, before
// authentication: a client ID that had ConnectRate established
// connections in the last minute (a burst of ConnectRate, refilled at
// ConnectRate a minute) is refused for ConnectBan. Only established
// connections count, so whoever does not hold the credentials cannot get
// a device banned.
func (b *Broker) connectAllowed(cl *mqtt.Client) bool {
	if b.opts.ConnectRate < 0 {
		return true
	}
	b.ids.mu.Lock()
	id := b.ids.m[cl.ID]
	b.ids.mu.Unlock()
	if id == nil {
		return true
	}
	now := time.Now()
	id.mu.Lock()
	defer id.mu.Unlock()
	if now.Before(id.banned) {
		b.connectLimited.Add(1)
		if n := id.banLog.note(now); n > 0 {
			b.log.Warn("client ID banned for connecting too often: refusing its connections", "client", cl.ID,
				"remote", cl.Net.Remote, "refused", n, "banned_for", id.banned.Sub(now).Round(time.Second))
		}
		return false
	}
	if id.connect.refill(now, b.connectRate(), float64(b.opts.ConnectRate)) >= 1 {
		return true
	}
	id.banned = now.Add(b.opts.ConnectBan)
	b.connectLimited.Add(1)
	refused := id.banLog.pending + 1 // this one, and those of an earlier ban not logged yet
	id.banLog.logged, id.banLog.pending = now, 0
	b.log.Warn("client ID connects too often: banned", "client", cl.ID, "remote", cl.Net.Remote,
		"refused", refused, "limit_per_min", b.opts.ConnectRate, "ban", b.opts.ConnectBan)
	return false
}

// refuseConnect answers a connection refused by the reconnect limit:
// CONNACK 0x9F "connection rate exceeded" to an MQTT 5 client, 0x03
// "server unavailable" to an MQTT 3.1.1 one, which has no closer code.
func (b *Broker) refuseConnect(cl *mqtt.Client) error {
	code := packets.ErrConnectionRateExceeded
	if cl.Properties.ProtocolVersion < 5 {
		code = packets.ErrServerUnavailable // mochi maps it to 3.1.1's 0x03
	}
	if err := b.srv.SendConnack(cl, code, false, nil); err != nil {
		b.log.Debug("send connack", "client", cl.ID, "error", err)
	}
	return code
}

// attachIdentity binds an established connection to its client ID's
// identity, making the identity if need be, and counts the connection
// against the reconnect limit. It runs on the connection's goroutine.
func (b *Broker) attachIdentity(cl *mqtt.Client, st *clientState) {
	now := time.Now()
	b.ids.mu.Lock()
	if b.ids.m == nil {
		b.ids.m = make(map[string]*identity)
	}
	if now.Sub(b.ids.swept) >= identitySweepInterval {
		b.ids.swept = now
		b.sweepIdentities(now)
	}
	id := b.ids.m[cl.ID]
	if id == nil {
		id = &identity{}
		b.ids.m[cl.ID] = id
	}
	id.mu.Lock()
	b.ids.mu.Unlock()
	id.conns++
	if b.opts.ConnectRate >= 0 {
		// Two connections racing past connectAllowed may leave the bucket
		// short: the next connection is then refused a little early.
		id.connect.refill(now, b.connectRate(), float64(b.opts.ConnectRate))
		id.connect.tokens = max(id.connect.tokens-1, 0)
	}
	id.mu.Unlock()
	st.id = id
}

// detachIdentity releases the identity of a connection that ends.
func (b *Broker) detachIdentity(st *clientState) {
	if st.id == nil {
		return
	}
	st.id.mu.Lock()
	st.id.conns--
	st.id.mu.Unlock()
}

// sweepIdentities logs what the throttle held back for longer than its
// interval and forgets the idle identities. Called with b.ids.mu held.
func (b *Broker) sweepIdentities(now time.Time) {
	for k, id := range b.ids.m {
		id.mu.Lock()
		if id.pubLog.pending > 0 && now.Sub(id.pubLog.logged) >= limitLogInterval {
			b.log.Warn("client was over its publish rate limit: messages dropped", "client", k, "dropped", id.pubLog.pending)
			id.pubLog.pending = 0
		}
		if id.banLog.pending > 0 && now.Sub(id.banLog.logged) >= limitLogInterval {
			b.log.Warn("client ID was banned for connecting too often: connections refused", "client", k, "refused", id.banLog.pending)
			id.banLog.pending = 0
		}
		idle := id.idle(b, now)
		id.mu.Unlock()
		if idle {
			delete(b.ids.m, k)
		}
	}
}

// identityCount returns the number of identities kept.
func (b *Broker) identityCount() int {
	b.ids.mu.Lock()
	defer b.ids.mu.Unlock()
	return len(b.ids.m)
}

// allowPublish applies the token bucket of cl's identity to one inbound
// publish. The bucket is the identity's, not the connection's: it survives
// reconnections.
func (b *Broker) allowPublish(cl *mqtt.Client, st *clientState) bool {
	if b.opts.RateLimit < 0 || st.id == nil {
		return true
	}
	now := time.Now()
	id := st.id
	id.mu.Lock()
	defer id.mu.Unlock()
	if id.publish.take(now, b.opts.RateLimit, float64(b.opts.RateBurst)) {
		return true
	}
	b.rateLimited.Add(1)
	if n := id.pubLog.note(now); n > 0 {
		b.log.Warn("client over its publish rate limit: dropping its messages", "client", cl.ID,
			"remote", cl.Net.Remote, "dropped", n, "limit_per_s", b.opts.RateLimit, "burst", b.opts.RateBurst)
	}
	return false
}
