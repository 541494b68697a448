package rollout_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
)

// TestEngine_ReoffersOfAFinishedDownloadDoNotInflateBytesAcked reconnects a
// device three times after it downloaded the whole image; each time the
// engine offers again and the device answers with what it holds, as §5.4
// allows: the accepted offset (the image size), then downloaded. Every
// byte of the attempt counts once in bytes acked.
func TestEngine_ReoffersOfAFinishedDownloadDoNotInflateBytesAcked(t *testing.T) {
	for _, answer := range []fleet.DeviceState{fleet.StateAccepted, fleet.StateDownloaded} {
		t.Run(string(answer), func(t *testing.T) {
			h := newHarness(t)
			d, fw, u, o := acceptedDevice(h, "again", 64*1024, fleet.Policy{ChunkSize: 4096, Window: 4})
			d.download(o)
			d.report(o, fleet.StateDownloaded, fw.Size, "")
			for range 3 {
				d.hello("1.0.0", &protocol.Held{Update: u.ID, Handle: o.Handle, Offset: fw.Size, State: fleet.StateDownloaded})
				o = d.offer()
				if answer == fleet.StateAccepted {
					d.report(o, fleet.StateAccepted, fw.Size, "")
				}
				d.report(o, fleet.StateDownloaded, fw.Size, "")
			}
			d.finish(o, u)
			s := h.waitEnd(u.ID, 20*time.Second)
			require.Equal(t, fleet.UpdateCompleted, s.State)
			assert.Equal(t, fw.Size, s.BytesAcked, "each byte of the attempt once")
			assert.GreaterOrEqual(t, s.BytesSent, s.BytesAcked)
		})
	}
}

// TestEngine_ResumeCountsTheBytesWhoseAcksWereLost has a device receive
// chunks whose acks are lost, reconnect and accept the re-offer at the
// offset it holds: those bytes count as acked, once.
func TestEngine_ResumeCountsTheBytesWhoseAcksWereLost(t *testing.T) {
	h := newHarness(t)
	d, fw, u, o := acceptedDevice(h, "lossy", 64*1024, fleet.Policy{ChunkSize: 4096, Window: 4})
	// Four chunks arrive, in order; no ack gets through.
	var held int64
	for held < 4*4096 {
		f := d.firstChunk(o)
		if int64(f.Offset) == held {
			held += int64(len(f.Payload))
		}
	}
	d.hello("1.0.0", &protocol.Held{Update: u.ID, Handle: o.Handle, Offset: held, State: fleet.StateDownloading})
	o = d.offer()
	d.report(o, fleet.StateAccepted, held, "")
	d.downloadFrom(o, held)
	d.finish(o, u)
	s := h.waitEnd(u.ID, 20*time.Second)
	require.Equal(t, fleet.UpdateCompleted, s.State)
	assert.Equal(t, fw.Size, s.BytesAcked, "the bytes held at the resume count once")
	assert.GreaterOrEqual(t, s.BytesSent, s.BytesAcked)
}

// TestEngine_ResendsCountChunksSentAgainAfterAReoffer has a device get the
// first of four chunks sent to it, lose the rest, reconnect and accept the
// re-offer at the offset it holds: the three chunks sent again count as
// resends.
func TestEngine_ResendsCountChunksSentAgainAfterAReoffer(t *testing.T) {
	h := newHarness(t)
	d, fw, u, o := acceptedDevice(h, "reoffered", 64*1024, fleet.Policy{ChunkSize: 4096, Window: 4})
	var last int64
	for last < 3*4096 { // the window's four chunks were sent
		last = max(last, int64(d.firstChunk(o).Offset))
	}
	d.hello("1.0.0", &protocol.Held{Update: u.ID, Handle: o.Handle, Offset: 4096, State: fleet.StateDownloading})
	o = d.offer()
	d.report(o, fleet.StateAccepted, 4096, "")
	d.downloadFrom(o, 4096)
	d.finish(o, u)
	s := h.waitEnd(u.ID, 20*time.Second)
	require.Equal(t, fleet.UpdateCompleted, s.State)
	assert.EqualValues(t, 3, s.Resends, "the chunks at 4, 8 and 12 KiB went twice")
	assert.Equal(t, fw.Size, s.BytesAcked)
	assert.Equal(t, fw.Size+3*4096, s.BytesSent)
}
