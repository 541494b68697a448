package rollout_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/rollout"
)

// A device's failure is counted by its reason when the reason is known, and
// as "other" otherwise, so that whatever devices send, the counters (and the
// metric's labels) are FailureReasons and "other" only.
func TestEngine_FailuresAreCountedByKnownReasonOnly(t *testing.T) {
	h := newHarness(t)
	known := newScripted(t, h, "known", "1.0.0")
	odd := newScripted(t, h, "odd", "1.0.0")
	h.waitDevices(2)
	fw, _ := h.addFirmware(20_000, "1.1.0")
	u := h.create(fw, fleet.Policy{MaxAttempts: 1}, fleet.Selector{})

	before := h.engine.Failures()
	require.Len(t, before, len(rollout.FailureReasons)+1)
	ok, ko := known.offer(), odd.offer()
	known.report(ok, fleet.StateAccepted, 0, "")
	odd.report(ko, fleet.StateAccepted, 0, "")
	known.report(ok, fleet.StateFailed, 0, fleet.ReasonInstallFailed)
	odd.report(ko, fleet.StateFailed, 0, fleet.Reason("made_up_by_device_123"))
	eventually(t, 5*time.Second, func() bool {
		f := h.engine.Failures()
		return f[fleet.ReasonInstallFailed]-before[fleet.ReasonInstallFailed] == 1 && f[rollout.FailureOther]-before[rollout.FailureOther] == 1
	}, "both failures counted")
	after := h.engine.Failures()
	assert.Len(t, after, len(rollout.FailureReasons)+1, "no new reason appears")
	assert.NotContains(t, after, fleet.Reason("made_up_by_device_123"))
	s := h.waitEnd(u.ID, 10*time.Second)
	assert.Equal(t, 2, s.Counts[fleet.StateFailed])
}
