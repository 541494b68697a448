// Package sqlite is flota's store: devices, firmware, updates, per-device
// progress and the event log, kept in one SQLite file (DataDir/flota.db) that
// the sqlite3 CLI can inspect, with firmware images stored once each under
// DataDir/firmware/<sha256>.
//
// Every write goes through one writer goroutine that owns the only writing
// connection. Asynchronous writes (SaveDevice, SaveProgress, AppendEvent, ...)
// are queued on a bounded channel and committed in batches: one transaction
// per BatchSize operations or per FlushInterval, whichever comes first; a
// progress row saved several times in one batch is written once, with its
// last value (batchPlan). A full queue blocks the caller (back-pressure).
// Synchronous writes (Flush, AddFirmware, CreateUpdate) travel through the
// same queue, so they are ordered after every write queued before them, and
// reply after their commit.
// Reads use a separate pool of read-only connections; WAL lets them run while
// the writer commits.
//
// Times are stored as fixed-width RFC 3339 text in UTC (nanoseconds), which
// sorts as text and reads well in the sqlite3 CLI.
package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mattn/go-sqlite3" // registers the "sqlite3" driver (the reader's); writerconn.go

	"github.com/flotaio/flota/internal/fleet"
)

// Defaults of a Store's configuration.
const (
	DefaultFlushInterval = 50 * time.Millisecond
	DefaultBatchSize     = 1000
	DefaultQueueSize     = 8192
)

// File names under DataDir.
const (
	DBFile      = "flota.db"
	FirmwareDir = "firmware"
)

// writerPragmas are the connection settings of the writing connection. They
// must be in the DSN: a PRAGMA executed through database/sql reaches one
// pooled connection only.
const writerPragmas = "_journal_mode=WAL&_synchronous=NORMAL&_busy_timeout=5000&_txlock=immediate&_foreign_keys=on"

// readerPragmas are the settings of the read pool: read-only connections whose
// transactions take no write lock.
const readerPragmas = "_journal_mode=WAL&_synchronous=NORMAL&_busy_timeout=5000&_txlock=deferred&_foreign_keys=on&_query_only=1"

// Lifecycle states of a Store.
const (
	stateNew = iota
	stateOpen
	stateClosed
)

// Store is flota's SQLite store. Fill the exported fields (New sets the
// defaults), then call Open; Close flushes and releases everything.
type Store struct {
	DataDir       string        // directory of flota.db and firmware/
	FlushInterval time.Duration // longest time a queued write waits for its commit
	BatchSize     int           // most queued writes committed in one transaction
	QueueSize     int           // capacity of the write queue; a full queue blocks writers
	Retention     Retention     // bounds of the event log; zero keeps every event
	Logger        *slog.Logger
	// RetryMin and RetryMax bound the wait between two attempts at a
	// batch that failed on a disk fault (fault.go); CloseGrace is how long
	// Close keeps retrying before it gives the held writes up.
	RetryMin, RetryMax, CloseGrace time.Duration
	// NewDatabase lets Open start an empty database where an earlier run
	// left state but no database (startup.go); SkipIntegrityCheck skips
	// the quick_check of the database at Open.
	NewDatabase, SkipIntegrityCheck bool
	// NoAutoCheckpoint leaves WAL checkpoints to another process:
	// Litestream, which replicates the WAL and must checkpoint it itself
	// (standby.go). FirmwareReplica, when set, is a second directory
	// that every firmware image is written to before its row commits,
	// and that Open fetches missing images from (standby.go).
	NoAutoCheckpoint bool
	FirmwareReplica  string

	// mu guards state and missing, and is read-held while sending on ops so that Close
	// (which write-holds it) never closes ops under a sender.
	mu      sync.RWMutex
	state   int
	missing []MissingFirmware // images found missing by Open (standby.go)

	ops    chan writeOp   // the write queue, read by the writer goroutine only
	writer *sql.DB        // one connection, used by the writer goroutine only
	reader *sql.DB        // read-only pool
	stmts  *writeStmts    // statements prepared on writer's connection, which finalizes them
	wg     sync.WaitGroup // the writer and the pruner goroutines

	stopPrune context.CancelFunc // ends the pruner; set by Open

	// quit is closed when Close begins: writers blocked on a full queue
	// give up, and the writer stops retrying after CloseGrace.
	quit chan struct{}
	// fault is set while the writer holds a batch it cannot commit
	// (Unavailable); held is the number of operations in it.
	fault atomic.Pointer[fault]
	held  atomic.Int64
	// giveUpAt is when the closing writer stops retrying; owned by the
	// writer goroutine.
	giveUpAt time.Time

	// werr is the first write error not yet reported by Flush; owned by the
	// writer goroutine, read by Close after the goroutine ended.
	werr error
	// plan chooses the statements of each batch; owned by the writer
	// goroutine.
	plan batchPlan
	// committed holds the events handed to OnEventsCommitted's fn, reused
	// from one commit to the next; owned by the writer goroutine.
	committed []fleet.Event

	closeOnce sync.Once
	closeErr  error

	// eventsCommitted is called by the writer after each commit with the
	// events it stored (see OnEventsCommitted).
	eventsCommitted atomic.Pointer[func([]fleet.Event)]
	// firmwareAdded is called after a new firmware's row commits (see
	// OnFirmwareAdded).
	firmwareAdded atomic.Pointer[func(fleet.Firmware)]

	stats struct {
		transactions   atomic.Int64
		rows           atomic.Int64
		progressWrites atomic.Int64
		lastBatch      atomic.Int64
		dropped        atomic.Int64
		writeFailures  atomic.Int64
		commitNanos    atomic.Int64
	}

	// afterBlob, when set (by tests), runs between an upload's image copy
	// and its row.
	afterBlob func()
}

