package mqttclient

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/flotaio/flota/internal/protocol"
)

// Fencing. Only one orchestrator may drive a fleet through a broker: a
// standby that took over (docs/DEPLOY.md, "Standby and failover") and an
// old primary that comes back must not both send offers and chunks. Their
// shared client ID does not settle it: the broker hands the ID to whoever
// connected last, and an old primary that reconnects takes it back, in a
// loop. MQTT 3.1.1 does not tell a client its ID was taken over.
//
// So each orchestrator claims the broker on every connection: it publishes
// {"v":1,"epoch":E,"instance":I,"nonce":N,"led":L,"led_at":T}, retained, on
// ClaimTopic(client ID), where E is one more than the last epoch recorded
// in its database (a standby's database is the primary's replica, so its
// epoch is higher), I is random per process and N per connection. It
// subscribes to ClaimTopic before, so the broker
// sends it the retained claim first, then its own claim back; until that
// echo arrives, Publish refuses (ErrNotConnected), so a returning
// orchestrator sends nothing before it knows whether it leads. A claim of
// another instance with a higher epoch fences it: Publish returns
// ErrFenced from then on, the client disconnects for good and OnFenced is
// called. At an equal epoch (an old primary restarted on its own, stale,
// database), a claimant that has not led yet yields to one that has (the
// claim says, "led"), and of two that led, the later yields to the one
// that led first ("led_at": the standby, which the stale primary can only
// have displaced while the standby was reconnecting); two that never led
// are ordered by instance. A lower claim is
// answered with the own claim again, so that the retained one is the
// leader's.

// ClaimRoot is where orchestrators claim the broker, one retained claim
// per client ID (ClaimTopic): orchestrators that share a broker with
// distinct client IDs (a fleet partitioned by update, ARCHITECTURE.md)
// do not fence each other.
const ClaimRoot = protocol.StatusRoot + "orchestrators/"

// ClaimTopic returns the claim topic of an orchestrator's client ID.
func ClaimTopic(clientID string) string { return ClaimRoot + clientID }

// maxClaimSize bounds a claim payload.
const maxClaimSize = 512

// ErrFenced: another orchestrator, newer, claimed the broker; this client
// sends nothing any more.
var ErrFenced = errors.New("mqttclient: fenced: another orchestrator took over the broker")

// claim is the payload on ClaimTopic.
type claim struct {
	V        int    `json:"v"`
	Epoch    int64  `json:"epoch"`
	Instance string `json:"instance"`
	Nonce    string `json:"nonce"`
	Led      bool   `json:"led"`              // the claimant has led the broker since it started
	LedAt    int64  `json:"led_at,omitempty"` // when it first led, Unix nanoseconds
}

// fence is the client's claim state.
type fence struct {
	mu       sync.Mutex    // guards every field below
	nonce    string        // of the claims published on the current connection
	leading  bool          // own claim echoed on this connection, nothing higher seen
	led      bool          // leading was true once
	ledAt    int64         // when, Unix nanoseconds
	err      error         // ErrFenced, with the winner, once fenced
	first    chan struct{} // closed at the first echo or on fencing
	firstSet bool
	stop     chan struct{} // closed when fenced: the subscriber disconnects
}

func newFence() *fence {
	return &fence{nonce: randomHex(8), first: make(chan struct{}), stop: make(chan struct{})}
}

// fencing reports whether the client claims the broker.
func (c *Client) fencing() bool { return c.opts.Epoch > 0 }

// gate returns nil when the client may publish for the engine.
func (c *Client) gate() error {
	if !c.fencing() {
		return nil
	}
	f := c.fence
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case f.err != nil:
		return f.err
	case !f.leading:
		c.stats.notConnected.Add(1)
		return ErrNotConnected
	}
	return nil
}

// newConnection closes the gate until the claim made on the next
// connection comes back; a claim of an earlier connection still queued
// at the broker carries an older nonce, and opens nothing.
func (c *Client) newConnection() {
	f := c.fence
	f.mu.Lock()
	f.leading = false
	f.nonce = randomHex(8)
	f.mu.Unlock()
}

// publishClaim publishes the own claim, retained, and returns its token
// (nil when fenced); the delivery goroutine must not wait for it.
func (c *Client) publishClaim() mqtt.Token {
	f := c.fence
	f.mu.Lock()
	if f.err != nil {
		f.mu.Unlock()
		return nil
	}
	b, _ := json.Marshal(claim{V: 1, Epoch: c.opts.Epoch, Instance: c.opts.Instance, Nonce: f.nonce, Led: f.led, LedAt: f.ledAt})
	f.mu.Unlock()
	return c.cli.Publish(ClaimTopic(c.opts.ClientID), 1, true, b)
}

