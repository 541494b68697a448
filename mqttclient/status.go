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

// decodeStatus reads a device's presence status,
// {"v":1,"online":true|false[,"conn":N]} (docs/PROTOCOL.md). It reads
// untrusted device input: it bounds the size, requires "v" and "online"
// and tolerates unknown fields. conn is 0 when not stated.
func decodeStatus(payload []byte) (online bool, conn uint32, err error) {
	if len(payload) > maxStatusSize {
		return false, 0, fmt.Errorf("status: %d bytes, at most %d", len(payload), maxStatusSize)
	}
	var s struct {
		V      *int   `json:"v"`
		Online *bool  `json:"online"`
		Conn   uint32 `json:"conn"`
	}
	if err := json.Unmarshal(payload, &s); err != nil {
		return false, 0, fmt.Errorf("status: %w", err)
	}
	switch {
	case s.V == nil || s.Online == nil:
		return false, 0, errors.New(`status: "v" and "online" are required`)
	case *s.V != protocol.Version:
		return false, 0, fmt.Errorf("status: version %d, want %d", *s.V, protocol.Version)
	}
	return *s.Online, s.Conn, nil
}
