// Package fleet holds flota's domain types: devices, firmware, updates, their
// policies and per-device progress, the device state machine with its legal
// transitions, and the sentinel errors every other package returns.
//
// It depends on nothing of flota's (and only on a semver library outside the
// standard library), so that every other package can depend on it.
package fleet

import (
	"regexp"
	"strings"
	"time"
)

// Defaults of an update's policy.
const (
	DefaultMaxInFlight = 256
	DefaultWindow      = 8
	DefaultChunkSize   = 16 * 1024
	DefaultMaxAttempts = 3

	MinChunkSize = 1024
	MaxChunkSize = 64 * 1024
	MaxWindow    = 64
)

var deviceIDRe = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// ValidDeviceID reports whether id may name a device: 1 to 64 characters of
// [A-Za-z0-9._-], and not mochi's reserved inline client ID "inline".
func ValidDeviceID(id string) bool {
	return id != "inline" && deviceIDRe.MatchString(id)
}

// Device is one registered device as the orchestrator last saw it.
type Device struct {
	ID        string            `json:"id"`
	Model     string            `json:"model"`
	Version   string            `json:"version"`
	Tags      map[string]string `json:"tags,omitempty"`
	FirstSeen time.Time         `json:"first_seen"`
	LastSeen  time.Time         `json:"last_seen,omitzero"` // zero (absent): never connected
	Online    bool              `json:"online"`
	// Image is the SHA-256 of the image the device said it runs, and Caps
	// the payload encodings it said it decodes (its last hello): what
	// decides whether it is sent a delta or a compressed image.
	Image string   `json:"image,omitempty"`
	Caps  []string `json:"caps,omitempty"`
}

