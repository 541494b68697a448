package fleet

import (
	"fmt"
	"strings"
)

// DeviceState is one device's state within one update, as the orchestrator
// tracks it. docs/PROTOCOL.md draws the machine.
type DeviceState string

// Device states. Queued and Skipped exist only on the orchestrator side; the
// others are also the states a device reports.
const (
	StateQueued      DeviceState = "queued"      // selected, not yet offered
	StateSkipped     DeviceState = "skipped"     // not updated (already on the target, ...), with a reason
	StateOffered     DeviceState = "offered"     // offer sent, no answer yet
	StateAccepted    DeviceState = "accepted"    // device accepted and reported its offset
	StateRejected    DeviceState = "rejected"    // device refused the offer, with a reason
	StateDownloading DeviceState = "downloading" // chunks flowing
	StateDownloaded  DeviceState = "downloaded"  // device holds every byte
	StateVerified    DeviceState = "verified"    // device checked the SHA-256
	StateInstalling  DeviceState = "installing"  // device is writing the image
	StateRebooting   DeviceState = "rebooting"   // device reboots into the new image
	StateSucceeded   DeviceState = "succeeded"   // device came back running the target version
	StateFailed      DeviceState = "failed"      // gave up, with a reason
	StateCancelled   DeviceState = "cancelled"   // stopped by the operator
	StateOffline     DeviceState = "offline"     // not seen for the update's offline_after; retry-failed takes it again
)

// AllDeviceStates lists every state in the order of the happy path.
var AllDeviceStates = []DeviceState{
	StateQueued, StateOffered, StateAccepted, StateDownloading, StateDownloaded,
	StateVerified, StateInstalling, StateRebooting, StateSucceeded,
	StateRejected, StateFailed, StateCancelled, StateSkipped, StateOffline,
}

// transitions is the whole state machine: from -> allowed next states.
// A transfer may be offered again (resume after a disconnect or a restart)
// from any state before installing; a failed device may be queued again for
// another attempt; an offered device that declines to reinstall the version
// it runs (a forced update) is skipped. Once a device installs, only the boot confirmation (or its
// absence) decides.
var transitions = map[DeviceState][]DeviceState{
	StateQueued:      {StateOffered, StateSkipped, StateCancelled, StateFailed, StateOffline, StateSucceeded},
	StateOffered:     {StateOffered, StateAccepted, StateRejected, StateFailed, StateCancelled, StateQueued, StateSkipped},
	StateAccepted:    {StateOffered, StateDownloading, StateDownloaded, StateFailed, StateCancelled, StateQueued},
	StateDownloading: {StateOffered, StateDownloaded, StateFailed, StateCancelled, StateQueued},
	StateDownloaded:  {StateOffered, StateVerified, StateFailed, StateCancelled, StateQueued},
	StateVerified:    {StateOffered, StateInstalling, StateFailed, StateCancelled, StateQueued},
	StateInstalling:  {StateRebooting, StateSucceeded, StateFailed},
	StateRebooting:   {StateSucceeded, StateFailed},
	StateFailed:      {StateQueued},
	StateOffline:     {StateQueued},
	StateSucceeded:   nil,
	StateRejected:    nil,
	StateCancelled:   nil,
	StateSkipped:     nil,
}

// Valid reports whether s is a known state.
func (s DeviceState) Valid() bool {
	_, ok := transitions[s]
	return ok
}

// StateNames lists AllDeviceStates for a message, comma-separated, so that
// a refusal of an unknown state can say which ones there are.
func StateNames() string {
	names := make([]string, len(AllDeviceStates))
	for i, st := range AllDeviceStates {
		names[i] = string(st)
	}
	return strings.Join(names, ", ")
}

// Terminal reports whether s ends the device's part in an update. Failed and
// offline are terminal unless the device is queued again (a retry).
func (s DeviceState) Terminal() bool {
	switch s {
	case StateSucceeded, StateRejected, StateCancelled, StateSkipped, StateFailed, StateOffline:
		return true
	}
	return false
}

// Transferring reports whether a device in s holds one of the update's
// in-flight slots: from the offer until it starts rebooting.
func (s DeviceState) Transferring() bool {
	switch s {
	case StateOffered, StateAccepted, StateDownloading, StateDownloaded, StateVerified, StateInstalling:
		return true
	}
	return false
}

