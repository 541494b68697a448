package fleet

import (
	"crypto/rand"
	"encoding/hex"
	"time"
)

// NewID returns prefix + "-" + 12 random hex digits: short enough to type,
// random enough for one orchestrator's lifetime.
func NewID(prefix string) string {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return prefix + "-" + hex.EncodeToString(b[:])
}

// UpdateSummary is an update's live state: the retained status message on
// flota/status/updates/{id} and the body of GET /api/v1/updates/{id}.
type UpdateSummary struct {
	Update
	Firmware   Firmware            `json:"firmware"`
	Total      int                 `json:"total"`
	Counts     map[DeviceState]int `json:"counts"`
	InFlight   int                 `json:"in_flight"`
	BytesSent  int64               `json:"bytes_sent"`  // chunk payload bytes published, resends included
	BytesAcked int64               `json:"bytes_acked"` // image bytes devices hold, each once per attempt (PROTOCOL.md §14.2)
	Resends    int64               `json:"resends"`     // chunks sent again within an attempt (gap, timeout, re-offer)
	RateBps    float64             `json:"rate_bps"`    // acknowledged bytes per second, recent
	ETASeconds float64             `json:"eta_seconds,omitempty"`
	// Phase is the current rollout phase, from 1; Phases the cumulative
	// device counts of all phases; Gate what the current phase's gate is
	// doing: "" (open), "soaking", "waiting_approval" or "failed".
	Phase  int    `json:"phase,omitempty"`
	Phases []int  `json:"phases,omitempty"`
	Gate   string `json:"gate,omitempty"`
	// Waiting says why no device is being started now, if so:
	// "scheduled", "paused", "maintenance_window", "rate", "gate", or
	// "offline_devices" (nothing moves; only devices not connected remain).
	Waiting string `json:"waiting,omitempty"`
	// Unseen counts the queued devices that are not connected: the update
	// waits for them until UnseenUntil (at the latest), when those still
	// away end offline.
	Unseen      int        `json:"unseen,omitempty"`
	UnseenUntil *time.Time `json:"unseen_until,omitempty"`
	// WaitingUntil is when what Waiting names ends, when known: the
	// scheduled start, the maintenance window's next opening, the next
	// start the rate allows, the end of a soak.
	WaitingUntil *time.Time `json:"waiting_until,omitempty"`
	// PausedReason says who paused a paused update: operator, manual_gate
	// or gate_failed.
	PausedReason Reason `json:"paused_reason,omitempty"`
	// GateFigures are the current phase's gate figures once decided.
	GateFigures *GateFigures `json:"gate_figures,omitempty"`
	// WaitingDetail is Explain's sentence, for dashboards.
	WaitingDetail string `json:"waiting_detail,omitempty"`
	// ImageBytes is the sum of the image sizes of the devices offered so
	// far (one per device): what BytesSent would be with whole images and
	// no resend. Encodings counts those devices by the payload of their
	// current attempt (full, deflate, delta); PayloadsPending the devices
	// that wait for a delta being built.
	ImageBytes      int64          `json:"image_bytes"`
	Encodings       map[string]int `json:"encodings,omitempty"`
	PayloadsPending int            `json:"payloads_pending,omitempty"`
	Time            time.Time      `json:"time"`
}

// GateFigures are the figures a phase gate was decided on: Succeeded of
// the phase's Size devices succeeded, Needed had to.
type GateFigures struct {
	Succeeded int `json:"succeeded"`
	Needed    int `json:"needed"`
	Size      int `json:"size"`
}

// Finished counts the devices in terminal states.
func (s UpdateSummary) Finished() int {
	n := 0
	for st, c := range s.Counts {
		if st.Terminal() {
			n += c
		}
	}
	return n
}
