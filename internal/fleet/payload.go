package fleet

import "time"

// Payload encodings: what the chunks of a transfer carry. A device's
// progress names one; a firmware's payloads are the deflate and delta
// copies kept of its image.
const (
	EncodingFull    = "full"    // the image itself
	EncodingDeflate = "deflate" // the image compressed (protocol "deflate")
	EncodingDelta   = "delta"   // a delta from an older image (protocol "bsdiff")
)

// Payload build states.
const (
	PayloadPending = "pending" // waits for the builder, or is being built
	PayloadReady   = "ready"   // built and kept: devices may be sent it
	PayloadFailed  = "failed"  // the build failed (Error says why): devices get another payload
	PayloadSkipped = "skipped" // built, but no smaller than what it would replace: not kept
)

// Payload is an encoded copy of a firmware's image kept in the data
// directory: compressed, or a delta from an older firmware (Base) of the
// same name and model.
type Payload struct {
	FirmwareID  string    `json:"-"`
	Encoding    string    `json:"encoding"`               // EncodingDeflate or EncodingDelta
	Base        string    `json:"base,omitempty"`         // the base firmware's ID (deltas only)
	BaseVersion string    `json:"base_version,omitempty"` // its version
	BaseSHA256  string    `json:"base_sha256,omitempty"`  // its image's SHA-256: what a device's hello names
	Size        int64     `json:"size"`                   // bytes; 0 until built
	SHA256      string    `json:"sha256,omitempty"`       // of the payload
	State       string    `json:"state"`                  // a Payload* state
	Error       string    `json:"error,omitempty"`        // why it failed or was skipped
	Path        string    `json:"-"`                      // file, relative to the data directory
	CreatedAt   time.Time `json:"created_at"`
}

// DefaultPayloadWait bounds how long a device waits in the queue for a
// delta from its image that is still being built, before it is sent the
// compressed or whole image instead.
const DefaultPayloadWait = 2 * time.Minute