// New returns a Store for dataDir with the default configuration.
func New(dataDir string) *Store {
	return &Store{
		DataDir:       dataDir,
		FlushInterval: DefaultFlushInterval,
		BatchSize:     DefaultBatchSize,
		QueueSize:     DefaultQueueSize,
		Logger:        slog.Default(),
		RetryMin:      DefaultRetryMin,
		RetryMax:      DefaultRetryMax,
		CloseGrace:    DefaultCloseGrace,
	}
}

// Stats are counters of the writer since Open.
type Stats struct {
	Transactions int64 `json:"transactions"` // committed transactions
	Rows         int64 `json:"rows"`         // write operations committed
	LastBatch    int   `json:"last_batch"`   // operations in the last committed batch
	Dropped      int64 `json:"dropped"`      // operations that failed on their own and were dropped (logged)
	// WriteFailures counts the transactions that failed on a disk fault
	// and were retried (fault.go).
	WriteFailures int64 `json:"write_failures"`
	// HeldWrites is the number of operations of the batch the writer
	// retries now: zero while the store writes.
	HeldWrites int64 `json:"held_writes"`
	// ProgressWrites counts the progress upserts that committed batches
	// executed for SaveProgress: fewer than the SaveProgress calls when a
	// batch held several saves of one device's row, of which only the last
	// is written.
	ProgressWrites int64 `json:"progress_writes"`
	// CommitSeconds is the time spent executing and committing batches.
	CommitSeconds float64 `json:"commit_seconds"`
}

// Stats returns the writer's counters.
func (s *Store) Stats() Stats {
	return Stats{
		Transactions:   s.stats.transactions.Load(),
		Rows:           s.stats.rows.Load(),
		ProgressWrites: s.stats.progressWrites.Load(),
		LastBatch:      int(s.stats.lastBatch.Load()),
		Dropped:        s.stats.dropped.Load(),
		WriteFailures:  s.stats.writeFailures.Load(),
		HeldWrites:     s.held.Load(),
		CommitSeconds:  time.Duration(s.stats.commitNanos.Load()).Seconds(),
	}
}

// Path returns the path of the database file.
func (s *Store) Path() string { return filepath.Join(s.DataDir, DBFile) }

// FirmwarePath returns where the firmware image with that SHA-256 (lower-case
// hex) is stored.
func (s *Store) FirmwarePath(sha256 string) string {
	return filepath.Join(s.DataDir, FirmwareDir, sha256)
}

