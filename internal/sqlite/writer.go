package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flotaio/flota/internal/fleet"
)

// writeOp is one entry of the write queue. Batched operations implement
// batchOp; synchronous ones are *syncOp.
type writeOp interface{ isWriteOp() }

// batchOp is an asynchronous write, committed with others in one transaction.
type batchOp interface {
	writeOp
	exec(ctx context.Context, ws *writeStmts) error
	// attrs describe the operation in a log line when it fails.
	attrs() []any
}

// syncOp runs alone on the writer goroutine, after the pending batch is
// committed, and replies with its result.
//
// claim settles the race between the writer starting the op and the caller
// giving up: whoever moves it from syncPending first wins. An op the caller
// abandoned is never run; an op the writer claimed always has its result
// received, so Flush never clears an error nobody reads.
type syncOp struct {
	run   func() error
	reply chan error // buffered: the writer never blocks on it
	claim atomic.Int32
}

// States of syncOp.claim.
const (
	syncPending int32 = iota
	syncStarted
	syncAbandoned
)

func (*syncOp) isWriteOp() {}

// Statement texts of the batched operations.
const (
	sqlUpsertDevice = `INSERT INTO devices (id, model, version, tags, first_seen, last_seen, online, image, caps)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT(id) DO UPDATE SET model = excluded.model, version = excluded.version,
			tags = excluded.tags, last_seen = excluded.last_seen, online = excluded.online,
			image = excluded.image, caps = excluded.caps`
	sqlSetOnline = `UPDATE devices SET online = ?, last_seen = ? WHERE id = ?`

	sqlUpsertProgress = `INSERT INTO progress (update_id, device_id, state, offset, attempts, reason, handle,
			started_at, finished_at, updated_at, encoding, payload_size, wire_bytes)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT(update_id, device_id) DO UPDATE SET state = excluded.state, offset = excluded.offset,
			attempts = excluded.attempts, reason = excluded.reason, handle = excluded.handle,
			started_at = excluded.started_at, finished_at = excluded.finished_at,
			updated_at = excluded.updated_at, encoding = excluded.encoding,
			payload_size = excluded.payload_size, wire_bytes = excluded.wire_bytes`
	sqlInsertEvent = `INSERT INTO events (seq, time, type, update_id, device_id, from_state, state, reason,
			offset, attempt, phase)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`
	// Parameters: state, started_at candidate (NULL unless entering running),
	// finished_at candidate (NULL unless terminal), id.
	sqlSetUpdateState = `UPDATE updates SET state = ?1,
			started_at = COALESCE(started_at, ?2),
			finished_at = COALESCE(finished_at, ?3)
		WHERE id = ?4`
	sqlSaveCounters = `UPDATE updates SET bytes_sent = ?, bytes_acked = ?, resends = ? WHERE id = ?`
	sqlInsertUpdate = `INSERT INTO updates (id, firmware_id, selector, policy, state, created_at,
			started_at, finished_at, created_by)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`
	sqlInsertFirmware = `INSERT INTO firmware (id, name, version, model, size, sha256, created_at, signature, allow_downgrade)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`
)

// run is the writer goroutine: it owns s.writer, s.stmts and s.werr.
func (s *Store) run() {
	defer s.wg.Done()
	batch := make([]batchOp, 0, s.BatchSize)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	armed := false
	flush := func() {
		if armed {
			timer.Stop()
			armed = false
		}
		if len(batch) == 0 {
			return
		}
		s.commitBatch(batch)
		for _, o := range batch {
			release(o)
		}
		clear(batch)
		batch = batch[:0]
	}
	for {
		select {
		case o, ok := <-s.ops:
			if !ok {
				flush()
				return
			}
			switch o := o.(type) {
			case *syncOp:
				flush()
				if o.claim.CompareAndSwap(syncPending, syncStarted) {
					o.reply <- o.run()
				}
			case batchOp:
				batch = append(batch, o)
				if len(batch) >= s.BatchSize {
					flush()
				} else if !armed {
					timer.Reset(s.FlushInterval)
					armed = true
				}
			}
		case <-timer.C:
			armed = false
			flush()
		}
	}
}

