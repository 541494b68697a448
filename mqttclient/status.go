package mqttclient

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/flotaio/flota/internal/protocol"
)

// maxStatusSize bounds a status payload; {"v":1,"online":false} is 25 bytes.
const maxStatusSize = 256

// statusFilter matches every device's retained presence status.
var statusFilter = protocol.UpTopic("+", protocol.KindStatus)

// decodeStatus reads a device's presence status, {"v":1,"online":true|false}
// (docs/PROTOCOL.md). It reads untrusted device input: it bounds the size,
// requires both fields and tolerates unknown ones.
func decodeStatus(payload []byte) (online bool, err error) {
	if len(payload) > maxStatusSize {
		return false, fmt.Errorf("status: %d bytes, at most %d", len(payload), maxStatusSize)
	}
	var s struct {
		V      *int  `json:"v"`
		Online *bool `json:"online"`
	}
	if err := json.Unmarshal(payload, &s); err != nil {
		return false, fmt.Errorf("status: %w", err)
	}
	switch {
	case s.V == nil || s.Online == nil:
		return false, errors.New(`status: "v" and "online" are required`)
	case *s.V != protocol.Version:
		return false, fmt.Errorf("status: version %d, want %d", *s.V, protocol.Version)
	}
	return *s.Online, nil
}
