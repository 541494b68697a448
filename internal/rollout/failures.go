package rollout

import (
	"sync/atomic"

	"github.com/flotaio/flota/internal/fleet"
)

// FailureReasons are the reasons device failures are counted by
// (Engine.Failures, flota_device_failures_total). A device may send any
// reason; the ones not listed here are counted as FailureOther, so that the
// metric's label set stays bounded whatever devices send.
var FailureReasons = [...]fleet.Reason{
	fleet.ReasonBadDigest, fleet.ReasonBadSignature, fleet.ReasonDowngradeRefused,
	fleet.ReasonInstallFailed, fleet.ReasonStorageError, fleet.ReasonBootFailed,
	fleet.ReasonDeviceReset, fleet.ReasonBadOffset, fleet.ReasonTransferTimeout,
	fleet.ReasonConfirmTimeout, fleet.ReasonTooManyAttempts, fleet.ReasonNoSpace,
	fleet.ReasonChunkTooLarge, fleet.ReasonIncompatibleModel, fleet.ReasonFirmwareDamaged,
}

// FailureOther counts the failures whose reason is not in FailureReasons.
const FailureOther fleet.Reason = "other"

// failureCounts counts device attempts that ended failed, by reason: one
// counter per FailureReasons entry, and the last for FailureOther.
type failureCounts [len(FailureReasons) + 1]atomic.Int64

func (c *failureCounts) add(reason fleet.Reason) {
	for i, r := range FailureReasons {
		if r == reason {
			c[i].Add(1)
			return
		}
	}
	c[len(FailureReasons)].Add(1)
}

// Failures returns how many device attempts ended failed since the engine
// started, by reason: every FailureReasons entry and FailureOther, zeros
// included. A failed attempt that is retried counts once per attempt.
func (e *Engine) Failures() map[fleet.Reason]int64 {
	out := make(map[fleet.Reason]int64, len(FailureReasons)+1)
	for i, r := range FailureReasons {
		out[r] = e.failures[i].Load()
	}
	out[FailureOther] = e.failures[len(FailureReasons)].Load()
	return out
}
