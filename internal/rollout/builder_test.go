package rollout_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/agent/delta"
	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/rollout"
	"github.com/flotaio/flota/internal/sqlite"
	"github.com/flotaio/flota/internal/tmpfs"
)

// builderStore opens a store in dir (a new temporary one if empty).
func builderStore(t *testing.T, dir string) *sqlite.Store {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	s := sqlite.New(dir)
	s.Logger = testLogger(t)
	require.NoError(t, s.Open())
	t.Cleanup(func() { s.Close() })
	return s
}

// openBuilder starts a builder on s whose store hook queues new firmware.
func openBuilder(t *testing.T, s *sqlite.Store, configure func(*rollout.Builder)) *rollout.Builder {
	t.Helper()
	b := rollout.NewBuilder(s, testLogger(t))
	b.RetryMin, b.RetryMax = 10*time.Millisecond, 50*time.Millisecond
	if configure != nil {
		configure(b)
	}
	require.NoError(t, b.Open(context.Background()))
	s.OnFirmwareAdded(b.FirmwareAdded)
	t.Cleanup(func() {
		s.OnFirmwareAdded(nil)
		b.Close()
	})
	return b
}

func storeImage(t *testing.T, s *sqlite.Store, img []byte, version string) fleet.Firmware {
	t.Helper()
	fw, err := s.AddFirmware(context.Background(), fleet.Firmware{Name: "app", Version: version, Model: "m1"}, bytes.NewReader(img))
	require.NoError(t, err)
	return fw
}

// builtPayloads waits until fw has n payloads, none pending.
func builtPayloads(t *testing.T, s *sqlite.Store, fw fleet.Firmware, n int) []fleet.Payload {
	t.Helper()
	var ps []fleet.Payload
	eventually(t, 60*time.Second, func() bool {
		var err error
		ps, err = s.Payloads(context.Background(), fw.ID)
		require.NoError(t, err)
		for _, p := range ps {
			if p.State == fleet.PayloadPending {
				return false
			}
		}
		return len(ps) == n
	}, "payloads built")
	return ps
}

func TestBuilder_NewFirmwareGetsACompressedCopyAndDeltasFromItsThreeNewestPredecessors(t *testing.T) {
	s := builderStore(t, "")
	openBuilder(t, s, nil)
	images := map[string][]byte{}
	var fws []fleet.Firmware
	img := compressible(60_000, 20)
	// Stored out of version order: predecessors are chosen by version.
	for i, v := range []string{"1.2.0", "1.0.0", "1.3.0", "1.1.0", "2.0.0"} {
		img = edited(img, uint64(30+i))
		images[v] = img
		fws = append(fws, storeImage(t, s, img, v))
	}
	target := fws[4]
	ps := builtPayloads(t, s, target, 4)
	bases := map[string]bool{}
	for _, p := range ps {
		require.Equal(t, fleet.PayloadReady, p.State, "%s from %s: %s", p.Encoding, p.BaseVersion, p.Error)
		// The file holds what the row says.
		data, err := os.ReadFile(filepath.Join(s.DataDir, p.Path))
		require.NoError(t, err)
		assert.Equal(t, p.Size, int64(len(data)))
		assert.Equal(t, p.SHA256, sha(data))
		var out bytes.Buffer
		enc, base := delta.Deflate, []byte(nil)
		if p.Encoding == fleet.EncodingDelta {
			enc, base = delta.BSDiff, images[p.BaseVersion]
			bases[p.BaseVersion] = true
			assert.Equal(t, sha(base), p.BaseSHA256)
		}
		d, err := delta.NewDecoder(enc, bytes.NewReader(base), int64(len(base)), &out, delta.Checkpoint{})
		require.NoError(t, err)
		_, err = d.Write(data)
		require.NoError(t, err)
		require.NoError(t, d.Close())
		assert.Equal(t, target.SHA256, sha(out.Bytes()), "%s from %q rebuilds the image", p.Encoding, p.BaseVersion)
	}
	assert.Equal(t, map[string]bool{"1.3.0": true, "1.2.0": true, "1.1.0": true}, bases, "the three newest older versions")
}

