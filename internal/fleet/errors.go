package fleet

import (
	"errors"
	"fmt"
)

// Sentinel errors. Callers test them with errors.Is; the HTTP API maps each to
// a status code and a stable error code.
var (
	// ErrDeviceNotFound: no device with that ID is registered.
	ErrDeviceNotFound = errors.New("device not found")
	// ErrFirmwareNotFound: no firmware with that ID is stored.
	ErrFirmwareNotFound = errors.New("firmware not found")
	// ErrUpdateNotFound: no update with that ID exists.
	ErrUpdateNotFound = errors.New("update not found")
	// ErrNoTargets: an update's selector matched no device that needs the firmware.
	ErrNoTargets = errors.New("no target devices")
	// ErrInvalidPolicy: an update's policy is out of the supported ranges.
	ErrInvalidPolicy = errors.New("invalid policy")
	// ErrInvalidInput: a request or flag is malformed.
	ErrInvalidInput = errors.New("invalid input")
	// ErrSelectorTooLarge: an update's selector is over one of the limits
	// of selector.go (tags, device IDs, string lengths), which keep every
	// selector within what the store can evaluate.
	ErrSelectorTooLarge = errors.New("selector too large")
	// ErrIllegalTransition: a device or update state change that the state
	// machine does not allow.
	ErrIllegalTransition = errors.New("illegal state transition")
	// ErrUpdateFinished: an operation on an update that already ended.
	ErrUpdateFinished = errors.New("update already finished")
	// ErrDeviceBusy: a device is already a target of another active update.
	ErrDeviceBusy = errors.New("device is in another active update")
	// ErrCredentialNotFound: no MQTT account (device or monitor) by that ID.
	ErrCredentialNotFound = errors.New("credential not found")
	// ErrCredentialExists: the ID already names a device or monitor account.
	ErrCredentialExists = errors.New("credential already exists")
	// ErrTokenNotFound: no API token in the database by that name.
	ErrTokenNotFound = errors.New("api token not found")
	// ErrTokenExists: the name already names an API token (in the database
	// or the token file).
	ErrTokenExists = errors.New("api token already exists")
	// ErrTooManyTokens: the database holds MaxAPITokens tokens already.
	ErrTooManyTokens = errors.New("too many api tokens")
	// ErrFirmwareDamaged: a firmware image's file is missing, or its size
	// or SHA-256 differs from the stored firmware's.
	ErrFirmwareDamaged = errors.New("firmware image damaged")
	// ErrFirmwareFetching: the firmware's image is still being fetched
	// (fleet.Firmware.Fetch): it cannot be read yet.
	ErrFirmwareFetching = errors.New("firmware still fetching")
	// ErrFirmwareExists: the same image and version is stored already in
	// a form the upload may not replace (signed, where the upload is not).
	ErrFirmwareExists = errors.New("firmware already stored")
	// ErrFirmwareInUse: an update refers to the firmware, which therefore
	// stays.
	ErrFirmwareInUse = errors.New("firmware in use")
	// ErrStoreUnavailable: the store cannot write now (full disk, read-only
	// or failing file system); it holds what it was given and retries.
	ErrStoreUnavailable = errors.New("store unavailable")
	// ErrClosed: the component was closed.
	ErrClosed = errors.New("closed")
)

// Errorf wraps a sentinel with a message: errors.Is(Errorf(ErrX, ...), ErrX).
func Errorf(sentinel error, format string, args ...any) error {
	return fmt.Errorf("%w: %s", sentinel, fmt.Sprintf(format, args...))
}