// progressKey identifies a progress row.
type progressKey struct{ update, device string }

// batchPlan chooses the operations of a batch that its transaction executes:
// a progress save is skipped when a later save of the same row follows it
// in the batch with no barrier between them. The batch commits atomically,
// so only the row's last value is ever visible after the commit, and the
// saves before it were work that nothing could read. A device that passes
// through several states within one FlushInterval costs one upsert instead
// of one per state (BenchmarkStore_StateChanges).
//
// Every operation is a barrier unless it is listed below as one that
// neither reads nor writes progress rows: a barrier finds the rows as the
// operations before it, executed one by one, would have left them.
// Events, devices and presence are such operations: their tables have no
// trigger and no foreign key to or from progress. A save queued with its
// event (SaveProgressEvent) is a save and an event: its save is skipped as
// any other, its event always inserted. Updating an update's
// state or counters, and any operation added later, are barriers. Skipping
// a save loses no error either: the upsert replaces every column but the
// key, and the only constraint that can refuse it, the foreign key on
// update_id, judges every save of one row alike.
//
// A batchPlan is owned by the writer goroutine; its map and slice are
// reused from batch to batch.
type batchPlan struct {
	later map[progressKey]struct{} // rows saved later in the batch, before the next barrier
	ops   []batchOp
}

// plan returns the operations of batch to execute, in batch order, and how
// many of them are progress upserts. The result is valid until reset.
func (p *batchPlan) plan(batch []batchOp) (ops []batchOp, upserts int) {
	if p.later == nil {
		p.later = make(map[progressKey]struct{})
	}
	for i := len(batch) - 1; i >= 0; i-- {
		switch o := batch[i].(type) {
		case *saveProgressOp:
			k := progressKey{o.p.UpdateID, o.p.DeviceID}
			if _, ok := p.later[k]; ok {
				continue
			}
			p.later[k] = struct{}{}
			upserts++
		case *progressEventOp:
			// Both parts, reversed below; the save skipped as above.
			p.ops = append(p.ops, &o.ev)
			k := progressKey{o.prog.p.UpdateID, o.prog.p.DeviceID}
			if _, ok := p.later[k]; !ok {
				p.later[k] = struct{}{}
				upserts++
				p.ops = append(p.ops, &o.prog)
			}
			continue
		case *appendEventOp, *saveDeviceOp, *setOnlineOp:
			// independent of progress rows: saves move across them
		default:
			clear(p.later)
		}
		p.ops = append(p.ops, batch[i])
	}
	clear(p.later)
	slices.Reverse(p.ops)
	return p.ops, upserts
}

// reset drops the plan's references to the last batch's operations.
func (p *batchPlan) reset() {
	clear(p.ops)
	p.ops = p.ops[:0]
}

func rollback(tx *sql.Tx) error {
	if err := tx.Rollback(); err != nil && !errors.Is(err, sql.ErrTxDone) {
		return fmt.Errorf("rollback: %w", err)
	}
	return nil
}

// doSync queues run behind every earlier write and waits for its result.
// When ctx ends before the writer starts run, run is skipped and ctx's error
// returned; once started, run's own result is returned (run should honour
// ctx itself).
func (s *Store) doSync(ctx context.Context, run func() error) error {
	o := &syncOp{run: run, reply: make(chan error, 1)}
	if err := s.enqueue(ctx, o); err != nil {
		return err
	}
	select {
	case err := <-o.reply:
		return unavailableErr(err)
	case <-ctx.Done():
		if o.claim.CompareAndSwap(syncPending, syncAbandoned) {
			if err := s.Unavailable(); err != nil {
				return fmt.Errorf("%w: %w", ctx.Err(), err)
			}
			return ctx.Err()
		}
		return unavailableErr(<-o.reply)
	}
}

// Flush returns when every write queued before it is committed. It returns
// the first write error since the previous Flush (the failed operation was
// dropped and logged), or ctx's error.
func (s *Store) Flush(ctx context.Context) error {
	return s.doSync(ctx, func() error {
		err := s.werr
		s.werr = nil
		if err != nil {
			return fmt.Errorf("store write: %w", err)
		}
		return nil
	})
}

