package rollout_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/flotaio/flota/internal/fleet"
)

// A device that already runs the target answers a forced offer with its
// hello (docs/PROTOCOL.md §5.4 rule 2): it is offered once more, in case the
// hello crossed the offer, and then skipped, instead of an offer for every
// hello forever.
func TestEngine_ForcedOfferAnsweredWithHelloEndsSkipped(t *testing.T) {
	h := newHarness(t)
	d := newScripted(t, h, "current", "1.1.0")
	h.waitDevices(1)
	fw, _ := h.addFirmware(8192, "1.1.0")
	u := h.create(fw, fleet.Policy{ChunkSize: 4096, Force: true}, fleet.Selector{})

	for i := 0; i < 2; i++ {
		d.offer()
		d.hello("1.1.0", nil) // rule 2: already runs firmware.version
	}
	s := h.waitEnd(u.ID, 10*time.Second)
	assert.Equal(t, fleet.UpdateCompleted, s.State)
	assert.Equal(t, map[fleet.DeviceState]int{fleet.StateSkipped: 1}, s.Counts)
	p := h.deviceState(u.ID, "current")
	assert.Equal(t, fleet.ReasonAlreadyCurrent, p.Reason)
	assert.Empty(t, d.offers, "no offer after the device was skipped")
	assert.Zero(t, h.engine.Stats().IllegalChanges)
}
