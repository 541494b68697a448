package protocol

import (
	"fmt"
	"regexp"
)

// A device's limits, stated in its hello (protocol 1.1). A device that
// states none (a 1.0 agent) gets the update's chunk size and window.
const (
	// MinDeviceChunk is the smallest max_chunk a device may state: below
	// it, the per-chunk overhead (20 bytes of header, one MQTT packet and
	// a share of an ack) outweighs the payload. A device that cannot
	// take this much rejects offers with chunk_too_large.
	MinDeviceChunk = 256
	// MaxDeviceWindow is the largest window an orchestrator offers, and so
	// the largest max_window a device may state.
	MaxDeviceWindow = 64
	// MaxCaps bounds a hello's caps list, and MaxCapLen each entry.
	MaxCaps   = 16
	MaxCapLen = 32
)

// capRe is the charset of a capability: lower-case letters, digits, and
// ".", "_", "-" after the first character. Capabilities are stored and
// logged with the device, so they are kept to printable ASCII.
var capRe = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]*$`)

// helloWire is the hello as decoded: the limits are pointers so that a
// limit sent as 0 is refused rather than read as "not stated". Its fields
// shadow Hello's of the same JSON name.
type helloWire struct {
	Hello
	MaxChunk  *int `json:"max_chunk"`
	MaxWindow *int `json:"max_window"`
}

// limits validates the stated limits and copies them into the Hello.
func (w *helloWire) limits() (Hello, error) {
	m := w.Hello
	if p := w.MaxChunk; p != nil {
		if *p < MinDeviceChunk || *p > MaxChunkPayload {
			return Hello{}, invalid(KindHello, ErrBadValue, "max_chunk %d outside %d..%d", *p, MinDeviceChunk, MaxChunkPayload)
		}
		m.MaxChunk = *p
	}
	if p := w.MaxWindow; p != nil {
		if *p < 1 || *p > MaxDeviceWindow {
			return Hello{}, invalid(KindHello, ErrBadValue, "max_window %d outside 1..%d", *p, MaxDeviceWindow)
		}
		m.MaxWindow = *p
	}
	if len(m.Caps) > MaxCaps {
		return Hello{}, invalid(KindHello, ErrBadValue, "%d caps, at most %d", len(m.Caps), MaxCaps)
	}
	for _, c := range m.Caps {
		if len(c) > MaxCapLen || !capRe.MatchString(c) {
			return Hello{}, invalid(KindHello, ErrBadValue, "cap %s", capLabel(c))
		}
	}
	return m, nil
}

// capLabel names a refused capability without echoing arbitrary bytes
// into a log.
func capLabel(c string) string {
	if len(c) <= MaxCapLen && capRe.MatchString(c) {
		return c
	}
	return fmt.Sprintf("of %d bytes, not [a-z0-9._-] up to %d", len(c), MaxCapLen)
}

// offerWire is the offer as decoded: handle is a pointer so that an offer
// without one is refused, not read as handle 0 (a legal handle).
type offerWire struct {
	Offer
	Handle *uint32 `json:"handle"`
}

// ChunkFor is the chunk size and window to use with a device: the
// update's, lowered to the limits the device stated in its hello (zero:
// not stated).
func ChunkFor(chunk, window, maxChunk, maxWindow int) (int, int) {
	if maxChunk > 0 && maxChunk < chunk {
		chunk = maxChunk
	}
	if maxWindow > 0 && maxWindow < window {
		window = maxWindow
	}
	return chunk, window
}
