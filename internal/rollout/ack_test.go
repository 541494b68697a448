package rollout_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
)

// firstChunk waits for the first chunk of o, so that the engine has sent
// something.
func (s *scripted) firstChunk(o protocol.Offer) protocol.Frame {
	s.t.Helper()
	for {
		select {
		case f := <-s.chunks:
			if f.Handle == o.Handle {
				return f
			}
		case <-time.After(10 * time.Second):
			s.t.Fatalf("%s: no chunk", s.id)
			return protocol.Frame{}
		}
	}
}

// finish reports the end of o's download and install and says hello on the
// target version.
func (s *scripted) finish(o protocol.Offer, u fleet.Update) {
	s.t.Helper()
	for _, st := range []fleet.DeviceState{fleet.StateDownloaded, fleet.StateVerified, fleet.StateInstalling, fleet.StateRebooting} {
		s.report(o, st, o.Firmware.Size, "")
	}
	s.hello(o.Firmware.Version, &protocol.Held{Update: u.ID, Handle: o.Handle, Offset: o.Firmware.Size, State: fleet.StateRebooting})
}

func TestEngine_AckBeyondBytesSentIsRefusedAndCounted(t *testing.T) {
	h := newHarness(t)
	// Window 2 of 4 KiB: at most 8 KiB are sent before an ack.
	d, fw, u, o := acceptedDevice(h, "liar", 64*1024, fleet.Policy{ChunkSize: 4096, Window: 2})
	f := d.firstChunk(o)
	require.Zero(t, f.Offset)

	// Within the image, past anything sent.
	d.send(protocol.KindAck, protocol.Ack{V: 1, Handle: o.Handle, Offset: 40_000})
	eventually(t, 5*time.Second, func() bool { return h.engine.Stats().AcksBeyondSent == 1 }, "the lying ack counted")
	s, err := h.engine.Summary(context.Background(), u.ID)
	require.NoError(t, err)
	assert.LessOrEqual(t, s.BytesAcked, s.BytesSent, "acked bytes never exceed the bytes sent")
	assert.Zero(t, s.BytesAcked, "the refused ack was not applied")
	assert.Zero(t, h.engine.Stats().BadMessages, "counted once, as an ack beyond the bytes sent")

	// The transfer goes on from the true offset: the device gets every
	// byte from 0 (the first chunk again, or the rest in order).
	d.chunks <- f
	d.download(o)
	d.finish(o, u)
	s = h.waitEnd(u.ID, 20*time.Second)
	assert.Equal(t, fleet.UpdateCompleted, s.State)
	assert.Equal(t, fw.Size, s.BytesAcked)
	assert.LessOrEqual(t, s.BytesAcked, s.BytesSent)
	assert.EqualValues(t, 1, h.engine.Stats().AcksBeyondSent)
}

func TestEngine_DownloadedReportCountsOnlyBytesSentAsAcked(t *testing.T) {
	for _, accept := range []bool{true, false} {
		t.Run(map[bool]string{true: "after one chunk", false: "in answer to the offer"}[accept], func(t *testing.T) {
			h := newHarness(t)
			d := newScripted(t, h, "skipper", "1.0.0")
			h.waitDevices(1)
			fw, _ := h.addFirmware(64*1024, "1.1.0")
			u := h.create(fw, fleet.Policy{ChunkSize: 4096, Window: 2}, fleet.Selector{})
			o := d.offer()
			if accept {
				d.report(o, fleet.StateAccepted, 0, "")
				d.firstChunk(o)
			}
			// Claims the whole image: the state machine follows (the
			// boot confirms or refutes it), the byte counters do not.
			d.finish(o, u)
			s := h.waitEnd(u.ID, 20*time.Second)
			assert.Equal(t, fleet.UpdateCompleted, s.State)
			assert.LessOrEqual(t, s.BytesAcked, s.BytesSent, "acked bytes never exceed the bytes sent")
			assert.Less(t, s.BytesAcked, fw.Size)
		})
	}
}
