package sqlite

import (
	"context"
	"sync"
	"time"

	"github.com/flotaio/flota/internal/fleet"
)

// progressEventOp is a change of a device's state: its progress row and
// the event that records the change, committed in one transaction. Queued
// as two operations, a batch could end between them, and a crash (or a
// full disk, then a kill) after the first commit left a row in a state
// that no event records: the engine reads the row back as the device's
// state, and the device's confirmation of a state it is already in records
// nothing, so the event would be missing for good.
//
// batchPlan may skip the progress save, as any other, when a later save of
// the same row follows; the event is always inserted.
type progressEventOp struct {
	prog saveProgressOp
	ev   appendEventOp
}

var progressEventOps = sync.Pool{New: func() any { return new(progressEventOp) }}

func (*progressEventOp) isWriteOp() {}
func (o *progressEventOp) attrs() []any {
	return append(o.prog.attrs(), "seq", o.ev.e.Seq)
}
func (o *progressEventOp) exec(ctx context.Context, ws *writeStmts) error {
	if err := o.prog.exec(ctx, ws); err != nil {
		return err
	}
	return o.ev.exec(ctx, ws)
}

// SaveProgressEvent queues SaveProgress(p, handle) and AppendEvent(e) as
// one operation: both commit, or neither does.
func (s *Store) SaveProgressEvent(p fleet.Progress, handle uint32, e fleet.Event) error {
	o := progressEventOps.Get().(*progressEventOp)
	o.prog.p, o.prog.handle = p, handle
	o.ev.e = e
	if o.ev.e.Time.IsZero() {
		o.ev.e.Time = time.Now()
	}
	return s.enqueuePooled(o)
}

// rowsOf counts the rows ops write (Stats.Rows): one per operation, two
// for a save with its event.
func rowsOf(ops []batchOp) int64 {
	n := int64(len(ops))
	for _, o := range ops {
		if _, ok := o.(*progressEventOp); ok {
			n++
		}
	}
	return n
}
