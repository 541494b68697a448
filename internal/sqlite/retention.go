package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"time"
)

// Defaults of event log retention.
const (
	// DefaultPruneInterval is how often the pruner looks for old events.
	DefaultPruneInterval = time.Minute
	// DefaultPruneBatch is the most events one pruning transaction deletes:
	// small enough that the writer, which runs it between its batches,
	// holds the write lock for a few milliseconds only.
	DefaultPruneBatch = 1000
)

// Retention bounds the event log. The log is only ever pruned from its
// oldest end, in sequence order, so that what remains is always the events
// after a watermark: every event with seq <= PrunedThrough is gone and every
// later one is kept. Zero fields disable their bound.
type Retention struct {
	// MaxAge removes events older than this (by their time).
	MaxAge time.Duration
	// MaxRows keeps the events whose seq is among the last MaxRows numbers
	// given out: at most MaxRows rows.
	MaxRows int64
	// Interval is the time between pruning passes (DefaultPruneInterval).
	Interval time.Duration
	// Batch is the most events deleted per transaction (DefaultPruneBatch).
	Batch int
}

// Enabled reports whether r bounds the log at all.
func (r Retention) Enabled() bool { return r.MaxAge > 0 || r.MaxRows > 0 }

func (r Retention) withDefaults() Retention {
	if r.Interval <= 0 {
		r.Interval = DefaultPruneInterval
	}
	if r.Batch <= 0 {
		r.Batch = DefaultPruneBatch
	}
	return r
}

// prune runs pruning passes every r.Interval until ctx ends. It is the
// pruner goroutine, started by Open when Retention is enabled.
func (s *Store) prune(ctx context.Context, r Retention) {
	defer s.wg.Done()
	t := time.NewTicker(r.Interval)
	defer t.Stop()
	for {
		if n, err := s.PruneEvents(ctx, r, time.Now()); err != nil {
			if ctx.Err() != nil {
				return
			}
			s.Logger.Error("prune event log", "err", err)
		} else if n > 0 {
			s.Logger.Debug("pruned event log", "events", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// PruneEvents deletes the events that r does not keep as of now, oldest
// first, r.Batch (or DefaultPruneBatch) per transaction. Each transaction is
// one synchronous operation of the writer, so batched writes queued meanwhile
// commit between two of them. It returns how many events it deleted.
func (s *Store) PruneEvents(ctx context.Context, r Retention, now time.Time) (int64, error) {
	r = r.withDefaults()
	if !r.Enabled() {
		return 0, nil
	}
	var total int64
	for {
		var n int64
		err := s.doSync(ctx, func() error {
			var err error
			n, err = s.pruneBatch(ctx, r, now)
			return err
		})
		total += n
		if err != nil {
			return total, fmt.Errorf("prune events: %w", err)
		}
		if n < int64(r.Batch) {
			return total, nil
		}
	}
}

// pruneBatch deletes up to r.Batch of the oldest events that r does not keep
// and moves the watermark past them, in one transaction on the writer.
func (s *Store) pruneBatch(ctx context.Context, r Retention, now time.Time) (int64, error) {
	tx, err := s.writer.BeginTx(ctx, nil)
	if err != nil {
		return 0, err
	}
	defer rollback(tx) //nolint:errcheck // no-op after Commit
	// keepFrom is the lowest seq kept: the first event that is recent
	// enough, looked for among the oldest r.Batch only (so a pass costs
	// what it deletes, however long the log), and within the last MaxRows
	// numbers.
	var maxSeq int64
	if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(seq), 0) FROM events`).Scan(&maxSeq); err != nil {
		return 0, err
	}
	var keepFrom int64
	if r.MaxAge > 0 {
		var firstNew sql.NullInt64
		var lastOld int64
		err := tx.QueryRowContext(ctx, `SELECT MIN(CASE WHEN time >= ? THEN seq END), COALESCE(MAX(seq), 0)
			FROM (SELECT seq, time FROM events ORDER BY seq LIMIT ?)`,
			fmtTime(now.Add(-r.MaxAge)), r.Batch).Scan(&firstNew, &lastOld)
		if err != nil {
			return 0, err
		}
		keepFrom = lastOld + 1
		if firstNew.Valid {
			keepFrom = firstNew.Int64
		}
	}
	if r.MaxRows > 0 {
		keepFrom = max(keepFrom, maxSeq-r.MaxRows+1)
	}
	var last, n int64
	err = tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(seq), 0), COUNT(*) FROM
		(SELECT seq FROM events WHERE seq < ? ORDER BY seq LIMIT ?)`, keepFrom, r.Batch).Scan(&last, &n)
	if err != nil || n == 0 {
		return 0, err
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM events WHERE seq <= ?`, last); err != nil {
		return 0, err
	}
	if _, err := tx.ExecContext(ctx, `UPDATE event_log SET pruned_through = MAX(pruned_through, ?)`, last); err != nil {
		return 0, err
	}
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("commit: %w", err)
	}
	s.stats.transactions.Add(1)
	return n, nil
}

// PrunedThrough returns the event log's retention watermark: every event
// with seq <= it was deleted by retention, every later one is still stored
// (0: nothing was ever pruned).
func (s *Store) PrunedThrough(ctx context.Context) (int64, error) {
	db, err := s.db()
	if err != nil {
		return 0, err
	}
	var seq int64
	if err := db.QueryRowContext(ctx, `SELECT pruned_through FROM event_log`).Scan(&seq); err != nil {
		return 0, fmt.Errorf("event log watermark: %w", err)
	}
	return seq, nil
}
