package rollout_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
)

// A device that comes back on the target version after its confirm timeout
// booted the image late: it succeeds, and the event log records only what
// happened (failed, queued again, succeeded), not an offer, an accept and a
// download that never took place.
func TestEngine_LateConfirmationAfterConfirmTimeoutLogsNoStepsThatNeverHappened(t *testing.T) {
	h := newHarness(t)
	d := newScripted(t, h, "late", "1.0.0")
	h.waitDevices(1)
	h.registerOffline("never") // keeps the update running while the device is away
	fw, _ := h.addFirmware(8192, "1.1.0")
	u := h.create(fw, fleet.Policy{ChunkSize: 4096, MaxAttempts: 2, RetryBackoff: fleet.Duration(time.Millisecond),
		ConfirmTimeout: fleet.Duration(300 * time.Millisecond)}, fleet.Selector{})

	d.installThenReboot(d.offer())
	d.c.Disconnect(0)
	eventually(t, 5*time.Second, func() bool { return h.deviceState(u.ID, "late").State == fleet.StateFailed }, "confirm timeout")

	newScripted(t, h, "late", "1.1.0") // back, running the target
	eventually(t, 5*time.Second, func() bool { return h.deviceState(u.ID, "late").State == fleet.StateSucceeded }, "late confirmation")

	var after []string
	failed := false
	for _, ev := range h.events(u.ID) {
		if ev.Type != fleet.EventDevice || ev.DeviceID != "late" {
			continue
		}
		if failed {
			after = append(after, ev.From+">"+ev.State)
		}
		failed = failed || ev.State == string(fleet.StateFailed)
	}
	assert.Equal(t, []string{"failed>queued", "queued>succeeded"}, after)
	assert.Zero(t, h.engine.Stats().IllegalChanges)
}

// A device that did not hold the update it was cancelled in may answer
// unknown_update (docs/PROTOCOL.md §11): the device is recorded cancelled
// with the cancel's reason, which says why, not with the device's answer.
func TestEngine_UnknownUpdateAnswerToACancelRecordsTheCancelReason(t *testing.T) {
	h := newHarness(t)
	d := newScripted(t, h, "blank", "1.0.0")
	h.waitDevices(1)
	fw, _ := h.addFirmware(8192, "1.1.0")
	u := h.create(fw, fleet.Policy{ChunkSize: 4096}, fleet.Selector{})
	o := d.offer() // never answered: the device holds nothing
	require.NoError(t, h.engine.Cancel(context.Background(), u.ID))
	d.report(o, fleet.StateCancelled, 0, fleet.ReasonUnknownUpdate)
	h.waitEnd(u.ID, 10*time.Second)
	// The update is cancelled at once; the offered device's row changes
	// when its answer is handled.
	var p fleet.Progress
	eventually(t, 10*time.Second, func() bool {
		p = h.deviceState(u.ID, "blank")
		return p.State != fleet.StateOffered
	}, "the device's answer handled")
	assert.Equal(t, fleet.StateCancelled, p.State)
	assert.Equal(t, fleet.ReasonOperator, p.Reason)
}
