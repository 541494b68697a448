package sqlite

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"time"
)

// The batched statements run at the driver level, on the writer's
// connection that database/sql hands out through sql.Conn.Raw, with one
// argument slice per statement that every execution overwrites. Through
// database/sql, each execution allocated its []any and []driver.NamedValue,
// a result wrapper and a connection grab: most of what the writer allocated
// per row (BenchmarkStore_StateChanges, BenchmarkStore_WriteAllocs). The
// values bound are of the types database/sql converted them to (string,
// int64, bool, nil), so the stored bytes are the same.
//
// A statement is run as a query whose rows are read to the end, which
// executes it as Exec does. go-sqlite3 binds a query's arguments and takes
// its first step in one cgo call, where Exec makes one call per argument:
// with ten or eleven arguments a row, that saves about a tenth of the
// writer's CPU time (BenchmarkStore_StateChanges).

// writeStmts are the batched statements, prepared on the writer's driver
// connection, which owns them: it finalizes them when it closes
// (writerconn.go). They are used by the writer goroutine only.
type writeStmts struct {
	conn  *writerConn // the connection the statements are prepared on
	times timeText    // shared by the statements' setTime

	upsertDevice, setOnline, upsertProgress, insertEvent, setUpdateState, saveCounters writeStmt
}

// list returns the statements with their texts.
func (ws *writeStmts) list() []struct {
	st  *writeStmt
	sql string
} {
	return []struct {
		st  *writeStmt
		sql string
	}{
		{&ws.upsertDevice, sqlUpsertDevice},
		{&ws.setOnline, sqlSetOnline},
		{&ws.upsertProgress, sqlUpsertProgress},
		{&ws.insertEvent, sqlInsertEvent},
		{&ws.setUpdateState, sqlSetUpdateState},
		{&ws.saveCounters, sqlSaveCounters},
	}
}

// prepareWriteStmts prepares the batched statements on db's connection.
func prepareWriteStmts(db *sql.DB) (*writeStmts, error) {
	ws := &writeStmts{}
	if err := ws.raw(db, ws.prepare); err != nil {
		return nil, fmt.Errorf("prepare: %w", err)
	}
	return ws, nil
}

// raw runs f with db's driver connection. db has one connection, so
// nothing else runs on it meanwhile.
func (ws *writeStmts) raw(db *sql.DB, f func(ctx context.Context, dc any) error) error {
	ctx := context.Background()
	conn, err := db.Conn(ctx)
	if err != nil {
		return err
	}
	err = conn.Raw(func(dc any) error { return f(ctx, dc) })
	return errors.Join(err, conn.Close())
}

// prepare prepares every statement on dc, which owns them, those prepared
// before an error too. dc becomes ws.conn once all are prepared, so that
// after an error the next batch prepares them again.
func (ws *writeStmts) prepare(ctx context.Context, dc any) error {
	conn, ok := dc.(*writerConn)
	if !ok {
		return fmt.Errorf("driver connection %T is not the writer's", dc)
	}
	for _, p := range ws.list() {
		st, err := conn.PrepareContext(ctx, p.sql)
		if err != nil {
			return err
		}
		conn.own(st)
		q, ok := st.(queryStmt)
		if !ok {
			return fmt.Errorf("driver statement %T cannot query with a context", st)
		}
		p.st.st = q
		p.st.times = &ws.times
		p.st.args = make([]driver.NamedValue, st.NumInput())
		for i := range p.st.args {
			p.st.args[i].Ordinal = i + 1
		}
	}
	ws.conn = conn
	return nil
}

// execTx runs ops in one transaction on db's connection.
func (ws *writeStmts) execTx(db *sql.DB, ops []batchOp) error {
	return ws.raw(db, func(ctx context.Context, dc any) error {
		if dc != any(ws.conn) {
			// database/sql replaced the connection the statements were
			// prepared on, which it does only after the driver reported
			// it broken; they went with it (writerConn.Close). Or the
			// last prepare failed.
			*ws = writeStmts{}
			if err := ws.prepare(ctx, dc); err != nil {
				return fmt.Errorf("prepare: %w", err)
			}
		}
		tx, err := ws.conn.BeginTx(ctx, driver.TxOptions{})
		if err != nil {
			return fmt.Errorf("begin: %w", err)
		}
		for _, o := range ops {
			if err := o.exec(ctx, ws); err != nil {
				if rerr := tx.Rollback(); rerr != nil {
					err = errors.Join(err, fmt.Errorf("rollback: %w", rerr))
				}
				return err
			}
		}
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("commit: %w", err)
		}
		return nil
	})
}

// writeStmt is one batched statement and its arguments. The setters take
// the types database/sql would have converted the values to.
type writeStmt struct {
	st    queryStmt
	args  []driver.NamedValue
	times *timeText
}

// queryStmt is a driver statement that queries with a context.
type queryStmt interface {
	driver.Stmt
	driver.StmtQueryContext
}

// setText sets the i-th argument (from 0) to v. A value equal to the one
// already set is kept: putting a string or an integer in an interface
// allocates, and consecutive rows often repeat the update ID, the type or
// the state.
func (w *writeStmt) setText(i int, v string) {
	if old, ok := w.args[i].Value.(string); ok && old == v {
		return
	}
	w.args[i].Value = v
}

// setInt sets the i-th argument to v, keeping an equal value (setText).
func (w *writeStmt) setInt(i int, v int64) {
	if old, ok := w.args[i].Value.(int64); ok && old == v {
		return
	}
	w.args[i].Value = v
}

// setBool sets the i-th argument to v.
func (w *writeStmt) setBool(i int, v bool) { w.args[i].Value = v }

// setNull sets the i-th argument to SQL NULL.
func (w *writeStmt) setNull(i int) { w.args[i].Value = nil }

// setTime sets the i-th argument to t as stored (fmtTime).
func (w *writeStmt) setTime(i int, t time.Time) { w.args[i].Value = w.times.value(t) }

// setTimeOrNull sets the i-th argument to t, or to NULL when t is nil or
// zero (fmtTimePtr).
func (w *writeStmt) setTimeOrNull(i int, t *time.Time) {
	if t == nil || t.IsZero() {
		w.setNull(i)
		return
	}
	w.setTime(i, *t)
}

// exec executes the statement with the arguments set, as a query whose
// rows it reads to the end (there are none).
func (w *writeStmt) exec(ctx context.Context) error {
	rows, err := w.st.QueryContext(ctx, w.args)
	if err != nil {
		return err
	}
	err = rows.Next(nil)
	switch {
	case err == io.EOF:
		err = nil
	case err == nil:
		err = errors.New("write statement returned a row")
	}
	return errors.Join(err, rows.Close())
}

// timeText remembers the last time a statement set, formatted as stored: a
// state change stores the same time in the progress row and in its event
// (Engine.setState), which is then formatted, and put in an interface,
// once.
type timeText struct {
	t time.Time
	v driver.Value // fmtTime(t); nil until the first value
}

// value returns t formatted as stored. It compares times with ==, which
// never takes two different times for one (Equal could, comparing only
// their monotonic clock readings when both have one).
func (c *timeText) value(t time.Time) driver.Value {
	if c.v == nil || t != c.t {
		c.t, c.v = t, fmtTime(t)
	}
	return c.v
}
