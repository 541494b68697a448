package rollout

import "github.com/flotaio/flota/internal/protocol"

// deviceLimits are the largest chunk payload (bytes) and window (chunks) a
// device stated in its hello (protocol 1.1); zero: not stated. caps and
// image are the payloads it decodes and the SHA-256 of the image it runs,
// which choose its payload (choose.go).
type deviceLimits struct {
	chunk, window int
	caps          uint8
	image         string
	conn          uint32 // the hello's connection number: an offline status naming another is stale
}

// noteLimits keeps what a device's hello states (limits, capabilities,
// image, connection number) for as long as its connection lasts. Only
// devices that state something take an entry, and deviceOffline drops it:
// the map is bounded by the connected devices.
func (e *Engine) noteLimits(device string, h protocol.Hello) {
	caps := capsOf(h.Caps)
	if h.MaxChunk == 0 && h.MaxWindow == 0 && caps == 0 && h.Image == "" && h.Conn == 0 {
		delete(e.limits, device)
		return
	}
	if e.limits == nil {
		e.limits = map[string]deviceLimits{}
	}
	e.limits[device] = deviceLimits{chunk: h.MaxChunk, window: h.MaxWindow, caps: caps, image: h.Image, conn: h.Conn}
}

// sizeOffer sets the chunk size and window of t's next offer: the
// update's, lowered to the device's limits. Every frame of the offer's
// handle keeps them, resends included, so that a device with a 4 KiB
// buffer updates from an update created with 16 KiB chunks.
func (e *Engine) sizeOffer(t *target) {
	l := e.limits[t.p.DeviceID]
	t.chunk, t.window = protocol.ChunkFor(t.r.u.Policy.ChunkSize, t.r.u.Policy.Window, l.chunk, l.window)
}
