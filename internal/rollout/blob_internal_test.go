package rollout

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/sqlite"
)

// blobEngine is an engine with nothing but a store, for openBlob.
func blobEngine(t *testing.T) (*Engine, *sqlite.Store) {
	store := sqlite.New(t.TempDir())
	require.NoError(t, store.Open())
	t.Cleanup(func() { store.Close() })
	return &Engine{Store: store, Logger: slog.New(slog.DiscardHandler)}, store
}

func TestOpenBlob_SmallImageInMemoryLargeFromFile(t *testing.T) {
	e, store := blobEngine(t)
	ctx := context.Background()

	for _, tc := range []struct {
		name   string
		size   int
		memory bool
	}{
		{"small", 1000, true},
		{"at the limit", memBlobMax, true},
		{"over the limit", memBlobMax + 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := make([]byte, tc.size)
			_, _ = rand.Read(img)
			fw, err := store.AddFirmware(ctx, fleet.Firmware{Name: "app", Version: tc.name, Model: "m1"}, bytes.NewReader(img))
			require.NoError(t, err)

			b, got, err := e.openBlob(ctx, fw.ID)
			require.NoError(t, err)
			defer b.Close()
			assert.Equal(t, fw.ID, got.ID)
			_, isMem := b.(memBlob)
			assert.Equal(t, tc.memory, isMem)

			// Chunks read from the blob are the image's, at any offset.
			for _, off := range []int{0, 17, tc.size - 10} {
				buf := make([]byte, 10)
				n, err := b.ReadAt(buf, int64(off))
				require.NoError(t, err)
				assert.Equal(t, img[off:off+n], buf[:n])
			}
			if !isMem {
				return
			}
			// An image in memory no longer needs its file.
			require.NoError(t, os.Truncate(store.FirmwarePath(fw.SHA256), 0))
			buf := make([]byte, 10)
			_, err = b.ReadAt(buf, int64(tc.size-10))
			require.NoError(t, err)
			assert.Equal(t, img[tc.size-10:], buf)
		})
	}
}

func TestOpenBlob_RefusesAnImageMissingCutShortOrChanged(t *testing.T) {
	for _, size := range []int{5000, memBlobMax + 5000} { // in memory, and read from the file
		for _, tc := range []struct {
			name  string
			spoil func(path string) error
		}{
			{"missing", os.Remove},
			{"cut_short", func(path string) error { return os.Truncate(path, 100) }},
			{"changed", func(path string) error {
				f, err := os.OpenFile(path, os.O_WRONLY, 0)
				if err != nil {
					return err
				}
				_, err = f.WriteAt([]byte("x"), 4000)
				return errors.Join(err, f.Close())
			}},
		} {
			t.Run(fmt.Sprintf("%s_%d", tc.name, size), func(t *testing.T) {
				e, store := blobEngine(t)
				ctx := context.Background()
				fw, err := store.AddFirmware(ctx, fleet.Firmware{Name: "app", Version: "1", Model: "m1"}, bytes.NewReader(make([]byte, size)))
				require.NoError(t, err)
				require.NoError(t, tc.spoil(store.FirmwarePath(fw.SHA256)))

				b, got, err := e.openBlob(ctx, fw.ID)
				require.ErrorIs(t, err, fleet.ErrFirmwareDamaged)
				assert.Nil(t, b, "nothing to read chunks from")
				assert.Equal(t, fw.ID, got.ID, "the firmware, for the run it pauses")
				assert.Contains(t, err.Error(), fw.ID)

				_, err = e.CreateUpdate(ctx, CreateRequest{FirmwareID: fw.ID})
				require.ErrorIs(t, err, fleet.ErrFirmwareDamaged, "a new update is refused")
			})
		}
	}
}
