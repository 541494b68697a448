package agent

import (
	"log/slog"
	"sync"
)

// inbox hands down messages from paho's handler to the agent's loop. It is
// bounded by Config.QueueSize like a channel of that size would be, but it
// holds no array while it is empty: a channel of 2×MaxWindow+16 pointers
// cost every idle device about 2 KiB, a fifth of the agent's own heap in a
// fleet of 10,000 (docs/BENCHMARKS.md, "devicesim memory").
type inbox struct {
	max   int
	ready chan struct{} // holds a token while q may be non-empty

	mu sync.Mutex // guards q
	q  []*inbound
}

func newInbox(max int) *inbox {
	return &inbox{max: max, ready: make(chan struct{}, 1)}
}

// put queues m without blocking; false when the inbox is full.
func (b *inbox) put(m *inbound) bool {
	b.mu.Lock()
	if len(b.q) >= b.max {
		b.mu.Unlock()
		return false
	}
	b.q = append(b.q, m)
	b.mu.Unlock()
	select {
	case b.ready <- struct{}{}:
	default: // a token is pending already
	}
	return true
}

// take returns the queued messages, oldest first, and empties the inbox.
func (b *inbox) take() []*inbound {
	b.mu.Lock()
	q := b.q
	b.q = nil
	b.mu.Unlock()
	return q
}

// logger is the agent's logger, narrowed to its device ID. It is made on
// first use: most devices of a large fleet never log, and a narrowed
// logger costs about 1 KiB each. Safe for concurrent use (paho's
// connection-lost callback logs too).
func (a *Agent) logger() *slog.Logger {
	if l := a.log.Load(); l != nil {
		return l
	}
	a.log.CompareAndSwap(nil, a.cfg.Logger.With("device", a.cfg.ID))
	return a.log.Load()
}
