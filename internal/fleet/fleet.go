// Package fleet holds flota's domain types: devices, firmware, updates, their
// policies and per-device progress, the device state machine with its legal
// transitions, and the sentinel errors every other package returns.
//
// It imports nothing but the standard library so that every other package can
// depend on it.
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
	LastSeen  time.Time         `json:"last_seen"`
	Online    bool              `json:"online"`
}

// Firmware is one image stored once in the data directory.
type Firmware struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Version   string    `json:"version"`
	Model     string    `json:"model,omitempty"` // empty: any model
	Size      int64     `json:"size"`
	SHA256    string    `json:"sha256"` // lower-case hex
	CreatedAt time.Time `json:"created_at"`
}

// Selector chooses the target devices of an update. Empty fields match all.
type Selector struct {
	Model   string            `json:"model,omitempty"`
	Version string            `json:"version,omitempty"` // exact current version
	Tags    map[string]string `json:"tags,omitempty"`    // every tag must match
	Devices []string          `json:"devices,omitempty"` // explicit IDs
}

// Matches reports whether d is selected.
func (s Selector) Matches(d Device) bool {
	if s.Model != "" && s.Model != d.Model {
		return false
	}
	if s.Version != "" && s.Version != d.Version {
		return false
	}
	for k, v := range s.Tags {
		if d.Tags[k] != v {
			return false
		}
	}
	if len(s.Devices) > 0 {
		found := false
		for _, id := range s.Devices {
			if id == d.ID {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// Policy is how an update is carried out.
type Policy struct {
	MaxInFlight int `json:"max_in_flight"` // devices transferring at once
	Window      int `json:"window"`        // unacknowledged chunks per device
	ChunkSize   int `json:"chunk_size"`    // bytes per chunk
	MaxAttempts int `json:"max_attempts"`  // attempts per device before it fails
}

// WithDefaults returns p with zero fields set to the defaults.
func (p Policy) WithDefaults() Policy {
	if p.MaxInFlight == 0 {
		p.MaxInFlight = DefaultMaxInFlight
	}
	if p.Window == 0 {
		p.Window = DefaultWindow
	}
	if p.ChunkSize == 0 {
		p.ChunkSize = DefaultChunkSize
	}
	if p.MaxAttempts == 0 {
		p.MaxAttempts = DefaultMaxAttempts
	}
	return p
}

// Validate reports a policy outside the supported ranges.
func (p Policy) Validate() error {
	switch {
	case p.MaxInFlight < 1:
		return Errorf(ErrInvalidPolicy, "max_in_flight must be at least 1")
	case p.Window < 1 || p.Window > MaxWindow:
		return Errorf(ErrInvalidPolicy, "window must be 1..%d", MaxWindow)
	case p.ChunkSize < MinChunkSize || p.ChunkSize > MaxChunkSize:
		return Errorf(ErrInvalidPolicy, "chunk_size must be %d..%d", MinChunkSize, MaxChunkSize)
	case p.MaxAttempts < 1:
		return Errorf(ErrInvalidPolicy, "max_attempts must be at least 1")
	}
	return nil
}

// UpdateState is the state of a whole update.
type UpdateState string

// Update states.
const (
	UpdateRunning               UpdateState = "running"
	UpdatePaused                UpdateState = "paused"
	UpdateCompleted             UpdateState = "completed"
	UpdateCompletedWithFailures UpdateState = "completed_with_failures"
	UpdateCancelled             UpdateState = "cancelled"
)

// Terminal reports whether no device of the update will change any more.
func (s UpdateState) Terminal() bool {
	return s == UpdateCompleted || s == UpdateCompletedWithFailures || s == UpdateCancelled
}

// Update is one rollout of a firmware to a set of devices.
type Update struct {
	ID         string      `json:"id"`
	FirmwareID string      `json:"firmware_id"`
	Selector   Selector    `json:"selector"`
	Policy     Policy      `json:"policy"`
	State      UpdateState `json:"state"`
	CreatedAt  time.Time   `json:"created_at"`
	StartedAt  *time.Time  `json:"started_at,omitempty"`
	FinishedAt *time.Time  `json:"finished_at,omitempty"`
}

// Progress is one device's progress in one update.
type Progress struct {
	UpdateID  string      `json:"update_id"`
	DeviceID  string      `json:"device_id"`
	State     DeviceState `json:"state"`
	Offset    int64       `json:"offset"` // acknowledged bytes, a checkpoint
	Attempts  int         `json:"attempts"`
	Reason    Reason      `json:"reason,omitempty"`
	UpdatedAt time.Time   `json:"updated_at"`
	// StartedAt is when the current attempt was offered; FinishedAt when the
	// device reached a terminal state.
	StartedAt  *time.Time `json:"started_at,omitempty"`
	FinishedAt *time.Time `json:"finished_at,omitempty"`
}

// Event is one entry of the append-only event log, also published on MQTT.
type Event struct {
	Seq      int64     `json:"seq"`
	Time     time.Time `json:"time"`
	Type     string    `json:"type"` // "update" or "device"
	UpdateID string    `json:"update,omitempty"`
	DeviceID string    `json:"device,omitempty"`
	From     string    `json:"from,omitempty"`
	State    string    `json:"state"`
	Reason   Reason    `json:"reason,omitempty"`
	Offset   int64     `json:"offset,omitempty"`
	Attempt  int       `json:"attempt,omitempty"`
}

// Event types.
const (
	EventUpdate = "update"
	EventDevice = "device"
)

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