// Firmware is one image stored once in the data directory.
type Firmware struct {
	ID      string `json:"id"`
	Name    string `json:"name"`
	Version string `json:"version"`
	Model   string `json:"model,omitempty"` // empty: any model
	Size    int64  `json:"size"`
	SHA256  string `json:"sha256"` // lower-case hex
	// AllowDowngrade is signed with the image: devices may install it over
	// a newer version (docs/PROTOCOL.md, "Firmware signature").
	AllowDowngrade bool `json:"allow_downgrade,omitempty"`
	// Signature is the ed25519 signature over the signed fields, standard
	// base64, made where the private key is; empty: unsigned.
	Signature string    `json:"signature,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	// Payloads are the encoded copies kept of the image (a compressed
	// one, deltas from older versions); only the firmware routes fill it.
	Payloads []Payload `json:"payloads,omitempty"`
}

// UpdateState is the state of a whole update.
type UpdateState string

// Update states.
const (
	UpdateScheduled             UpdateState = "scheduled" // waits for its start_at
	UpdateRunning               UpdateState = "running"
	UpdatePaused                UpdateState = "paused" // by an operator, a manual gate or a failed gate
	UpdateCompleted             UpdateState = "completed"
	UpdateCompletedWithFailures UpdateState = "completed_with_failures"
	UpdateAborted               UpdateState = "aborted" // the failure threshold tripped
	UpdateCancelled             UpdateState = "cancelled"
)

// Terminal reports whether no device of the update will change any more
// (unless an operator retries its failed devices).
func (s UpdateState) Terminal() bool {
	switch s {
	case UpdateCompleted, UpdateCompletedWithFailures, UpdateAborted, UpdateCancelled:
		return true
	}
	return false
}

// Active reports whether the update holds its devices: scheduled, running
// or paused. A device is in at most one active update.
func (s UpdateState) Active() bool {
	return s == UpdateScheduled || s == UpdateRunning || s == UpdatePaused
}

// updateTransitions is the update state machine. Retrying the failed devices
// of an ended update runs it again.
var updateTransitions = map[UpdateState][]UpdateState{
	UpdateScheduled:             {UpdateRunning, UpdateCancelled},
	UpdateRunning:               {UpdatePaused, UpdateCompleted, UpdateCompletedWithFailures, UpdateAborted, UpdateCancelled},
	UpdatePaused:                {UpdateRunning, UpdateCompleted, UpdateCompletedWithFailures, UpdateAborted, UpdateCancelled},
	UpdateCompleted:             nil,
	UpdateCompletedWithFailures: {UpdateRunning},
	UpdateAborted:               {UpdateRunning},
	UpdateCancelled:             nil,
}

// CanUpdateTransition reports whether an update may go from one state to
// another.
func CanUpdateTransition(from, to UpdateState) bool {
	for _, s := range updateTransitions[from] {
		if s == to {
			return true
		}
	}
	return false
}

// Update is one rollout of a firmware to a set of devices. JSON names a
// referenced object by its short name ("firmware", "device", "update"),
// never name_id; UpdateSummary's full Firmware takes the "firmware" key
// over FirmwareID, whose value is its ID.
type Update struct {
	ID         string      `json:"id"`
	FirmwareID string      `json:"firmware"`
	Selector   Selector    `json:"selector"`
	Policy     Policy      `json:"policy"`
	State      UpdateState `json:"state"`
	CreatedAt  time.Time   `json:"created_at"`
	StartedAt  *time.Time  `json:"started_at,omitempty"`
	FinishedAt *time.Time  `json:"finished_at,omitempty"`
	// CreatedBy names who created the update: the API token's name; empty
	// for updates created before it was recorded.
	CreatedBy string `json:"created_by,omitempty"`
}

// Progress is one device's progress in one update.
type Progress struct {
	UpdateID  string      `json:"update"`
	DeviceID  string      `json:"device"`
	State     DeviceState `json:"state"`
	Offset    int64       `json:"offset"`  // acknowledged bytes, a checkpoint
	Attempts  int         `json:"attempt"` // the current attempt, from 1; 0: not offered yet
	Reason    Reason      `json:"reason,omitempty"`
	UpdatedAt time.Time   `json:"updated_at"`
	// StartedAt is when the current attempt was offered; FinishedAt when the
	// device reached a terminal state.
	StartedAt  *time.Time `json:"started_at,omitempty"`
	FinishedAt *time.Time `json:"finished_at,omitempty"`
	// Encoding and PayloadSize are what the current attempt sends: the
	// image itself ("full"), compressed ("deflate") or a delta ("delta"),
	// and its size, which Offset counts bytes of; empty before the first
	// offer. WireBytes counts the chunk bytes sent to the device in this
	// update, resends included.
	Encoding    string `json:"encoding,omitempty"`
	PayloadSize int64  `json:"payload_size,omitempty"`
	WireBytes   int64  `json:"wire_bytes,omitempty"`
}

// Event is one entry of the append-only event log, also published on MQTT.
type Event struct {
	Seq      int64     `json:"seq"`
	Time     time.Time `json:"time"`
	Type     string    `json:"type"` // one of EventTypes
	UpdateID string    `json:"update,omitempty"`
	DeviceID string    `json:"device,omitempty"`
	From     string    `json:"from,omitempty"`
	State    string    `json:"state"`
	Reason   Reason    `json:"reason,omitempty"`
	Offset   int64     `json:"offset,omitempty"`
	Attempt  int       `json:"attempt,omitempty"`
	Phase    int       `json:"phase,omitempty"` // rollout phase, from 1, of update and gate events
}

// Event types.
const (
	EventUpdate = "update" // the update changed state (State is the update state)
	EventDevice = "device" // a device changed state
	EventPhase  = "phase"  // a rollout phase started, or its gate passed, failed or waits (State says which)
	// EventIllegal records a device state change refused by the state machine.
	EventIllegal = "illegal_transition"
)

// EventTypes lists every event type, for validation and documentation.
var EventTypes = []string{EventUpdate, EventDevice, EventPhase, EventIllegal}

// ParseTags parses "k=v,k2=v2".
func ParseTags(s string) (map[string]string, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	tags := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(kv, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" {
			return nil, Errorf(ErrInvalidInput, "tag %q: want key=value", kv)
		}
		tags[k] = strings.TrimSpace(v)
	}
	return tags, nil
}
