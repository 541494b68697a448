package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// An online backup is a consistent snapshot of the database, taken with
// VACUUM INTO on a read-only connection of its own: it reads one WAL
// snapshot while the writer goes on committing, and writes a compact copy
// whose own WAL is empty. Firmware images are immutable and named by their
// SHA-256: the backup lists those the snapshot refers to, read from the
// snapshot itself, so that the copy holds every image it needs and no
// other. The other files of the data directory (the API token file, an
// enrollment token) are listed too: a restore needs them.

// BackupFile is one file of a backup: its name in the restored data
// directory, and where to read it now.
type BackupFile struct {
	Name string // "flota.db", "firmware/<sha256>", or a file name at the top
	Path string
}

// Backup writes a snapshot of the database to dir/flota.db (dir must
// exist) and returns the files of the backup, the snapshot first. The
// caller copies them (the firmware images from the live data directory),
// then removes the snapshot.
func (s *Store) Backup(ctx context.Context, dir string) ([]BackupFile, error) {
	if _, err := s.db(); err != nil {
		return nil, err
	}
	snap := filepath.Join(dir, DBFile)
	src, err := sql.Open("sqlite3", "file:"+s.Path()+"?mode=ro&_busy_timeout=5000")
	if err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	defer src.Close()
	if _, err := src.ExecContext(ctx, `VACUUM INTO ?`, snap); err != nil {
		return nil, fmt.Errorf("backup: snapshot of %s: %w", s.Path(), unavailableErr(err))
	}
	files := []BackupFile{{Name: DBFile, Path: snap}}

	db, err := sql.Open("sqlite3", "file:"+snap+"?mode=ro")
	if err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	defer db.Close()
	rows, err := db.QueryContext(ctx, `SELECT DISTINCT sha256 FROM firmware WHERE sha256 != '' ORDER BY sha256`)
	if err != nil {
		return nil, fmt.Errorf("backup: list firmware: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var sum string
		if err := rows.Scan(&sum); err != nil {
			return nil, fmt.Errorf("backup: list firmware: %w", err)
		}
		files = append(files, BackupFile{Name: FirmwareDir + "/" + sum, Path: s.FirmwarePath(sum)})
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("backup: list firmware: %w", err)
	}

	entries, err := os.ReadDir(s.DataDir)
	if err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	for _, e := range entries {
		name := e.Name()
		if !e.Type().IsRegular() || name == probeFile || strings.HasPrefix(name, DBFile) {
			continue
		}
		files = append(files, BackupFile{Name: name, Path: filepath.Join(s.DataDir, name)})
	}
	return files, nil
}

// ValidBackupName reports whether name may be a file of a backup: the
// database, an image under firmware/ named by its SHA-256, or a plain file
// name. A restore writes nothing else.
func ValidBackupName(name string) bool {
	if name == DBFile {
		return true
	}
	if sum, ok := strings.CutPrefix(name, FirmwareDir+"/"); ok {
		return len(sum) == 64 && strings.Trim(sum, "0123456789abcdef") == ""
	}
	return name != "" && name != "." && name != ".." && !strings.ContainsAny(name, `/\`) &&
		!strings.HasPrefix(name, DBFile) && name != FirmwareDir
}

// ErrNotABackup: a file offered as a backup's is not one.
var ErrNotABackup = errors.New("not a flota backup")