// --- asynchronous writes ---

// progressOps and eventOps recycle the operations of SaveProgress and
// AppendEvent, queued at every state change of every device: the writer
// goroutine releases them once their batch is done.
var (
	progressOps = sync.Pool{New: func() any { return new(saveProgressOp) }}
	eventOps    = sync.Pool{New: func() any { return new(appendEventOp) }}
)

// release returns o to its pool, if it has one. Nothing may use o after:
// the writer calls it when o's batch is committed or o was dropped.
func release(o batchOp) {
	switch o := o.(type) {
	case *saveProgressOp:
		*o = saveProgressOp{}
		progressOps.Put(o)
	case *appendEventOp:
		*o = appendEventOp{}
		eventOps.Put(o)
	case *progressEventOp:
		*o = progressEventOp{}
		progressEventOps.Put(o)
	}
}

// enqueuePooled queues o, taken from its pool, and releases it when it
// is not queued.
func (s *Store) enqueuePooled(o batchOp) error {
	if err := s.enqueue(context.Background(), o); err != nil {
		release(o)
		return err
	}
	return nil
}

type saveDeviceOp struct{ d fleet.Device }

func (*saveDeviceOp) isWriteOp() {}
func (o *saveDeviceOp) attrs() []any {
	return []any{"op", "save_device", "device", o.d.ID}
}
func (o *saveDeviceOp) exec(ctx context.Context, ws *writeStmts) error {
	d := &o.d
	tags, err := marshalTags(d.Tags)
	if err != nil {
		return err
	}
	last := d.LastSeen
	if last.IsZero() {
		last = time.Now()
	}
	first := d.FirstSeen
	if first.IsZero() {
		first = last
	}
	st := &ws.upsertDevice
	st.setText(0, d.ID)
	st.setText(1, d.Model)
	st.setText(2, d.Version)
	st.setText(3, tags)
	st.setTime(4, first)
	st.setTime(5, last)
	st.setBool(6, d.Online)
	st.setText(7, d.Image)
	st.setText(8, strings.Join(d.Caps, ","))
	if err := st.exec(ctx); err != nil {
		return fmt.Errorf("save device %s: %w", d.ID, err)
	}
	return nil
}

// SaveDevice queues an insert or update of d. An existing row keeps its
// first_seen; a zero LastSeen means now.
func (s *Store) SaveDevice(d fleet.Device) error {
	if d.ID == "" {
		return fleet.Errorf(fleet.ErrInvalidInput, "device without ID")
	}
	return s.enqueue(context.Background(), &saveDeviceOp{d: d})
}

type setOnlineOp struct {
	id     string
	online bool
	at     time.Time
}

func (*setOnlineOp) isWriteOp() {}
func (o *setOnlineOp) attrs() []any {
	return []any{"op", "set_device_online", "device", o.id, "online", o.online}
}
func (o *setOnlineOp) exec(ctx context.Context, ws *writeStmts) error {
	st := &ws.setOnline
	st.setBool(0, o.online)
	st.setTime(1, o.at)
	st.setText(2, o.id)
	if err := st.exec(ctx); err != nil {
		return fmt.Errorf("set device %s online: %w", o.id, err)
	}
	return nil
}

// SetDeviceOnline queues a change of a registered device's presence and sets
// its last_seen to at. An unknown device is left alone: devices are
// registered by SaveDevice.
func (s *Store) SetDeviceOnline(id string, online bool, at time.Time) error {
	if at.IsZero() {
		at = time.Now()
	}
	return s.enqueue(context.Background(), &setOnlineOp{id: id, online: online, at: at})
}

type saveProgressOp struct {
	p      fleet.Progress
	handle uint32
}