// Open creates the data directory if needed, opens the database, applies
// pending migrations and starts the writer goroutine.
func (s *Store) Open() (err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state != stateNew {
		return fmt.Errorf("open store: %w", fleet.Errorf(fleet.ErrInvalidInput, "store already opened"))
	}
	if s.DataDir == "" {
		return fmt.Errorf("open store: %w", fleet.Errorf(fleet.ErrInvalidInput, "empty data directory"))
	}
	if s.FlushInterval <= 0 {
		s.FlushInterval = DefaultFlushInterval
	}
	if s.BatchSize <= 0 {
		s.BatchSize = DefaultBatchSize
	}
	if s.QueueSize <= 0 {
		s.QueueSize = DefaultQueueSize
	}
	if s.Logger == nil {
		s.Logger = slog.Default()
	}
	if s.RetryMin <= 0 {
		s.RetryMin = DefaultRetryMin
	}
	if s.RetryMax < s.RetryMin {
		s.RetryMax = max(s.RetryMin, DefaultRetryMax)
	}
	if s.CloseGrace <= 0 {
		s.CloseGrace = DefaultCloseGrace
	}
	if err := s.checkDataDir(); err != nil {
		return fmt.Errorf("open store: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(s.DataDir, FirmwareDir), 0o755); err != nil {
		return fmt.Errorf("open store: %w", err)
	}
	if err := s.removeStaleUploads(); err != nil {
		return fmt.Errorf("open store: %w", err)
	}

	defer func() {
		if err != nil {
			s.closeDBs()
		}
	}()
	s.writer = sql.OpenDB(writerConnector{dsn: s.Path() + "?" + writerPragmas, drv: &sqlite3.SQLiteDriver{}, noAutoCheckpoint: s.NoAutoCheckpoint})
	s.writer.SetMaxOpenConns(1)
	s.writer.SetMaxIdleConns(1)
	s.writer.SetConnMaxLifetime(0)
	s.writer.SetConnMaxIdleTime(0)
	if !s.SkipIntegrityCheck {
		if err := s.quickCheck(context.Background()); err != nil {
			return fmt.Errorf("open store: %w", err)
		}
	}
	if err := migrate(context.Background(), s.writer, migrations); err != nil {
		return fmt.Errorf("open store %s: %w", s.Path(), err)
	}
	if s.stmts, err = prepareWriteStmts(s.writer); err != nil {
		return fmt.Errorf("open store: %w", err)
	}
	if err := s.syncFirmwareReplica(context.Background()); err != nil {
		return fmt.Errorf("open store: %w", err)
	}

	s.reader, err = sql.Open("sqlite3", s.Path()+"?"+readerPragmas)
	if err != nil {
		return fmt.Errorf("open store: %w", err)
	}
	n := max(4, runtime.NumCPU())
	s.reader.SetMaxOpenConns(n)
	s.reader.SetMaxIdleConns(n)
	if err := s.reader.Ping(); err != nil {
		return fmt.Errorf("open store reader: %w", err)
	}

	s.ops = make(chan writeOp, s.QueueSize)
	s.quit = make(chan struct{})
	s.state = stateOpen
	s.wg.Add(1)
	go s.run()
	ctx, cancel := context.WithCancel(context.Background())
	s.stopPrune = cancel
	if s.Retention.Enabled() {
		s.wg.Add(1)
		go s.prune(ctx, s.Retention.withDefaults())
	}
	return nil
}

// Close commits every queued write, stops the writer goroutine and closes the
// database. It returns the first error: a write error that Flush did not
// report yet, or an error closing the database. Calling it again returns the
// same result.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.mu.RLock()
		if s.state == stateOpen {
			close(s.quit) // writers blocked on a full queue leave, so Lock below returns
		}
		s.mu.RUnlock()
		s.mu.Lock()
		wasOpen := s.state == stateOpen
		s.state = stateClosed
		if wasOpen {
			close(s.ops) // no sender holds mu: nobody sends any more
		}
		s.mu.Unlock()
		if !wasOpen {
			return
		}
		s.stopPrune()
		s.wg.Wait()
		var errs []error
		if s.werr != nil {
			errs = append(errs, s.werr)
		}
		errs = append(errs, s.closeDBs()...)
		if len(errs) > 0 {
			s.closeErr = fmt.Errorf("close store: %w", errs[0])
		}
	})
	return s.closeErr
}

// closeDBs releases the statements and both pools, returning their errors.
func (s *Store) closeDBs() []error {
	var errs []error
	s.stmts = nil // finalized as the writer's connection closes (writerConn)
	if s.reader != nil {
		if err := s.reader.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if s.writer != nil {
		if err := s.writer.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// enqueue hands o to the writer goroutine. It blocks while the queue is full
// (or until ctx ends) and returns fleet.ErrClosed once the store is closed.
func (s *Store) enqueue(ctx context.Context, o writeOp) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.state != stateOpen {
		return fleet.ErrClosed
	}
	select {
	case s.ops <- o:
		return nil
	default:
	}
	select {
	case s.ops <- o:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-s.quit:
		return fleet.ErrClosed
	}
}

// db returns the read pool, or fleet.ErrClosed when the store is not open.
func (s *Store) db() (*sql.DB, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.state != stateOpen {
		return nil, fleet.ErrClosed
	}
	return s.reader, nil
}

// timeFormat is RFC 3339 in UTC with a fixed nine-digit fraction, so that
// stored times sort as text.
const timeFormat = "2006-01-02T15:04:05.000000000Z07:00"

func fmtTime(t time.Time) string { return t.UTC().Format(timeFormat) }

// fmtTimePtr returns nil (SQL NULL) for a nil or zero time.
func fmtTimePtr(t *time.Time) any {
	if t == nil || t.IsZero() {
		return nil
	}
	return fmtTime(*t)
}

func parseTime(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("parse time %q: %w", s, err)
	}
	return t, nil
}

func parseTimePtr(ns sql.NullString) (*time.Time, error) {
	if !ns.Valid || ns.String == "" {
		return nil, nil
	}
	t, err := parseTime(ns.String)
	if err != nil {
		return nil, err
	}
	return &t, nil
}

// notFound maps sql.ErrNoRows to sentinel, and wraps any other error.
func notFound(err error, sentinel error, id string) error {
	if errors.Is(err, sql.ErrNoRows) {
		return fleet.Errorf(sentinel, "%s", id)
	}
	return err
}
