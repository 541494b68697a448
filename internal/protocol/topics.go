// Package protocol is flota's wire protocol, version 1: the MQTT topic layout,
// the JSON control messages, the binary chunk frame, and the signed encoding
// of a firmware with its ed25519 signature (signature.go). docs/PROTOCOL.md is
// its specification for device firmware authors; testdata/protocol holds golden
// vectors that the tests decode.
//
// Every decoder here reads untrusted device input: each bounds its input,
// refuses wrong types, tolerates unknown fields, and has a fuzz target.
package protocol

import (
	"strings"

	"github.com/flotaio/flota/internal/fleet"
)

// Version is the protocol version carried in every message's "v" field and in
// the chunk frame's first byte.
const Version = 1

// Topic roots.
const (
	Root         = "flota"
	DevicesRoot  = "flota/devices/"
	EventsRoot   = "flota/events/"
	StatusRoot   = "flota/status/"
	EventsFilter = "flota/events/#"
	StatusFilter = "flota/status/#"
	// UpFilter matches every device's reports; the orchestrator subscribes to it.
	UpFilter = "flota/devices/+/up/#"
)

// Message kinds: the last topic level.
const (
	KindHello  = "hello"  // up: device announces itself (and what it holds)
	KindReport = "report" // up: state change of a transfer
	KindAck    = "ack"    // up: cumulative acknowledgement
	KindStatus = "status" // up, retained: {"v":1,"online":bool}; also the device's last will
	KindOffer  = "offer"  // down: an update for the device
	KindChunk  = "chunk"  // down: binary chunk frame
	KindCancel = "cancel" // down: stop the transfer
)

// DownTopic is the orchestrator -> device topic of a message kind.
func DownTopic(deviceID, kind string) string {
	return DevicesRoot + deviceID + "/down/" + kind
}

// UpTopic is the device -> orchestrator topic of a message kind.
func UpTopic(deviceID, kind string) string {
	return DevicesRoot + deviceID + "/up/" + kind
}

// DownFilter is what a device subscribes to.
func DownFilter(deviceID string) string { return DevicesRoot + deviceID + "/down/#" }

// UpdateEventsTopic carries every event of one update.
func UpdateEventsTopic(updateID string) string { return EventsRoot + "updates/" + updateID }

// UpdateStatusTopic carries an update's retained summary.
func UpdateStatusTopic(updateID string) string { return StatusRoot + "updates/" + updateID }

// DeviceStatusTopic carries a device's retained status.
func DeviceStatusTopic(deviceID string) string { return StatusRoot + "devices/" + deviceID }

// ParseUpTopic splits "flota/devices/{id}/up/{kind}". ok is false for any
// other shape or an invalid device ID.
func ParseUpTopic(topic string) (deviceID, kind string, ok bool) {
	rest, found := strings.CutPrefix(topic, DevicesRoot)
	if !found {
		return "", "", false
	}
	deviceID, rest, found = strings.Cut(rest, "/")
	if !found || !fleet.ValidDeviceID(deviceID) {
		return "", "", false
	}
	kind, found = strings.CutPrefix(rest, "up/")
	if !found || kind == "" || strings.Contains(kind, "/") {
		return "", "", false
	}
	return deviceID, kind, true
}

// MatchTopic reports whether an MQTT topic name matches a subscription
// filter with the "+" and "#" wildcards (MQTT 3.1.1 section 4.7): "+"
// matches one level, a final "#" its parent level and every level below it
// ("a/#" and "a/+/#" match "a/b"). A topic starting with "$" matches no
// filter that starts with a wildcard.
func MatchTopic(filter, topic string) bool {
	if strings.HasPrefix(topic, "$") && (strings.HasPrefix(filter, "+") || strings.HasPrefix(filter, "#")) {
		return false
	}
	for {
		fl, frest, fmore := strings.Cut(filter, "/")
		if fl == "#" {
			return true
		}
		tl, trest, tmore := strings.Cut(topic, "/")
		if fl != "+" && fl != tl {
			return false
		}
		switch {
		case !fmore && !tmore:
			return true
		case !tmore:
			// "a/#" also matches "a".
			return frest == "#"
		case !fmore:
			return false
		}
		filter, topic = frest, trest
	}
}
