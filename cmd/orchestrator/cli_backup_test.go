package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/sqlite"
)

// The CLI checks what it unpacks: an image whose bytes do not match the
// SHA-256 it is named after, and a database that is not one or fails its
// integrity check, are refused (the backup command then removes what it
// wrote).
func TestBackup_RefusesAnImageThatDoesNotMatchItsNameAndADamagedDatabase(t *testing.T) {
	dir := t.TempDir()
	image := []byte("firmware image bytes")
	sum := sha256.Sum256(image)
	name := sqlite.FirmwareDir + "/" + hex.EncodeToString(sum[:])
	require.NoError(t, os.Mkdir(filepath.Join(dir, sqlite.FirmwareDir), 0o700))

	n, err := writeBackupFile(filepath.Join(dir, filepath.FromSlash(name)), name, bytes.NewReader(image))
	require.NoError(t, err, "an image that matches its name")
	assert.Equal(t, int64(len(image)), n)

	changed := filepath.Join(t.TempDir(), "changed")
	_, err = writeBackupFile(changed, name, bytes.NewReader(append([]byte("x"), image[1:]...)))
	require.ErrorIs(t, err, sqlite.ErrNotABackup)
	assert.Contains(t, err.Error(), "does not match its SHA-256")

	err = checkBackupDB(filepath.Join(dir, sqlite.DBFile))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "no database in the archive")

	notDB := filepath.Join(dir, "not.db")
	require.NoError(t, os.WriteFile(notDB, bytes.Repeat([]byte("not a database "), 1000), 0o600))
	require.Error(t, checkBackupDB(notDB), "a file that is not a database")
}