func TestBuilder_PayloadNoSmallerThanWhatItReplacesIsNotKept(t *testing.T) {
	s := builderStore(t, "")
	b := openBuilder(t, s, nil)
	fw := storeImage(t, s, compressible(1, 1), "0.1.0") // a tiny image: compression gains nothing
	ps := builtPayloads(t, s, fw, 1)
	assert.Equal(t, fleet.PayloadSkipped, ps[0].State)
	assert.Contains(t, ps[0].Error, "not kept")
	assert.Empty(t, ps[0].Path)
	eventually(t, 5*time.Second, func() bool { return b.Stats().Skipped == 1 }, "counted skipped")
}

func TestBuilder_FailedBuildIsRecordedWithItsError(t *testing.T) {
	s := builderStore(t, "")
	openBuilder(t, s, func(b *rollout.Builder) {
		b.SetCodec(func(io.Writer, io.Reader) (int64, error) { return 0, errors.New("codec broke") }, nil)
	})
	fw := storeImage(t, s, compressible(10_000, 2), "1.0.0")
	ps := builtPayloads(t, s, fw, 1)
	assert.Equal(t, fleet.PayloadFailed, ps[0].State)
	assert.Contains(t, ps[0].Error, "codec broke")
	entries, err := os.ReadDir(filepath.Join(s.DataDir, sqlite.PayloadDir))
	require.NoError(t, err)
	assert.Empty(t, entries, "no file for a failed build")
}

func TestBuilder_DeltaFromADamagedBaseImageFails(t *testing.T) {
	s := builderStore(t, "")
	openBuilder(t, s, nil)
	img := compressible(60_000, 20)
	base := storeImage(t, s, img, "1.0.0")
	builtPayloads(t, s, base, 1)
	// The base's file changed in place, same size: a delta from it would
	// not apply to the image devices run.
	path := s.FirmwarePath(base.SHA256)
	damaged, err := os.ReadFile(path)
	require.NoError(t, err)
	damaged[100] ^= 0xff
	require.NoError(t, os.WriteFile(path, damaged, 0o644))
	target := storeImage(t, s, edited(img, 7), "2.0.0")
	for _, p := range builtPayloads(t, s, target, 2) {
		if p.Encoding == fleet.EncodingDelta {
			assert.Equal(t, fleet.PayloadFailed, p.State)
			assert.Contains(t, p.Error, "SHA-256")
		}
	}
}

func TestBuilder_QueueIsBoundedAndRefusalsAreCounted(t *testing.T) {
	s := builderStore(t, "")
	b := rollout.NewBuilder(s, testLogger(t)) // not opened: nothing leaves the queue
	b.QueueSize = 3
	base := compressible(10_000, 3)
	var bases []fleet.Firmware
	for i, v := range []string{"1.0.0", "1.1.0", "1.2.0", "1.3.0"} {
		bases = append(bases, storeImage(t, s, edited(base, uint64(i)), v))
	}
	fw := storeImage(t, s, edited(base, 9), "2.0.0")
	require.NoError(t, b.Want(context.Background(), fw, bases)) // 5 wanted: compressed and 4 deltas
	_, pending, err := s.PendingPayloads(context.Background(), 10)
	require.NoError(t, err)
	assert.Equal(t, 3, pending)
	assert.Equal(t, int64(2), b.Stats().Refused)

	// Asking again queues nothing twice, and refuses what has no room.
	require.NoError(t, b.Want(context.Background(), fw, bases))
	_, pending, err = s.PendingPayloads(context.Background(), 10)
	require.NoError(t, err)
	assert.Equal(t, 3, pending)
	assert.Equal(t, int64(4), b.Stats().Refused)
}

