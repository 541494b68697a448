package sqlite

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Open refuses to start on what it cannot trust, before it changes
// anything:
//
//   - a data directory it cannot write (a read-only mount, wrong owner):
//     every write would fail later, in the middle of an update;
//   - a missing or empty database beside the state of an earlier run
//     (firmware images, token files, a WAL): the database was lost, and
//     starting on an empty one would forget every device, credential and
//     update while devices and tokens still refer to them. Store.NewDatabase
//     (serve --new-database) starts on an empty one anyway;
//   - a damaged database: PRAGMA quick_check at start, which reads every
//     page (Store.SkipIntegrityCheck skips it for very large files).

// probeFile is created and removed in the data directory to prove that the
// process can write there.
const probeFile = ".flota-write-probe"

// restoreHint tells the operator what to do about a database that cannot
// be used.
const restoreHint = "restore the data directory from a backup (orchestrator backup --out DIR, then serve --data DIR)"

// checkDataDir creates the data directory if needed and refuses one the
// process cannot write, a database file it cannot write, and a missing or
// empty database beside an earlier run's state (unless NewDatabase).
func (s *Store) checkDataDir() error {
	if err := os.MkdirAll(s.DataDir, 0o755); err != nil {
		return err
	}
	probe := filepath.Join(s.DataDir, probeFile)
	f, err := os.OpenFile(probe, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err == nil {
		_, err = f.Write([]byte("probe"))
		err = errors.Join(err, f.Sync(), f.Close(), os.Remove(probe))
	}
	if err != nil {
		return fmt.Errorf("data directory %s is not writable: %w", s.DataDir, err)
	}

	db := s.Path()
	fi, err := os.Stat(db)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return err
	case fi.Size() > 0:
		f, err := os.OpenFile(db, os.O_RDWR, 0)
		if err != nil {
			return fmt.Errorf("database %s is not writable: %w", db, err)
		}
		return f.Close()
	}
	what := "missing"
	if err == nil {
		what = "empty"
	}
	state, err := s.earlierState()
	if err != nil {
		return err
	}
	if len(state) == 0 {
		return nil // a first start
	}
	if !s.NewDatabase {
		return fmt.Errorf("database %s is %s, but %s holds the state of an earlier run (%s): %s, "+
			"or start with --new-database to begin with an empty database (every device, credential and update is then forgotten)",
			db, what, s.DataDir, strings.Join(state, ", "), restoreHint)
	}
	s.Logger.Warn("starting a new, empty database beside the state of an earlier run", "database", db, "was", what,
		"found", strings.Join(state, ", "))
	// A WAL left by the lost database must not be applied to the new one.
	for _, suffix := range []string{"-wal", "-shm", "-journal"} {
		if err := os.Remove(db + suffix); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

// earlierState lists what an earlier run left in the data directory, other
// than an empty database and an empty firmware directory.
func (s *Store) earlierState() ([]string, error) {
	entries, err := os.ReadDir(s.DataDir)
	if err != nil {
		return nil, err
	}
	var found []string
	for _, e := range entries {
		name := e.Name()
		switch name {
		case DBFile:
			continue
		case DBFile + "-shm":
			continue // SQLite rebuilds it: no state of its own
		case FirmwareDir:
			imgs, err := os.ReadDir(filepath.Join(s.DataDir, name))
			if err != nil {
				return nil, err
			}
			if len(imgs) == 0 {
				continue
			}
			name = fmt.Sprintf("%s/ (%d files)", name, len(imgs))
		case DBFile + "-wal", DBFile + "-journal":
			if fi, err := e.Info(); err == nil && fi.Size() == 0 {
				continue
			}
		}
		found = append(found, name)
	}
	slices.Sort(found)
	return found, nil
}

// quickCheck runs PRAGMA quick_check on the writer's connection and turns
// a damaged database into an error that says so.
func (s *Store) quickCheck(ctx context.Context) error {
	rows, err := s.writer.QueryContext(ctx, `PRAGMA quick_check`)
	if err != nil {
		return fmt.Errorf("database %s is damaged: %w: %s", s.Path(), err, restoreHint)
	}
	defer rows.Close()
	var problems []string
	for rows.Next() {
		var line string
		if err := rows.Scan(&line); err != nil {
			return err
		}
		if line != "ok" && len(problems) < 5 {
			problems = append(problems, line)
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("database %s is damaged: %w: %s", s.Path(), err, restoreHint)
	}
	if len(problems) > 0 {
		return fmt.Errorf("database %s is damaged (quick_check: %s): %s, or start with --skip-integrity-check at your own risk",
			s.Path(), strings.Join(problems, "; "), restoreHint)
	}
	return nil
}