// onClaim handles a claim: the own echo opens the gate, a higher one
// fences, a lower one is answered. It runs on paho's delivery goroutine.
func (c *Client) onClaim(_ string, payload []byte) {
	if len(payload) == 0 {
		return // a cleared claim
	}
	var cl claim
	if len(payload) > maxClaimSize || json.Unmarshal(payload, &cl) != nil || cl.V != 1 || cl.Instance == "" {
		// Only the orchestrator's broker user may write here: counted,
		// logged at debug level only, ignored.
		c.stats.badClaims.Add(1)
		c.log.Debug("ignoring a malformed orchestrator claim", "topic", ClaimTopic(c.opts.ClientID), "size", len(payload))
		return
	}
	f := c.fence
	f.mu.Lock()
	if f.err != nil {
		f.mu.Unlock()
		return
	}
	if cl.Instance == c.opts.Instance {
		if cl.Nonce == f.nonce && !f.leading {
			f.leading, f.led = true, true
			if f.ledAt == 0 {
				f.ledAt = time.Now().UnixNano()
			}
			f.releaseFirst()
			f.mu.Unlock()
			c.log.Info("leading the broker", "epoch", c.opts.Epoch, "instance", c.opts.Instance)
			return
		}
		f.mu.Unlock()
		return
	}
	yield := cl.Epoch > c.opts.Epoch || cl.Epoch == c.opts.Epoch && yieldAtEqualEpoch(cl, f.led, f.ledAt, c.opts.Instance)
	if !yield {
		f.mu.Unlock()
		c.log.Info("an older orchestrator claimed the broker; claiming it again", "its_epoch", cl.Epoch, "epoch", c.opts.Epoch)
		c.publishClaim()
		return
	}
	f.err = fmt.Errorf("%w (its epoch %d, instance %s; this one's epoch %d, instance %s)",
		ErrFenced, cl.Epoch, cl.Instance, c.opts.Epoch, c.opts.Instance)
	f.leading = false
	f.releaseFirst()
	close(f.stop)
	err := f.err
	f.mu.Unlock()
	// Off the broker at once, not when the subscriber next looks: a
	// connection lost meanwhile would be made again, and take the client
	// ID back from the new leader. Not on this goroutine: paho's
	// Disconnect waits for its delivery to stop.
	go c.cli.Disconnect(0)
	c.stats.fenced.Add(1)
	c.log.Error("another orchestrator took over the broker: this one stops driving updates", "err", err)
	if c.opts.OnFenced != nil {
		c.opts.OnFenced(err)
	}
}

// yieldAtEqualEpoch orders two claimants of one epoch: one that led
// before the other wins, then one that led at all, then the instance.
func yieldAtEqualEpoch(cl claim, led bool, ledAt int64, instance string) bool {
	switch {
	case cl.Led && led && cl.LedAt != 0 && ledAt != 0 && cl.LedAt != ledAt:
		return cl.LedAt < ledAt
	case cl.Led != led:
		return cl.Led
	}
	return cl.Instance > instance
}

// releaseFirst ends Open's wait. The caller holds f.mu.
func (f *fence) releaseFirst() {
	if !f.firstSet {
		f.firstSet = true
		close(f.first)
	}
}

// fenced returns the fencing error, or nil.
func (c *Client) fenced() error {
	if !c.fencing() {
		return nil
	}
	c.fence.mu.Lock()
	defer c.fence.mu.Unlock()
	return c.fence.err
}

// Leading reports whether the client leads the broker now: connected, and
// its claim echoed on this connection (always the connection state when
// the client does not claim).
func (c *Client) Leading() bool {
	if !c.fencing() {
		return c.Connected()
	}
	c.fence.mu.Lock()
	defer c.fence.mu.Unlock()
	return c.fence.leading && c.Connected()
}

// FenceErr returns why the client was fenced, or nil.
func (c *Client) FenceErr() error { return c.fenced() }

// Fenced returns a channel closed once the client is fenced (never, when
// it does not claim).
func (c *Client) Fenced() <-chan struct{} {
	if !c.fencing() {
		return nil
	}
	return c.fence.stop
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// NewInstance returns a random instance name for Options.Instance.
func NewInstance() string { return randomHex(8) }
