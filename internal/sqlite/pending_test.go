package sqlite

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
)

func TestStore_PendingFirmwareIsFilledInPlaceAndHasNoImageUntilThen(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t, t.TempDir())
	meta := fleet.Firmware{Name: "app", Version: "2.0.0", Model: "m1"}
	pending, err := s.AddPendingFirmware(ctx, meta, "fetch-1")
	require.NoError(t, err)
	assert.Equal(t, "fetch-1", pending.Fetch)

	listed, err := s.ListFirmware(ctx)
	require.NoError(t, err)
	assert.Empty(t, listed, "a firmware without an image is not listed")
	_, _, err = s.OpenFirmware(ctx, pending.ID)
	require.ErrorIs(t, err, fleet.ErrFirmwareFetching)
	files, err := s.Backup(ctx, t.TempDir())
	require.NoError(t, err)
	assert.Len(t, files, 1, "the backup has the database and no image: %+v", files)

	u := fleet.Update{ID: "u-1", FirmwareID: pending.ID, State: fleet.UpdateWaiting, CreatedAt: time.Now()}
	require.NoError(t, s.CreateUpdate(ctx, u, nil))
	require.ErrorIs(t, s.DeleteFirmware(ctx, pending.ID), fleet.ErrFirmwareInUse)

	img := []byte("the fetched image")
	fw, err := s.FillPendingFirmware(ctx, pending.ID, bytes.NewReader(img), nil)
	require.NoError(t, err)
	assert.Equal(t, pending.ID, fw.ID, "the update keeps its firmware")
	assert.EqualValues(t, len(img), fw.Size)
	assert.Empty(t, fw.Fetch)
	f, got, err := s.OpenFirmware(ctx, pending.ID)
	require.NoError(t, err)
	f.Close()
	assert.Equal(t, fw.SHA256, got.SHA256)
	_, err = s.FillPendingFirmware(ctx, pending.ID, bytes.NewReader(img), nil)
	require.ErrorIs(t, err, fleet.ErrFirmwareExists, "filled once")
}

func TestStore_PendingFirmwareOfAFailedFetchGoesWithoutTouchingTheImages(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := newTestStore(t, dir)
	pending, err := s.AddPendingFirmware(ctx, fleet.Firmware{Version: "2.0.0"}, "fetch-1")
	require.NoError(t, err)
	require.NoError(t, s.DeletePendingFirmware(ctx, pending.ID))
	_, err = s.Firmware(ctx, pending.ID)
	require.ErrorIs(t, err, fleet.ErrFirmwareNotFound)

	// Referred to by an update that ended on it: it stays until deleted,
	// and deleting it removes no file (it has none).
	pending, err = s.AddPendingFirmware(ctx, fleet.Firmware{Version: "2.0.1"}, "fetch-2")
	require.NoError(t, err)
	require.NoError(t, s.CreateUpdate(ctx, fleet.Update{ID: "u-1", FirmwareID: pending.ID, State: fleet.UpdateFailed}, nil))
	require.NoError(t, s.DeletePendingFirmware(ctx, pending.ID))
	_, err = s.Firmware(ctx, pending.ID)
	require.NoError(t, err, "an update refers to it")
	require.NoError(t, s.Close())

	s2 := newTestStore(t, dir) // a start checks the images the database names
	assert.Empty(t, s2.MissingFirmware(), "a firmware without an image is not missing")
	_, err = os.Stat(filepath.Join(dir, FirmwareDir))
	require.NoError(t, err)
}
