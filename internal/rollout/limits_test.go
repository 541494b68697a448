package rollout_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
)

// downloadWithin downloads o like download, and checks that every frame
// fits the offer: no payload over its chunk_size, and nothing past the
// window beyond the last ack sent (acks are cumulative, so the engine can
// only have seen an earlier one).
func (s *scripted) downloadWithin(o protocol.Offer) {
	s.t.Helper()
	var next int64
	deadline := time.After(20 * time.Second)
	for next < o.Firmware.Size {
		select {
		case f := <-s.chunks:
			if f.Handle != o.Handle {
				continue
			}
			require.LessOrEqual(s.t, len(f.Payload), o.ChunkSize, "payload over the offer's chunk_size")
			require.LessOrEqual(s.t, int64(f.Offset)+int64(len(f.Payload)), next+int64(o.ChunkSize*o.Window), "frame past the window")
			if int64(f.Offset) == next {
				next += int64(len(f.Payload))
			}
			s.send(protocol.KindAck, protocol.Ack{V: 1, Handle: o.Handle, Offset: next})
		case <-deadline:
			s.t.Fatalf("%s: download stalled at %d", s.id, next)
		}
	}
}

func TestEngine_OfferAndFramesRespectTheLimitsADeviceStates(t *testing.T) {
	h := newHarness(t)
	small := newScripted(t, h, "small", "1.0.0")
	small.send(protocol.KindHello, protocol.Hello{V: 1, Model: "m1", Version: "1.0.0", MaxChunk: 1024, MaxWindow: 2})
	plain := newScripted(t, h, "plain", "1.0.0")
	h.waitDevices(2)
	fw, _ := h.addFirmware(40_000, "1.1.0")
	u := h.create(fw, fleet.Policy{ChunkSize: 16384, Window: 8}, fleet.Selector{})

	o := small.offer()
	assert.Equal(t, 1024, o.ChunkSize, "the device's max_chunk, under the update's 16 KiB")
	assert.Equal(t, 2, o.Window, "the device's max_window, under the update's 8")
	small.report(o, fleet.StateAccepted, 0, "")

	// Unacknowledged, the device is sent one window, resends included
	// (the ack timeout is 500 ms here).
	var seen int64
	timeout := time.After(1500 * time.Millisecond)
collect:
	for {
		select {
		case f := <-small.chunks:
			require.LessOrEqual(t, len(f.Payload), 1024)
			require.Less(t, int64(f.Offset), int64(2*1024), "no frame past the window without an ack")
			seen++
		case <-timeout:
			break collect
		}
	}
	require.GreaterOrEqual(t, seen, int64(2), "a window was sent")
	small.downloadWithin(o)

	p := plain.offer()
	assert.Equal(t, 16384, p.ChunkSize, "a device that states nothing gets the update's chunk size")
	assert.Equal(t, 8, p.Window)
	plain.report(p, fleet.StateAccepted, 0, "")
	plain.downloadWithin(p)

	// Reconnected without limits (a 1.0 firmware): the re-offer goes back
	// to the update's values, and resumes at the device's offset.
	small.hello("1.0.0", &protocol.Held{Update: u.ID, Handle: o.Handle, Offset: 4096, State: fleet.StateDownloading})
	again := small.offer()
	assert.Equal(t, 16384, again.ChunkSize)
	assert.Equal(t, 8, again.Window)
}

func TestEngine_ChunkTooLargeRejectionEndsTheDeviceRejected(t *testing.T) {
	h := newHarness(t)
	d := newScripted(t, h, "legacy", "1.0.0")
	h.waitDevices(1)
	fw, _ := h.addFirmware(20_000, "1.1.0")
	u := h.create(fw, fleet.Policy{ChunkSize: 16384}, fleet.Selector{})
	o := d.offer()
	d.report(o, fleet.StateRejected, 0, fleet.ReasonChunkTooLarge)
	h.waitEnd(u.ID, 10*time.Second)
	p := h.deviceState(u.ID, "legacy")
	assert.Equal(t, fleet.StateRejected, p.State)
	assert.Equal(t, fleet.ReasonChunkTooLarge, p.Reason)
}
