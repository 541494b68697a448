package rollout_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
)

// An accepted offset past the end of the image is refused (counted as a bad
// message) without failing the device: the offer is sent again at the offer
// timeout, with a new handle and the same attempt, and a device that then
// accepts a true offset completes (docs/PROTOCOL.md §5.4, §12).
func TestEngine_AcceptedOffsetPastTheImageIsRefusedAndOfferedAgain(t *testing.T) {
	h := newHarness(t)
	d := newScripted(t, h, "past", "1.0.0")
	h.waitDevices(1)
	fw, _ := h.addFirmware(8192, "1.1.0")
	u := h.create(fw, fleet.Policy{ChunkSize: 4096}, fleet.Selector{})

	first := d.offer()
	bad := h.engine.Stats().BadMessages
	d.report(first, fleet.StateAccepted, fw.Size+1, "")
	eventually(t, 5*time.Second, func() bool { return h.engine.Stats().BadMessages > bad }, "the accept counted as bad")
	assert.Equal(t, fleet.StateOffered, h.deviceState(u.ID, "past").State, "not failed, not downloading")
	select {
	case f := <-d.chunks:
		t.Fatalf("a chunk was sent on an accept past the image: offset %d", f.Offset)
	default:
	}

	again := d.offer()
	assert.NotEqual(t, first.Handle, again.Handle, "a new handle")
	assert.Equal(t, first.Attempt, again.Attempt, "no attempt spent")
	d.installThenReboot(again)
	d.hello("1.1.0", nil)
	s := h.waitEnd(u.ID, 10*time.Second)
	require.Equal(t, fleet.UpdateCompleted, s.State)
	assert.Equal(t, map[fleet.DeviceState]int{fleet.StateSucceeded: 1}, s.Counts)
}