func TestBuilder_StartBuildsWhatWasPendingAndRemovesOrphanFiles(t *testing.T) {
	dir := t.TempDir()
	s := builderStore(t, dir)
	fw := storeImage(t, s, compressible(20_000, 4), "1.0.0") // no builder: stays unbuilt
	b := rollout.NewBuilder(s, testLogger(t))
	require.NoError(t, b.Want(context.Background(), fw, nil))
	orphan := filepath.Join(dir, sqlite.PayloadDir, "fw-gone.deflate")
	require.NoError(t, os.MkdirAll(filepath.Dir(orphan), 0o755))
	require.NoError(t, os.WriteFile(orphan, []byte("left by a crash"), 0o644))
	require.NoError(t, os.WriteFile(orphan+".tmp", []byte("half written"), 0o644))

	b = openBuilder(t, s, nil)
	_, err := os.Stat(orphan)
	assert.ErrorIs(t, err, os.ErrNotExist, "a file no payload names is removed")
	_, err = os.Stat(orphan + ".tmp")
	assert.ErrorIs(t, err, os.ErrNotExist)
	ps := builtPayloads(t, s, fw, 1)
	assert.Equal(t, fleet.PayloadReady, ps[0].State, ps[0].Error)

	// A ready payload whose file is gone (a data directory restored from
	// a backup, which holds the images only) is built again.
	require.NoError(t, b.Close())
	require.NoError(t, os.Remove(filepath.Join(dir, ps[0].Path)))
	openBuilder(t, s, nil)
	again := builtPayloads(t, s, fw, 1)
	assert.Equal(t, fleet.PayloadReady, again[0].State, again[0].Error)
	assert.FileExists(t, filepath.Join(dir, again[0].Path))
}

func TestBuilder_DeletingAFirmwareDeletesItsPayloadsAndTheDeltasFromIt(t *testing.T) {
	s := builderStore(t, "")
	openBuilder(t, s, nil)
	base := compressible(40_000, 5)
	old := storeImage(t, s, base, "1.0.0")
	builtPayloads(t, s, old, 1)
	mid := storeImage(t, s, edited(base, 6), "1.1.0")
	builtPayloads(t, s, mid, 2)
	fw := storeImage(t, s, edited(edited(base, 6), 7), "1.2.0")
	ps := builtPayloads(t, s, fw, 3)
	files := func() []string {
		entries, err := os.ReadDir(filepath.Join(s.DataDir, sqlite.PayloadDir))
		require.NoError(t, err)
		var out []string
		for _, e := range entries {
			out = append(out, e.Name())
		}
		return out
	}
	require.Len(t, files(), 6)

	// A base: the deltas from it go.
	require.NoError(t, s.DeleteFirmware(context.Background(), old.ID))
	left, err := s.Payloads(context.Background(), fw.ID)
	require.NoError(t, err)
	assert.Len(t, left, 2, "of %v", ps)
	assert.Len(t, files(), 3)

	// A target: its payloads go.
	require.NoError(t, s.DeleteFirmware(context.Background(), fw.ID))
	left, err = s.Payloads(context.Background(), fw.ID)
	require.NoError(t, err)
	assert.Empty(t, left)
	assert.Equal(t, []string{mid.ID + ".deflate"}, files())
}

func TestBuilder_DiskFullKeepsTheBuildPendingUntilThereIsRoom(t *testing.T) {
	// The payload directory on a file system of its own, filled up; the
	// database stays writable, so that a build recorded failed would show.
	full := tmpfs.Mount(t, 1<<20)
	s := builderStore(t, "")
	require.NoError(t, os.Mkdir(filepath.Join(full, "payloads"), 0o755))
	require.NoError(t, os.Symlink(filepath.Join(full, "payloads"), filepath.Join(s.DataDir, sqlite.PayloadDir)))
	fw := storeImage(t, s, compressible(300_000, 8), "1.0.0")
	b := rollout.NewBuilder(s, testLogger(t))
	require.NoError(t, b.Want(context.Background(), fw, nil))
	filler := filepath.Join(full, "filler")
	f, err := os.Create(filler)
	require.NoError(t, err)
	_, err = io.Copy(f, io.LimitReader(zeros{}, 4<<20))
	require.Error(t, err, "the file system is full")
	require.NoError(t, f.Close())

	b = openBuilder(t, s, nil)
	eventually(t, 20*time.Second, func() bool { return b.Stats().Retries >= 2 }, "the build is retried")
	ps, err := s.Payloads(context.Background(), fw.ID)
	require.NoError(t, err)
	assert.Equal(t, fleet.PayloadPending, ps[0].State, "a disk fault fails nothing")

	require.NoError(t, os.Remove(filler))
	ps = builtPayloads(t, s, fw, 1)
	assert.Equal(t, fleet.PayloadReady, ps[0].State, ps[0].Error)
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
