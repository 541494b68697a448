package main

import (
	"context"
	"sync"
	"time"
)

// delayQueueSize bounds the actions waiting out their delay; a full queue
// makes the handler that adds one wait, as a congested link would.
const delayQueueSize = 1 << 16

// delayer runs actions a fixed delay after they were scheduled, in the order
// they were scheduled, on one goroutine: the subscribers' model of a link
// with a one-way latency (--latency), without a goroutine or timer per
// message. With no delay it runs each action at once, on the caller's
// goroutine.
type delayer struct {
	d   time.Duration
	ctx context.Context
	q   chan delayed
	wg  sync.WaitGroup
}

type delayed struct {
	due time.Time
	fn  func()
}

// newDelayer starts the delayer's goroutine; it ends with ctx.
func newDelayer(ctx context.Context, d time.Duration) *delayer {
	l := &delayer{d: d, ctx: ctx}
	if d <= 0 {
		return l
	}
	l.q = make(chan delayed, delayQueueSize)
	l.wg.Go(func() {
		t := time.NewTimer(0)
		defer t.Stop()
		for {
			var it delayed
			select {
			case <-ctx.Done():
				return
			case it = <-l.q:
			}
			if wait := time.Until(it.due); wait > 0 {
				t.Reset(wait)
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
			}
			it.fn()
		}
	})
	return l
}

// after runs fn once the delay has passed; after the delayer's context
// ended, it drops fn.
func (l *delayer) after(fn func()) {
	if l.q == nil {
		fn()
		return
	}
	select {
	case l.q <- delayed{due: time.Now().Add(l.d), fn: fn}:
	case <-l.ctx.Done():
	}
}

// wait waits for the goroutine to end (after ctx ends).
func (l *delayer) wait() { l.wg.Wait() }
