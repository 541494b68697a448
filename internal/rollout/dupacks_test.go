package rollout_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
	"github.com/flotaio/flota/internal/rollout"
)

// receive downloads o as a device that acks every chunk (docs/PROTOCOL.md §7
// allows it), except that skip, if not negative, is dropped the first time
// it arrives; every chunk taken is then delivered a second time, which the
// device drops and answers with a duplicate ack when dup is set.
func (s *scripted) receive(o protocol.Offer, skip int64, dup bool) {
	s.t.Helper()
	next := int64(0)
	deadline := time.After(20 * time.Second)
	for next < o.Firmware.Size {
		select {
		case f := <-s.chunks:
			if f.Handle != o.Handle {
				continue
			}
			if int64(f.Offset) == skip {
				skip = -1 // lost once
				continue
			}
			if int64(f.Offset) == next {
				next += int64(len(f.Payload))
			}
			s.send(protocol.KindAck, protocol.Ack{V: 1, Handle: o.Handle, Offset: next})
			if dup {
				s.send(protocol.KindAck, protocol.Ack{V: 1, Handle: o.Handle, Offset: next})
			}
		case <-deadline:
			s.t.Fatalf("%s: download stalled at %d", s.id, next)
		}
	}
}

// Every chunk delivered twice to a device that acks every chunk draws one
// duplicate ack per chunk: no resend, nothing sent beyond the image.
func TestEngine_DuplicatedChunksDoNotTriggerGoBack(t *testing.T) {
	h := newHarness(t)
	d, fw, u, o := acceptedDevice(h, "dup", 64*1024, fleet.Policy{ChunkSize: 1024, Window: 8})
	d.receive(o, -1, true)
	d.report(o, fleet.StateDownloaded, fw.Size, "")
	eventually(t, 5*time.Second, func() bool { return h.summary(u.ID).BytesAcked == fw.Size }, "download acknowledged")
	s := h.summary(u.ID)
	assert.Zero(t, s.Resends)
	assert.Equal(t, fw.Size, s.BytesSent, "nothing sent twice")
	assert.Zero(t, h.engine.Stats().Resends)
}

// A real gap draws a duplicate ack for every chunk after it: the third
// makes the engine go back at once, long before the resend timeout.
func TestEngine_ThreeDuplicateAcksResendFromTheGap(t *testing.T) {
	h := newHarness(t)
	require.NoError(t, h.engine.Close())
	h.openEngineWith(func(e *rollout.Engine) { e.AckTimeout = time.Minute })
	d, fw, u, o := acceptedDevice(h, "gap", 32*1024, fleet.Policy{ChunkSize: 1024, Window: 8})
	d.receive(o, 4096, false) // fails after 20 s, well under the one-minute resend timeout
	eventually(t, 5*time.Second, func() bool { return h.summary(u.ID).BytesAcked == fw.Size }, "download acknowledged")
	assert.Positive(t, h.summary(u.ID).Resends)
}
