package sqlite

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
)

func TestStore_PayloadRowsRecordBuildsOncePerImageAndBase(t *testing.T) {
	s := newTestStore(t, "")
	ctx := context.Background()
	base, err := s.AddFirmware(ctx, fleet.Firmware{Name: "app", Version: "1.0.0", Model: "m1"}, strings.NewReader("old image"))
	require.NoError(t, err)
	fw, err := s.AddFirmware(ctx, fleet.Firmware{Name: "app", Version: "1.1.0", Model: "m1"}, strings.NewReader("new image"))
	require.NoError(t, err)
	now := time.Now().UTC()
	want := []fleet.Payload{
		{FirmwareID: fw.ID, Encoding: fleet.EncodingDeflate, CreatedAt: now},
		{FirmwareID: fw.ID, Encoding: fleet.EncodingDelta, Base: base.ID, CreatedAt: now},
	}
	n, err := s.AddPayloads(ctx, want)
	require.NoError(t, err)
	assert.Equal(t, 2, n)
	n, err = s.AddPayloads(ctx, want)
	require.NoError(t, err)
	assert.Zero(t, n, "a payload is recorded once, the compressed one too (its base is NULL)")

	pending, total, err := s.PendingPayloads(ctx, 1)
	require.NoError(t, err)
	assert.Equal(t, 2, total)
	require.Len(t, pending, 1)
	assert.Equal(t, fleet.EncodingDeflate, pending[0].Encoding, "oldest first, the compressed copy before the deltas")

	done := want[1]
	done.State, done.Size, done.SHA256, done.Path = fleet.PayloadReady, 42, strings.Repeat("a", 64), PayloadDir+"/x"
	require.NoError(t, s.FinishPayload(ctx, done))
	ps, err := s.Payloads(ctx, fw.ID)
	require.NoError(t, err)
	require.Len(t, ps, 2)
	assert.Equal(t, fleet.EncodingDeflate, ps[0].Encoding)
	d := ps[1]
	assert.Equal(t, fleet.PayloadReady, d.State)
	assert.Equal(t, base.ID, d.Base)
	assert.Equal(t, "1.0.0", d.BaseVersion)
	assert.Equal(t, base.SHA256, d.BaseSHA256)
	assert.Equal(t, int64(42), d.Size)
	paths, err := s.PayloadPaths(ctx)
	require.NoError(t, err)
	assert.Equal(t, map[string]bool{PayloadDir + "/x": true}, paths)

	gone := done
	gone.FirmwareID = "fw-none"
	assert.ErrorIs(t, s.FinishPayload(ctx, gone), fleet.ErrFirmwareNotFound, "a deleted firmware's build has no row to finish")

	fam, err := s.FirmwareFamily(ctx, "app", "m1")
	require.NoError(t, err)
	assert.Len(t, fam, 2)
}

func TestStore_DeviceImageCapsAndProgressPayloadRoundTrip(t *testing.T) {
	s := newTestStore(t, "")
	ctx := context.Background()
	img := strings.Repeat("b", 64)
	require.NoError(t, s.SaveDevice(fleet.Device{ID: "d1", Model: "m1", Version: "1.0.0", Image: img, Caps: []string{"deflate", "bsdiff"}}))
	require.NoError(t, s.Flush(ctx))
	d, err := s.Device(ctx, "d1")
	require.NoError(t, err)
	assert.Equal(t, img, d.Image)
	assert.Equal(t, []string{"deflate", "bsdiff"}, d.Caps)
	sel, err := s.SelectDevices(ctx, fleet.Selector{})
	require.NoError(t, err)
	require.Len(t, sel, 1)
	assert.Equal(t, img, sel[0].Image, "an update's targets carry their image")

	fw, err := s.AddFirmware(ctx, fleet.Firmware{Name: "app", Version: "1.1.0"}, strings.NewReader("image"))
	require.NoError(t, err)
	u := fleet.Update{ID: "u1", FirmwareID: fw.ID, State: fleet.UpdateRunning, CreatedAt: time.Now().UTC()}
	require.NoError(t, s.CreateUpdate(ctx, u, []fleet.Progress{{UpdateID: "u1", DeviceID: "d1", State: fleet.StateQueued}}))
	p := fleet.Progress{UpdateID: "u1", DeviceID: "d1", State: fleet.StateOffered, Attempts: 1, UpdatedAt: time.Now().UTC(),
		Encoding: fleet.EncodingDelta, PayloadSize: 1234, WireBytes: 2000}
	require.NoError(t, s.SaveProgress(p, 7))
	require.NoError(t, s.Flush(ctx))
	rows, err := s.AllProgress(ctx, "u1")
	require.NoError(t, err)
	require.Len(t, rows, 1)
	assert.Equal(t, fleet.EncodingDelta, rows[0].Encoding)
	assert.Equal(t, int64(1234), rows[0].PayloadSize)
	assert.Equal(t, int64(2000), rows[0].WireBytes)
	counts, err := s.CountEncodings(ctx, "u1")
	require.NoError(t, err)
	assert.Equal(t, map[string]int{fleet.EncodingDelta: 1}, counts)
}
