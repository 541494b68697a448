package sqlite

import (
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/tmpfs"
)

// earlierRun leaves in dir what a run leaves: a database with an update and
// a firmware image, and a token file of the server beside it.
func earlierRun(t *testing.T, dir string) {
	t.Helper()
	s := openFaultStore(t, dir)
	queueRows(t, s, 1, 2000)
	require.NoError(t, s.Close())
	require.NoError(t, os.WriteFile(filepath.Join(dir, "api-tokens"), []byte("admin admin x\n"), 0o600))
}

// earlierRunDB leaves an earlier run in dir and returns its database's
// path and size, which spans many pages.
func earlierRunDB(t *testing.T, dir string) (string, int64) {
	t.Helper()
	earlierRun(t, dir)
	db := filepath.Join(dir, DBFile)
	fi, err := os.Stat(db)
	require.NoError(t, err)
	require.Greater(t, fi.Size(), int64(64*4096), "the events fill many pages")
	return db, fi.Size()
}

func openErr(dir string, configure func(*Store)) (*Store, error) {
	s := New(dir)
	s.Logger = slog.New(slog.DiscardHandler)
	if configure != nil {
		configure(s)
	}
	return s, s.Open()
}

func TestStore_OpenRefusesAMissingOrEmptyDatabaseBesideAnEarlierRun(t *testing.T) {
	for _, tc := range []struct {
		name, what string
		lose       func(db string) error
	}{
		{"emptied", "is empty", func(db string) error { return os.Truncate(db, 0) }},
		{"removed", "is missing", func(db string) error {
			return errorsJoin(os.Remove(db), os.Remove(db+"-wal"), os.Remove(db+"-shm"))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			earlierRun(t, dir)
			db := filepath.Join(dir, DBFile)
			require.NoError(t, tc.lose(db))

			_, err := openErr(dir, nil)
			require.Error(t, err)
			for _, want := range []string{db, tc.what, "api-tokens", "firmware/ (1 files)", "orchestrator backup", "--new-database"} {
				assert.Contains(t, err.Error(), want)
			}
			fi, statErr := os.Stat(db)
			if tc.name == "emptied" {
				require.NoError(t, statErr)
				assert.Zero(t, fi.Size(), "a refused start changes nothing")
			} else {
				assert.True(t, os.IsNotExist(statErr), "a refused start creates no database")
			}

			s, err := openErr(dir, func(s *Store) { s.NewDatabase = true })
			require.NoError(t, err, "--new-database starts an empty one")
			n, err := s.MaxEventSeq(t.Context())
			require.NoError(t, err)
			assert.Zero(t, n)
			require.NoError(t, s.Close())
		})
	}
}

func errorsJoin(errs ...error) error {
	for _, err := range errs {
		if err != nil && !os.IsNotExist(err) {
			return err
		}
	}
	return nil
}

func TestStore_OpenStartsAFirstRunInAnEmptyDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "new")
	s, err := openErr(dir, nil)
	require.NoError(t, err)
	require.NoError(t, s.Close())
	s, err = openErr(dir, nil)
	require.NoError(t, err, "a second start on the first one's database")
	require.NoError(t, s.Close())
}

func TestStore_OpenRefusesADamagedDatabase(t *testing.T) {
	dir := t.TempDir()
	db, size := earlierRunDB(t, dir)
	// Garbage over pages near the end of the file: the event table's.
	f, err := os.OpenFile(db, os.O_RDWR, 0)
	require.NoError(t, err)
	garbage := make([]byte, 8*4096)
	for i := range garbage {
		garbage[i] = byte(i*7 + 3)
	}
	_, err = f.WriteAt(garbage, size-16*4096)
	require.NoError(t, err)
	require.NoError(t, f.Close())

	_, err = openErr(dir, nil)
	require.Error(t, err)
	assert.Contains(t, err.Error(), db)
	assert.Contains(t, err.Error(), "damaged")
	assert.Contains(t, err.Error(), "restore")

	s, err := openErr(dir, func(s *Store) { s.SkipIntegrityCheck = true })
	require.NoError(t, err, "--skip-integrity-check opens it all the same: the schema is intact")
	require.NoError(t, s.Close())
}

// A database cut short (a copy interrupted, a disk that lost its tail) is
// refused at start with an error naming the file, whether the cut leaves
// the header page only or half the pages.
func TestStore_OpenRefusesADatabaseCutShort(t *testing.T) {
	for _, tc := range []struct {
		name string
		keep func(size int64) int64
	}{
		{"first_page", func(int64) int64 { return 4096 }},
		{"half", func(size int64) int64 { return size / 2 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			db, size := earlierRunDB(t, dir)
			require.NoError(t, os.Truncate(db, tc.keep(size)))

			_, err := openErr(dir, nil)
			require.Error(t, err, "a database cut short is refused")
			assert.Contains(t, err.Error(), db)
			assert.Contains(t, err.Error(), "restore")
		})
	}
}

func TestStore_OpenRefusesAReadOnlyDataDirectory(t *testing.T) {
	dir := tmpfs.Mount(t, 8<<20)
	earlierRun(t, dir)
	// Root ignores permission bits: a read-only mount refuses root too.
	tmpfs.Remount(t, dir, true)

	_, err := openErr(dir, nil)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "data directory "+dir+" is not writable")
	assert.Contains(t, err.Error(), "read-only file system")
}