func (*saveProgressOp) isWriteOp() {}
func (o *saveProgressOp) attrs() []any {
	return []any{"op", "save_progress", "update", o.p.UpdateID, "device", o.p.DeviceID, "state", o.p.State}
}
func (o *saveProgressOp) exec(ctx context.Context, ws *writeStmts) error {
	p := &o.p
	updated := p.UpdatedAt
	if updated.IsZero() {
		updated = time.Now()
	}
	st := &ws.upsertProgress
	st.setText(0, p.UpdateID)
	st.setText(1, p.DeviceID)
	st.setText(2, string(p.State))
	st.setInt(3, p.Offset)
	st.setInt(4, int64(p.Attempts))
	st.setText(5, string(p.Reason))
	st.setInt(6, int64(o.handle))
	st.setTimeOrNull(7, p.StartedAt)
	st.setTimeOrNull(8, p.FinishedAt)
	st.setTime(9, updated)
	st.setText(10, p.Encoding)
	st.setInt(11, p.PayloadSize)
	st.setInt(12, p.WireBytes)
	if err := st.exec(ctx); err != nil {
		return fmt.Errorf("save progress %s/%s: %w", p.UpdateID, p.DeviceID, err)
	}
	return nil
}

// SaveProgress queues an insert or update of one device's progress row, with
// the transfer handle the engine needs to resume after a restart.
func (s *Store) SaveProgress(p fleet.Progress, handle uint32) error {
	o := progressOps.Get().(*saveProgressOp)
	o.p, o.handle = p, handle
	return s.enqueuePooled(o)
}

type appendEventOp struct{ e fleet.Event }

func (*appendEventOp) isWriteOp() {}
func (o *appendEventOp) attrs() []any {
	return []any{"op", "append_event", "seq", o.e.Seq, "type", o.e.Type}
}
func (o *appendEventOp) exec(ctx context.Context, ws *writeStmts) error {
	e := &o.e
	st := &ws.insertEvent
	st.setInt(0, e.Seq)
	st.setTime(1, e.Time)
	st.setText(2, e.Type)
	st.setText(3, e.UpdateID)
	st.setText(4, e.DeviceID)
	st.setText(5, e.From)
	st.setText(6, e.State)
	st.setText(7, string(e.Reason))
	st.setInt(8, e.Offset)
	st.setInt(9, int64(e.Attempt))
	st.setInt(10, int64(e.Phase))
	if err := st.exec(ctx); err != nil {
		return fmt.Errorf("append event %d: %w", e.Seq, err)
	}
	return nil
}

// OnEventsCommitted sets fn to be called, on the writer goroutine, with the
// events of every committed transaction, in sequence order. Whoever
// publishes events from it publishes only what the log holds, so a monitor
// that catches up from the log after a crash misses nothing and sees nothing
// twice. fn must return quickly, and must not keep the slice: the writer
// reuses it. A nil fn stops the calls.
func (s *Store) OnEventsCommitted(fn func([]fleet.Event)) {
	if fn == nil {
		s.eventsCommitted.Store(nil)
		return
	}
	s.eventsCommitted.Store(&fn)
}

func (s *Store) notifyEvents(ops []batchOp) {
	fn := s.eventsCommitted.Load()
	if fn == nil {
		return
	}
	evs := s.committed[:0]
	for _, o := range ops {
		switch o := o.(type) {
		case *appendEventOp:
			evs = append(evs, o.e)
		case *progressEventOp:
			evs = append(evs, o.ev.e)
		}
	}
	if len(evs) > 0 {
		(*fn)(evs)
	}
	clear(evs) // drops the events' strings until the next commit
	s.committed = evs
}

// AppendEvent queues e for the event log. e.Seq is the caller's, and must
// grow; a duplicate is dropped and reported by the next Flush. A zero Time
// means now.
func (s *Store) AppendEvent(e fleet.Event) error {
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	o := eventOps.Get().(*appendEventOp)
	o.e = e
	return s.enqueuePooled(o)
}

type setUpdateStateOp struct {
	id    string
	state fleet.UpdateState
	at    time.Time
}

func (*setUpdateStateOp) isWriteOp() {}
func (o *setUpdateStateOp) attrs() []any {
	return []any{"op", "set_update_state", "update", o.id, "state", o.state}
}
func (o *setUpdateStateOp) exec(ctx context.Context, ws *writeStmts) error {
	st := &ws.setUpdateState
	st.setText(0, string(o.state))
	if o.state == fleet.UpdateRunning {
		st.setTime(1, o.at)
	} else {
		st.setNull(1)
	}
	if o.state.Terminal() {
		st.setTime(2, o.at)
	} else {
		st.setNull(2)
	}
	st.setText(3, o.id)
	if err := st.exec(ctx); err != nil {
		return fmt.Errorf("set update %s state: %w", o.id, err)
	}
	return nil
}

