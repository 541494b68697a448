package fleet

// Retry says what becomes of a device whose attempt failed with a reason.
type Retry string

// Retry rules.
const (
	// RetryNever: final; the device ends failed with the reason.
	RetryNever Retry = "never"
	// RetryAttempt: a new attempt after the policy's backoff while the
	// update's attempts remain (max_attempts); the device ends failed with
	// the reason of its last attempt when they are spent. A retry needs the
	// device: one that is away when its attempt fails stays failed, and is
	// queued again if it says hello while the update is still active.
	RetryAttempt Retry = "attempt"
)

// Retries is the one retry table: every reason a device's attempt fails
// with, and whether it is retried. docs/PROTOCOL.md §12.1 prints it (a test
// compares them). A reason missing here, such as an unknown code a device
// sends, is never retried.
var Retries = map[Reason]Retry{
	ReasonBadDigest:       RetryAttempt,
	ReasonStorageError:    RetryAttempt,
	ReasonTransferTimeout: RetryAttempt,
	ReasonDeviceReset:     RetryAttempt,
	ReasonConfirmTimeout:  RetryAttempt,
	ReasonBadSignature:    RetryNever,
	ReasonInstallFailed:   RetryNever,
	ReasonBootFailed:      RetryNever,
}

// Retried reports whether an attempt that failed with r is tried again
// while attempts remain.
func (r Reason) Retried() bool { return Retries[r] == RetryAttempt }