// CanTransition reports whether from -> to is legal.
func CanTransition(from, to DeviceState) bool {
	for _, s := range transitions[from] {
		if s == to {
			return true
		}
	}
	return false
}

// Transition returns to when from -> to is legal, and ErrIllegalTransition
// otherwise.
func Transition(from, to DeviceState) (DeviceState, error) {
	if !CanTransition(from, to) {
		return from, fmt.Errorf("%w: %s -> %s", ErrIllegalTransition, from, to)
	}
	return to, nil
}

// Reason is a stable code explaining a rejection, failure, skip or cancel.
// docs/PROTOCOL.md lists them for device authors.
type Reason string

// Reason codes. Devices send the ones marked (device); the orchestrator sets
// the others.
const (
	ReasonNone              Reason = ""
	ReasonAlreadyCurrent    Reason = "already_current"    // device already runs the target version
	ReasonBusy              Reason = "busy"               // (device) another transfer is in progress
	ReasonIncompatibleModel Reason = "incompatible_model" // (device) image is for another model; also the orchestrator's skipped reason
	ReasonNoSpace           Reason = "insufficient_space" // (device) image does not fit
	ReasonChunkTooLarge     Reason = "chunk_too_large"    // (device) the offer's chunk_size or window exceeds its buffer
	ReasonVersionNotNewer   Reason = "version_not_newer"  // (orchestrator) skipped: the device runs a higher version
	ReasonBadDigest         Reason = "bad_digest"         // (device) SHA-256 mismatch
	ReasonBadSignature      Reason = "bad_signature"      // (device) signature does not verify
	ReasonDowngradeRefused  Reason = "downgrade_refused"  // (device) lower version, and the signature does not allow a downgrade
	ReasonInstallFailed     Reason = "install_failed"     // (device) writing the image failed
	ReasonStorageError      Reason = "storage_error"      // (device) could not store a chunk
	ReasonBootFailed        Reason = "boot_failed"        // device came back on another version
	ReasonDeviceReset       Reason = "device_reset"       // device came back without the transfer it was installing
	ReasonBadOffset         Reason = "bad_offset"         // device reported an offset past the image
	ReasonTransferTimeout   Reason = "transfer_timeout"   // no progress for the idle timeout
	ReasonConfirmTimeout    Reason = "confirm_timeout"    // device never came back on the target
	ReasonTooManyAttempts   Reason = "too_many_attempts"  // attempts exhausted
	ReasonOperator          Reason = "operator"           // cancelled by an operator
	ReasonAborted           Reason = "aborted"            // the update's failure threshold tripped
	ReasonRetry             Reason = "retry"              // an operator re-admitted a failed device
	ReasonNotSeen           Reason = "not_seen"           // the device did not show up within the update's offline_after

	// Reasons of update and phase events.
	ReasonFailureThreshold Reason = "failure_threshold" // failures reached the update's threshold
	ReasonGatePassed       Reason = "gate_passed"       // a phase reached its success threshold
	ReasonGateFailed       Reason = "gate_failed"       // a phase can no longer reach its success threshold
	ReasonManualGate       Reason = "manual_gate"       // the update waits for an operator at a gate
	ReasonScheduled        Reason = "scheduled"         // the update's start time came
	ReasonFirmwareDamaged  Reason = "firmware_damaged"  // the image's file is missing or differs from the stored firmware
	ReasonUnknownUpdate    Reason = "unknown_update"    // (device) cancel of an update it does not hold
	ReasonFirmwareFetched  Reason = "firmware_fetched"  // the fetch of the firmware an update waited for ended well
	ReasonFetchFailed      Reason = "fetch_failed"      // the fetch of the firmware an update waited for failed
	ReasonFetchCancelled   Reason = "fetch_cancelled"   // the fetch of the firmware an update waited for was cancelled
)

// Reasons of a device that refuses an encoded payload (docs/PROTOCOL.md §5.4).
const (
	ReasonBaseMismatch        Reason = "base_mismatch"        // (device) a delta's base is not the image the device runs
	ReasonUnsupportedEncoding Reason = "unsupported_encoding" // (device) the device cannot decode the offer's payload encoding
)