// SetUpdateState queues a change of an update's state. Entering running sets
// started_at if it is not set yet; a terminal state sets finished_at.
func (s *Store) SetUpdateState(id string, state fleet.UpdateState, at time.Time) error {
	if at.IsZero() {
		at = time.Now()
	}
	return s.enqueue(context.Background(), &setUpdateStateOp{id: id, state: state, at: at})
}

// Counters are an update's transfer totals.
type Counters struct {
	BytesSent  int64 `json:"bytes_sent"`
	BytesAcked int64 `json:"bytes_acked"`
	Resends    int64 `json:"resends"`
}

type saveCountersOp struct {
	id string
	c  Counters
}

func (*saveCountersOp) isWriteOp() {}
func (o *saveCountersOp) attrs() []any {
	return []any{"op", "save_update_counters", "update", o.id}
}
func (o *saveCountersOp) exec(ctx context.Context, ws *writeStmts) error {
	st := &ws.saveCounters
	st.setInt(0, o.c.BytesSent)
	st.setInt(1, o.c.BytesAcked)
	st.setInt(2, o.c.Resends)
	st.setText(3, o.id)
	if err := st.exec(ctx); err != nil {
		return fmt.Errorf("save update %s counters: %w", o.id, err)
	}
	return nil
}

// SaveUpdateCounters queues an update's transfer totals.
func (s *Store) SaveUpdateCounters(id string, c Counters) error {
	return s.enqueue(context.Background(), &saveCountersOp{id: id, c: c})
}

// --- synchronous writes ---

// CreateUpdate stores u and one progress row per target in one transaction,
// after every write queued before it. A zero CreatedAt means now; a target's
// zero UpdatedAt means u.CreatedAt. It returns fleet.ErrFirmwareNotFound when
// u.FirmwareID is unknown. When ctx ends before the commit, nothing is
// stored and an error is returned.
func (s *Store) CreateUpdate(ctx context.Context, u fleet.Update, targets []fleet.Progress) error {
	if u.ID == "" || u.FirmwareID == "" {
		return fleet.Errorf(fleet.ErrInvalidInput, "update needs an ID and a firmware")
	}
	if u.CreatedAt.IsZero() {
		u.CreatedAt = time.Now()
	}
	sel, err := json.Marshal(u.Selector)
	if err != nil {
		return fmt.Errorf("create update: %w", err)
	}
	pol, err := json.Marshal(u.Policy)
	if err != nil {
		return fmt.Errorf("create update: %w", err)
	}
	err = s.doSync(ctx, func() error {
		tx, err := s.writer.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		defer rollback(tx) //nolint:errcheck // no-op after Commit
		var one int
		if err := tx.QueryRowContext(ctx, `SELECT 1 FROM firmware WHERE id = ?`, u.FirmwareID).Scan(&one); err != nil {
			return notFound(err, fleet.ErrFirmwareNotFound, u.FirmwareID)
		}
		if _, err := tx.ExecContext(ctx, sqlInsertUpdate, u.ID, u.FirmwareID, string(sel), string(pol),
			string(u.State), fmtTime(u.CreatedAt), fmtTimePtr(u.StartedAt), fmtTimePtr(u.FinishedAt), u.CreatedBy); err != nil {
			return err
		}
		if err := insertTargets(ctx, tx, u, targets); err != nil {
			return err
		}
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("commit: %w", err)
		}
		s.stats.transactions.Add(1)
		s.stats.rows.Add(int64(1 + len(targets)))
		return nil
	})
	if err != nil {
		return fmt.Errorf("create update %s: %w", u.ID, err)
	}
	return nil
}

func marshalTags(tags map[string]string) (string, error) {
	if len(tags) == 0 {
		return "{}", nil
	}
	b, err := json.Marshal(tags)
	if err != nil {
		return "", fmt.Errorf("marshal tags: %w", err)
	}
	return string(b), nil
}
