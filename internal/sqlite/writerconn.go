package sqlite

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"

	"github.com/mattn/go-sqlite3"
)

// The writer's connection is go-sqlite3's, wrapped for two reasons.
//
// database/sql throws a connection away when a transaction's context ends
// before the transaction does (a CreateUpdate whose HTTP client went away),
// unless the driver says it can reset the session: go-sqlite3 does not, so
// the writer would open a new connection each time. A SQLite connection
// whose transaction was rolled back is as good as new, which writerConn
// says (ResetSession, IsValid).
//
// The batched statements are prepared on the driver connection itself
// (writestmt.go), where database/sql does not see them. If the connection
// is closed all the same (a driver error that database/sql takes for a
// broken connection), SQLite keeps it open as long as a statement is, and
// go-sqlite3 cannot finalize a statement once its connection is closed: the
// files and the page cache would stay. writerConn finalizes the statements
// it owns first.

// writerConnector opens writer connections for sql.OpenDB.
type writerConnector struct {
	dsn string
	drv *sqlite3.SQLiteDriver
	// noAutoCheckpoint turns the connection's automatic checkpoints off
	// (Store.NoAutoCheckpoint); go-sqlite3 has no DSN parameter for it.
	noAutoCheckpoint bool
}

func (c writerConnector) Connect(context.Context) (driver.Conn, error) {
	conn, err := c.drv.Open(c.dsn)
	if err != nil {
		return nil, err
	}
	sc, ok := conn.(*sqlite3.SQLiteConn)
	if !ok {
		return nil, errors.Join(fmt.Errorf("sqlite3 driver returned %T", conn), conn.Close())
	}
	if c.noAutoCheckpoint {
		if _, err := sc.Exec(`PRAGMA wal_autocheckpoint = 0`, nil); err != nil {
			return nil, errors.Join(fmt.Errorf("turn automatic checkpoints off: %w", err), conn.Close())
		}
	}
	return &writerConn{SQLiteConn: sc}, nil
}

func (c writerConnector) Driver() driver.Driver { return c.drv }

// writerConn is the writer's connection: go-sqlite3's, which it embeds for
// everything else. Like any driver.Conn, it is not used by two goroutines
// at once.
type writerConn struct {
	*sqlite3.SQLiteConn

	owned []driver.Stmt // statements finalized before the connection closes
}

// ResetSession is called before the connection is used again; there is
// nothing to reset (database/sql.SessionResetter).
func (c *writerConn) ResetSession(context.Context) error { return nil }

// IsValid reports whether the connection may be used again
// (database/sql.Validator): after a transaction ended by its context it may,
// once the transaction is rolled back. One still in a transaction (an I/O
// error that a rollback could not end) is not: every BEGIN on it would
// fail.
func (c *writerConn) IsValid() bool { return c.AutoCommit() }

// own makes st finalized when the connection closes, if it is not by then.
func (c *writerConn) own(st driver.Stmt) { c.owned = append(c.owned, st) }

// Close finalizes the statements the connection owns, then closes it.
func (c *writerConn) Close() error {
	var errs []error
	for _, st := range c.owned {
		errs = append(errs, st.Close()) // nil for one closed already
	}
	c.owned = nil
	return errors.Join(append(errs, c.SQLiteConn.Close())...)
}
