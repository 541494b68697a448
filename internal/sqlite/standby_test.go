package sqlite

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
)

func TestStore_NoAutoCheckpointLeavesCheckpointsToLitestream(t *testing.T) {
	for _, tc := range []struct {
		name string
		off  bool
		want int
	}{
		{"default", false, 1000},
		{"litestream", true, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := New(t.TempDir())
			s.Logger = slog.New(slog.DiscardHandler)
			s.NoAutoCheckpoint = tc.off
			require.NoError(t, s.Open())
			t.Cleanup(func() { assert.NoError(t, s.Close()) })
			require.NoError(t, s.Flush(context.Background()))
			var pages int
			require.NoError(t, s.writer.QueryRow(`PRAGMA wal_autocheckpoint`).Scan(&pages))
			assert.Equal(t, tc.want, pages, "the writer's automatic checkpoint threshold")
		})
	}
}

func addImage(t *testing.T, s *Store, b []byte) (fleet.Firmware, string) {
	t.Helper()
	fw, err := s.AddFirmware(context.Background(), fleet.Firmware{Version: "1.0.0"}, bytes.NewReader(b))
	require.NoError(t, err)
	sum := sha256.Sum256(b)
	return fw, hex.EncodeToString(sum[:])
}

func TestStore_FirmwareIsInTheReplicaBeforeItsRowCommits(t *testing.T) {
	replica := filepath.Join(t.TempDir(), "replica")
	s := New(t.TempDir())
	s.Logger = slog.New(slog.DiscardHandler)
	s.FirmwareReplica = replica
	require.NoError(t, s.Open())
	t.Cleanup(func() { assert.NoError(t, s.Close()) })

	img := bytes.Repeat([]byte("flota"), 10_000)
	fw, sum := addImage(t, s, img)
	got, err := os.ReadFile(filepath.Join(replica, sum))
	require.NoError(t, err, "the image is in the replica once AddFirmware returns")
	assert.Equal(t, img, got)

	// A replica that cannot be written refuses the upload: no row names
	// an image the replica lacks.
	require.NoError(t, os.RemoveAll(replica))
	require.NoError(t, os.WriteFile(replica, nil, 0o644)) // a file where the directory should be
	_, err = s.AddFirmware(context.Background(), fleet.Firmware{Version: "2.0.0"}, bytes.NewReader([]byte("other image")))
	require.ErrorContains(t, err, "firmware replica")
	all, err := s.ListFirmware(context.Background())
	require.NoError(t, err)
	require.Len(t, all, 1)
	assert.Equal(t, fw.ID, all[0].ID)
}

func TestStore_OpenFetchesMissingFirmwareFromTheReplicaAndNamesTheRest(t *testing.T) {
	replica := t.TempDir()
	primary := t.TempDir()
	s := New(primary)
	s.Logger = slog.New(slog.DiscardHandler)
	s.FirmwareReplica = replica
	require.NoError(t, s.Open())
	_, kept := addImage(t, s, []byte("image in the replica"))
	lostFW, lost := addImage(t, s, []byte("image lost with the primary"))
	u := fleet.Update{ID: "u-lost", FirmwareID: lostFW.ID, State: fleet.UpdateRunning, CreatedAt: time.Now()}
	require.NoError(t, s.CreateUpdate(context.Background(), u, []fleet.Progress{{DeviceID: "d1", State: fleet.StateQueued, UpdatedAt: time.Now()}}))
	require.NoError(t, s.Close())
	require.NoError(t, os.Remove(filepath.Join(replica, lost)))

	// The standby: the database restored alone, the firmware directory
	// empty.
	standby := t.TempDir()
	copyFile(t, filepath.Join(primary, DBFile), filepath.Join(standby, DBFile))
	var logs bytes.Buffer
	st := New(standby)
	st.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	st.FirmwareReplica = replica
	require.NoError(t, st.Open())
	t.Cleanup(func() { assert.NoError(t, st.Close()) })

	_, err := os.Stat(st.FirmwarePath(kept))
	assert.NoError(t, err, "the image in the replica was fetched")
	missing := st.MissingFirmware()
	require.Len(t, missing, 1)
	assert.Equal(t, lost, missing[0].SHA256)
	assert.Equal(t, []string{lostFW.ID}, missing[0].Firmware)
	assert.Equal(t, []string{u.ID}, missing[0].Unfinished)
	assert.Contains(t, logs.String(), "firmware image missing")
	assert.Contains(t, logs.String(), lost)
	assert.Contains(t, logs.String(), u.ID)
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(dst, b, 0o644))
}

func TestStore_ClaimNumbersEveryStartAndTheCopyGoesOn(t *testing.T) {
	dir := t.TempDir()
	s := New(dir)
	s.Logger = slog.New(slog.DiscardHandler)
	require.NoError(t, s.Open())
	for want := int64(1); want <= 3; want++ {
		epoch, err := s.Claim(context.Background(), "i")
		require.NoError(t, err)
		assert.Equal(t, want, epoch)
	}
	require.NoError(t, s.Close())

	// A copy of the database (a restored replica) goes on from there.
	copyDir := t.TempDir()
	copyFile(t, filepath.Join(dir, DBFile), filepath.Join(copyDir, DBFile))
	c := newTestStore(t, copyDir)
	epoch, err := c.Claim(context.Background(), "standby")
	require.NoError(t, err)
	assert.EqualValues(t, 4, epoch)
}
