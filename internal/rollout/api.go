// Package rollout is flota's engine: it selects an update's target devices,
// admits a bounded number of them at a time, runs one transfer session per
// admitted device (offer, windowed chunk push, cumulative acks, resend,
// resume), follows each device through install and reboot to a confirmed
// boot, records progress in the store and publishes every change as an event.
//
// All engine state is owned by one loop goroutine; the broker's handlers only
// hand device messages to it through a bounded queue.
package rollout

import (
	"github.com/flotaio/flota/internal/fleet"
)

// Transport is what the engine needs of an MQTT broker: the embedded mochi
// broker implements it, and so does a client of an external broker.
type Transport interface {
	// Publish sends payload to every subscriber of topic. It must not block
	// for long: the engine calls it from its loop. It must not keep payload
	// after it returns (a transport that sends later copies it): the engine
	// reuses its chunk buffer.
	Publish(topic string, payload []byte, retain bool, qos byte) error
	// Subscribe calls handler for every message on filter. The handler must
	// return quickly; it may run on a connection's read goroutine.
	Subscribe(filter string, handler func(topic string, payload []byte)) error
}

// Stats are the engine's counters since it opened.
type Stats struct {
	ChunksSent     int64 `json:"chunks_sent"`
	BytesSent      int64 `json:"bytes_sent"`
	Resends        int64 `json:"resends"`
	Acks           int64 `json:"acks"`
	BadMessages    int64 `json:"bad_messages"`    // undecodable or invalid device messages
	StaleMessages  int64 `json:"stale_messages"`  // valid but for another update, handle or attempt
	QueueDrops     int64 `json:"queue_drops"`     // device messages and presence changes dropped on a full inbound queue
	QuotaDrops     int64 `json:"quota_drops"`     // device messages dropped because that device had its quota waiting
	IllegalChanges int64 `json:"illegal_changes"` // state changes refused by the state machine

	// AcksBeyondSent counts acks refused because they acknowledge bytes
	// never sent (a lying or broken device).
	AcksBeyondSent int64 `json:"acks_beyond_sent"`
	// IllegalEventsSuppressed counts the illegal changes not recorded as
	// events (Engine.IllegalEventInterval).
	IllegalEventsSuppressed int64 `json:"illegal_events_suppressed"`
	// LogLinesSuppressed counts the log lines dropped by the per-device
	// log limit (Engine.LogLimit).
	LogLinesSuppressed int64 `json:"log_lines_suppressed"`

	StoreHolds int64 `json:"store_holds"` // times the engine held still because the store could not write

	// The payload builder's counters (BuilderStats); zero without one.
	PayloadsBuilt   int64 `json:"payloads_built"`
	PayloadsFailed  int64 `json:"payloads_failed"`
	PayloadsSkipped int64 `json:"payloads_skipped"`
	PayloadsRefused int64 `json:"payloads_refused"`
	PayloadRetries  int64 `json:"payload_retries"`
}

// Engine API used by the HTTP API (see engine.go for the implementation):
//
//	func (e *Engine) CreateUpdate(ctx context.Context, req CreateRequest) (fleet.Update, error)
//	func (e *Engine) Summary(ctx context.Context, updateID string) (fleet.UpdateSummary, error)
//	func (e *Engine) Pause(ctx context.Context, updateID string) error
//	func (e *Engine) Resume(ctx context.Context, updateID string) error
//	func (e *Engine) Cancel(ctx context.Context, updateID string) error
//	func (e *Engine) Stats() Stats

// CreateRequest asks for a new update.
type CreateRequest struct {
	FirmwareID string         `json:"firmware"`
	Selector   fleet.Selector `json:"selector"`
	Policy     fleet.Policy   `json:"policy"`
	// CreatedBy is recorded with the update: the API sets it to the
	// token's name; a request body cannot.
	CreatedBy string `json:"-"`
}
