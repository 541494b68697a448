package sqlite

import (
	"database/sql/driver"
	"errors"
	"fmt"
	"time"

	"github.com/mattn/go-sqlite3"

	"github.com/flotaio/flota/internal/fleet"
)

// The writer never drops a write because the disk is full, read-only or
// failing. A batch whose transaction fails on such a fault (transient) is
// kept, and retried alone, in order, with backoff from RetryMin doubling to
// RetryMax, until it commits: nothing queued after it commits before it.
// Meanwhile the writer reads no more of its queue, which fills, and then
// blocks every writer (back-pressure); Unavailable says why, so that the
// engine and the API stop producing writes before they block.
//
// A batch that fails on anything else (a constraint, a type mismatch: one
// bad operation, a bug or a bad input) is applied one operation per
// transaction, so that the bad operation alone is dropped, logged and
// counted (Stats.Dropped); a transient fault on the way holds the rest as
// above.
//
// Close retries for CloseGrace at most; what is still held then is lost
// (logged, counted in Stats.Dropped, and returned by Close), as it would be
// by a power cut: devices hold their own state, and the engine reconciles
// with them when it starts again (docs/ARCHITECTURE.md, Disk faults).

// Defaults of the writer's retries.
const (
	DefaultRetryMin   = 50 * time.Millisecond
	DefaultRetryMax   = 2 * time.Second
	DefaultCloseGrace = 5 * time.Second
)

// transient reports whether err is a fault of the disk or of the database
// file, which retrying may outlive, rather than a fault of one operation.
func transient(err error) bool {
	var se sqlite3.Error
	if errors.As(err, &se) {
		switch se.Code {
		case sqlite3.ErrBusy, sqlite3.ErrLocked, sqlite3.ErrNomem, sqlite3.ErrReadonly, sqlite3.ErrIoErr,
			sqlite3.ErrCorrupt, sqlite3.ErrFull, sqlite3.ErrCantOpen, sqlite3.ErrProtocol, sqlite3.ErrNotADB,
			sqlite3.ErrPerm:
			return true
		}
		return false
	}
	return errors.Is(err, driver.ErrBadConn)
}

// unavailableErr wraps a transient error as fleet.ErrStoreUnavailable.
func unavailableErr(err error) error {
	if err == nil || !transient(err) || errors.Is(err, fleet.ErrStoreUnavailable) {
		return err
	}
	return fmt.Errorf("%w: %w", fleet.ErrStoreUnavailable, err)
}

// fault is why the writer holds writes it cannot commit.
type fault struct {
	err   error
	since time.Time
}

// Unavailable returns nil while the store commits its writes, and an error
// wrapping fleet.ErrStoreUnavailable, with the cause and since when, while
// the writer holds a batch it cannot commit (full disk, read-only file
// system, I/O error). It is cheap: the engine asks it at every turn of its
// loop.
func (s *Store) Unavailable() error {
	f := s.fault.Load()
	if f == nil {
		return nil
	}
	return fmt.Errorf("%w since %s: %w", fleet.ErrStoreUnavailable, f.since.UTC().Format(time.RFC3339), f.err)
}

// HealthReason is Unavailable as a health check: "" while the store
// writes, the reason otherwise.
func (s *Store) HealthReason() string {
	if err := s.Unavailable(); err != nil {
		return err.Error()
	}
	return ""
}

// commitBatch commits ops, less the progress saves that a later save of the
// same row makes useless (batchPlan). It returns when every operation is
// committed, or dropped for a fault of its own, or abandoned at Close after
// CloseGrace.
func (s *Store) commitBatch(ops []batchOp) {
	start := time.Now()
	defer func() { s.stats.commitNanos.Add(int64(time.Since(start))) }()
	wait := s.RetryMin
	for {
		err := s.execBatch(ops)
		if err != nil && !transient(err) {
			if len(ops) > 1 {
				s.Logger.Warn("store batch failed, retrying one by one", "ops", len(ops), "err", err)
			}
			ops, err = s.commitEach(ops)
		}
		if err == nil {
			s.recovered()
			return
		}
		s.held.Store(int64(len(ops)))
		if !s.backoff(err, &wait) {
			s.abandon(ops, err)
			return
		}
	}
}

// execBatch runs ops in one transaction and counts it once committed.
func (s *Store) execBatch(ops []batchOp) error {
	plan, upserts := s.plan.plan(ops)
	err := s.stmts.execTx(s.writer, plan)
	s.plan.reset()
	if err != nil {
		return err
	}
	s.stats.transactions.Add(1)
	s.stats.rows.Add(rowsOf(ops))
	s.stats.progressWrites.Add(int64(upserts))
	s.stats.lastBatch.Store(int64(len(ops)))
	s.notifyEvents(ops)
	return nil
}

// commitEach runs ops one per transaction, dropping (logging and counting)
// those that fail on their own. At the first transient fault it returns the
// operations from there on, with the error.
func (s *Store) commitEach(ops []batchOp) ([]batchOp, error) {
	for i := range ops {
		err := s.execBatch(ops[i : i+1])
		switch {
		case err == nil:
		case transient(err):
			return ops[i:], err
		default:
			s.stats.dropped.Add(1)
			s.Logger.Error("store write dropped", append(ops[i].attrs(), "err", err)...)
			if s.werr == nil {
				s.werr = err
			}
		}
	}
	return nil, nil
}

// backoff records a failed attempt and waits before the next one. It
// returns false when the store is closing and CloseGrace has passed.
func (s *Store) backoff(err error, wait *time.Duration) bool {
	s.stats.writeFailures.Add(1)
	if s.fault.Load() == nil {
		s.fault.Store(&fault{err: err, since: time.Now()})
		s.Logger.Error("store cannot write: holding writes and retrying", "held", s.held.Load(), "err", err)
	}
	select {
	case <-s.quit:
		if s.giveUpAt.IsZero() {
			s.giveUpAt = time.Now().Add(s.CloseGrace)
		}
		if !time.Now().Before(s.giveUpAt) {
			return false
		}
		time.Sleep(min(*wait, time.Until(s.giveUpAt)))
	default:
		t := time.NewTimer(*wait)
		select {
		case <-t.C:
		case <-s.quit:
			t.Stop()
		}
	}
	*wait = min(2**wait, s.RetryMax)
	return true
}

// recovered clears the fault after a commit.
func (s *Store) recovered() {
	s.held.Store(0)
	if f := s.fault.Load(); f != nil {
		s.fault.Store(nil)
		s.Logger.Info("store writes again", "unavailable_for", time.Since(f.since).Round(time.Millisecond))
	}
}

// abandon gives ops up at Close.
func (s *Store) abandon(ops []batchOp, err error) {
	s.held.Store(0)
	s.stats.dropped.Add(int64(len(ops)))
	s.Logger.Error("store closed with writes it could not commit", "lost", len(ops), "err", err)
	if s.werr == nil {
		s.werr = err
	}
}
