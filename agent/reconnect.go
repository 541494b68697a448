package agent

import (
	"math/rand/v2"
	"sync/atomic"
	"time"
)

// maxReconnectJitter caps the random pause before a reconnection attempt:
// the broker of a large fleet may need that long to take back one node's
// devices (paho's own backoff between attempts adds at most 5 s).
const maxReconnectJitter = 30 * time.Second

// reconnectJitter spreads a fleet's reconnections. When a broker node dies,
// every device connected to it loses its connection at the same instant,
// and paho retries them in lockstep (at once, then after 1, 2, 4 s...): a
// storm that a broker whose connection set-up is expensive (a RabbitMQ
// cluster registers every client ID in a Raft group and declares and binds
// a queue in a cluster-wide transaction) cannot absorb. Past its capacity
// the broker takes longer than the devices wait, they give up and retry,
// and it spends its time on abandoned connections. So each attempt after a
// lost connection waits a random pause, up to RetryInterval doubled at
// each failed attempt (at most maxReconnectJitter): the offered load falls
// until attempts succeed. It runs on paho's reconnecting goroutine, before
// each attempt.
type reconnectJitter struct {
	base     time.Duration
	attempts atomic.Int32 // attempts since the connection was lost
	// stale reports that the client was discarded: the pause ends early.
	stale func() bool
}

// pause waits before one reconnection attempt.
func (j *reconnectJitter) pause() {
	n := j.attempts.Add(1)
	limit := min(j.base<<min(n-1, 8), maxReconnectJitter)
	if limit <= 0 {
		return
	}
	deadline := time.Now().Add(time.Duration(rand.Int64N(int64(limit))))
	for time.Now().Before(deadline) && !j.stale() {
		time.Sleep(min(100*time.Millisecond, time.Until(deadline)))
	}
}

// connected resets the backoff.
func (j *reconnectJitter) connected() { j.attempts.Store(0) }
