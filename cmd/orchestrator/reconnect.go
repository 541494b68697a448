package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"syscall"
	"time"
)

// The commands that follow an update (update watch, update events
// --follow) outlive an orchestrator restart: an upgrade or a crash of the
// server must not end an operator's watch. They wait between attempts from
// reconnectFirstWait, doubling up to reconnectMaxWait, and give up after
// --reconnect-for without an answer.
const (
	reconnectFirstWait    = 250 * time.Millisecond
	reconnectMaxWait      = 5 * time.Second
	defaultReconnectLimit = 2 * time.Minute
)

// reconnectFlag adds --reconnect-for to a following command.
func reconnectFlag(fs *flag.FlagSet) *time.Duration {
	return fs.Duration("reconnect-for", defaultReconnectLimit,
		"how long to keep reconnecting to an orchestrator that went away (restart, upgrade); 0 gives up at once")
}

// reconnector retries the calls of one following command across lost
// connections. It retries only once the orchestrator has answered: a wrong
// --server or a server that is not running fails at once, as for every
// other command.
type reconnector struct {
	stderr io.Writer
	limit  time.Duration // how long the orchestrator may stay unreachable
	// before runs before the first message of an outage (update watch ends
	// its progress line there).
	before func()

	answered bool          // the orchestrator answered at least once
	down     time.Time     // when the current outage began; zero while connected
	wait     time.Duration // the next pause
	tries    int           // attempts in the current outage
}

// do runs call until it succeeds, fails for a reason other than a lost
// orchestrator, or the orchestrator has been away longer than limit.
func (r *reconnector) do(ctx context.Context, call func() error) error {
	for {
		err := call()
		if err == nil {
			if !r.down.IsZero() {
				fmt.Fprintf(r.stderr, "reconnected to the orchestrator after %s\n", time.Since(r.down).Round(100*time.Millisecond))
				r.down, r.tries = time.Time{}, 0
			}
			r.answered = true
			return nil
		}
		if !r.answered || !lostOrchestrator(err) || ctx.Err() != nil {
			return err
		}
		now := time.Now()
		if r.down.IsZero() {
			r.down, r.wait = now, reconnectFirstWait
			if r.before != nil {
				r.before()
			}
		}
		left := r.limit - now.Sub(r.down)
		if left <= 0 {
			return fmt.Errorf("gave up reconnecting after %s (--reconnect-for): %w", r.limit, err)
		}
		wait := min(r.wait, left)
		r.tries++
		fmt.Fprintf(r.stderr, "lost the orchestrator: %v; reconnecting in %s (attempt %d, giving up in %s)\n",
			err, wait, r.tries, left.Round(time.Second))
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return context.Cause(ctx)
		case <-t.C:
		}
		r.wait = min(2*r.wait, reconnectMaxWait)
	}
}

// lostOrchestrator reports whether err means the orchestrator is away for
// now (not listening, the connection reset or closed while it stops, or a
// proxy in front of it without a backend) rather than refusing the request.
func lostOrchestrator(err error) bool {
	var apiErr *APIError
	if errors.As(err, &apiErr) {
		switch apiErr.Status {
		case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
			return true
		}
		return false
	}
	var opErr *net.OpError
	return errors.As(err, &opErr) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}
