package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/flotaio/flota/internal/fleet"
)

// MaxControlSize bounds a JSON control message from a device.
const MaxControlSize = 4096

// MaxIdentLen bounds a hello's model and version, in bytes (and so the
// model and version of a firmware that devices are matched against).
const MaxIdentLen = 64

// Decoding errors. Each wraps into a *DecodeError naming the message kind.
var (
	ErrTooLarge   = errors.New("message too large")
	ErrBadVersion = errors.New("unsupported protocol version")
	ErrMissing    = errors.New("required field missing")
	ErrBadValue   = errors.New("field has an invalid value")
)

// Hello is the device's announcement, sent on every (re)connect. Transfer
// tells what the device holds, so that the orchestrator resumes from the
// device's own offset or confirms the boot of a newly installed version.
type Hello struct {
	V        int               `json:"v"`
	Model    string            `json:"model"`
	Version  string            `json:"version"`
	Tags     map[string]string `json:"tags,omitempty"`
	Transfer *Held             `json:"transfer,omitempty"`
	// MaxChunk and MaxWindow are the largest chunk payload (bytes) and
	// window (chunks) the device accepts; zero: not stated, the update's
	// values apply. Caps names capabilities for later protocol versions.
	// All three are new in protocol 1.1 (limits.go).
	MaxChunk  int      `json:"max_chunk,omitempty"`
	MaxWindow int      `json:"max_window,omitempty"`
	Caps      []string `json:"caps,omitempty"`
	// Image is the SHA-256 (lower-case hex) of the image the device runs:
	// the base a delta payload is made against (protocol 1.1, optional).
	Image string `json:"image,omitempty"`
	// Conn is the number the device drew for this connection, the same in
	// its online status and its last will (protocol 1.1, optional; 0: not
	// stated): an offline status of another connection is then stale.
	Conn uint32 `json:"conn,omitempty"`
}

// Held is the transfer a device holds across a reconnect or a reboot.
type Held struct {
	Update string            `json:"update"`
	Handle uint32            `json:"handle"`
	Offset int64             `json:"offset"`
	State  fleet.DeviceState `json:"state"`
	// Encoding is the payload the offset counts bytes of: "" for the
	// image itself, else an Encoding* name (protocol 1.1).
	Encoding string `json:"encoding,omitempty"`
}

// FirmwareInfo describes the image in an offer.
type FirmwareInfo struct {
	ID      string `json:"id"`
	Name    string `json:"name"`
	Version string `json:"version"`
	Model   string `json:"model,omitempty"`
	Size    int64  `json:"size"`
	SHA256  string `json:"sha256"`
	// AllowDowngrade: the signer lets devices install this image over a
	// newer version (signed, see SignedBytes).
	AllowDowngrade bool `json:"allow_downgrade,omitempty"`
	// Signature is the ed25519 signature of SignedBytes, standard base64;
	// empty for an unsigned image.
	Signature string `json:"signature,omitempty"`
}

// Offer proposes an update to a device. The device answers with a report:
// accepted with the offset it holds (where the orchestrator starts sending),
// or rejected with a reason.
type Offer struct {
	V         int          `json:"v"`
	Update    string       `json:"update"`
	Handle    uint32       `json:"handle"`
	Attempt   int          `json:"attempt"`
	Firmware  FirmwareInfo `json:"firmware"`
	ChunkSize int          `json:"chunk_size"`
	Window    int          `json:"window"`
	// Encoding says what the chunks carry (protocol 1.1): "" the image
	// itself; EncodingDeflate the image compressed; EncodingBSDiff a delta
	// from the image whose SHA-256 is Base. With an encoding, offsets,
	// acks and chunks count bytes of the payload, PayloadSize long; the
	// firmware's size, digest and signature are the reconstructed image's.
	Encoding    string `json:"encoding,omitempty"`
	PayloadSize int64  `json:"payload_size,omitempty"`
	Base        string `json:"base,omitempty"`
}

// Payload encodings, named in hello caps (what a device can decode) and in
// offers (what the chunks carry).
const (
	EncodingDeflate = "deflate"
	EncodingBSDiff  = "bsdiff"
)

// Report is a device's change of state in a transfer: accepted (with the
// offset it holds), rejected, downloaded, verified, installing, rebooting,
// failed or cancelled (with a reason).
type Report struct {
	V       int               `json:"v"`
	Update  string            `json:"update"`
	Handle  uint32            `json:"handle"`
	State   fleet.DeviceState `json:"state"`
	Offset  int64             `json:"offset"`
	Reason  fleet.Reason      `json:"reason,omitempty"`
	Version string            `json:"version,omitempty"`
}

// Ack is a cumulative acknowledgement: the device holds every byte before
// Offset and expects Offset next.
type Ack struct {
	V      int    `json:"v"`
	Handle uint32 `json:"handle"`
	Offset int64  `json:"offset"`
}

// Cancel tells a device to stop a transfer and discard what it downloaded.
type Cancel struct {
	V      int          `json:"v"`
	Update string       `json:"update"`
	Handle uint32       `json:"handle"`
	Reason fleet.Reason `json:"reason"`
}

// DecodeError is a device message that could not be decoded.
type DecodeError struct {
	Kind string
	Err  error
}

func (e *DecodeError) Error() string { return "decode " + e.Kind + ": " + e.Err.Error() }
func (e *DecodeError) Unwrap() error { return e.Err }

// decode unmarshals b into a T with encoding/json and checks its size and
// version (the v field, which version returns).
func decode[T any](kind string, b []byte, version func(*T) int) (T, error) {
	var m T
	if len(b) > MaxControlSize {
		return m, &DecodeError{kind, fmt.Errorf("%w: %d bytes", ErrTooLarge, len(b))}
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, &DecodeError{kind, err}
	}
	if got := version(&m); got != Version {
		return m, &DecodeError{kind, fmt.Errorf("%w: %d", ErrBadVersion, got)}
	}
	return m, nil
}

func invalid(kind string, err error, format string, args ...any) error {
	return &DecodeError{kind, fmt.Errorf("%w: %s", err, fmt.Sprintf(format, args...))}
}

// DecodeHello parses and validates a hello.
func DecodeHello(b []byte) (Hello, error) {
	w, err := decode(KindHello, b, func(m *helloWire) int { return m.V })
	if err != nil {
		return Hello{}, err
	}
	m, err := w.limits()
	if err != nil {
		return Hello{}, err
	}
	if m.Version == "" {
		return Hello{}, invalid(KindHello, ErrMissing, "version")
	}
	if f := checkHelloFields(&m); f != "" {
		return Hello{}, invalid(KindHello, ErrBadValue, "%s: over %d bytes, or not printable ASCII", f, MaxIdentLen)
	}
	if t := m.Transfer; t != nil {
		if t.Update == "" || t.Offset < 0 || !t.State.Valid() {
			return Hello{}, invalid(KindHello, ErrBadValue, "transfer")
		}
	}
	return m, nil
}

// DecodeReport parses and validates a report: one in the canonical form
// of Report.AppendJSON without reflection, any other with encoding/json.
func DecodeReport(b []byte) (Report, error) {
	m, ok := scanReport(b)
	if !ok {
		var err error
		if m, err = decode(KindReport, b, func(m *Report) int { return m.V }); err != nil {
			return Report{}, err
		}
	}
	if m.Update == "" {
		return Report{}, invalid(KindReport, ErrMissing, "update")
	}
	switch m.State {
	case fleet.StateAccepted, fleet.StateRejected, fleet.StateDownloaded, fleet.StateVerified,
		fleet.StateInstalling, fleet.StateRebooting, fleet.StateFailed, fleet.StateCancelled:
	default:
		return Report{}, invalid(KindReport, ErrBadValue, "state %q", m.State)
	}
	if m.Offset < 0 {
		return Report{}, invalid(KindReport, ErrBadValue, "offset %d", m.Offset)
	}
	// They are stored with the device's progress and its events.
	if f := checkReportFields(&m); f != "" {
		return Report{}, invalid(KindReport, ErrBadValue, "%s: too long or outside its charset", f)
	}
	return m, nil
}

// DecodeAck parses and validates an ack: one in the canonical form of
// Ack.AppendJSON without reflection, any other with encoding/json.
func DecodeAck(b []byte) (Ack, error) {
	m, ok := scanAck(b)
	if !ok {
		var err error
		if m, err = decode(KindAck, b, func(m *Ack) int { return m.V }); err != nil {
			return Ack{}, err
		}
	}
	if m.Offset < 0 {
		return Ack{}, invalid(KindAck, ErrBadValue, "offset %d", m.Offset)
	}
	return m, nil
}

// DecodeOffer parses an offer (device side).
func DecodeOffer(b []byte) (Offer, error) {
	w, err := decode(KindOffer, b, func(m *offerWire) int { return m.V })
	if err != nil {
		return Offer{}, err
	}
	if w.Handle == nil {
		return Offer{}, invalid(KindOffer, ErrMissing, "handle")
	}
	m := w.Offer
	m.Handle = *w.Handle
	if m.Update == "" || m.Firmware.Size < 0 || m.ChunkSize <= 0 || m.ChunkSize > MaxChunkPayload || m.Window <= 0 {
		return Offer{}, invalid(KindOffer, ErrBadValue, "update, size, chunk_size or window")
	}
	if m.Window > MaxDeviceWindow {
		// No orchestrator offers more: a device must not size its
		// buffers from a number it cannot trust.
		return Offer{}, invalid(KindOffer, ErrBadValue, "window %d over %d", m.Window, MaxDeviceWindow)
	}
	switch m.Encoding {
	case "":
	case EncodingDeflate, EncodingBSDiff:
		if m.PayloadSize <= 0 || (m.Encoding == EncodingBSDiff) != ValidSHA256(m.Base) {
			return Offer{}, invalid(KindOffer, ErrBadValue, "payload_size or base for encoding %s", m.Encoding)
		}
	default:
		return Offer{}, invalid(KindOffer, ErrBadValue, "encoding")
	}
	return m, nil
}

// DecodeCancel parses a cancel (device side).
func DecodeCancel(b []byte) (Cancel, error) {
	m, err := decode(KindCancel, b, func(m *Cancel) int { return m.V })
	if err != nil {
		return Cancel{}, err
	}
	if m.Update == "" {
		return Cancel{}, invalid(KindCancel, ErrMissing, "update")
	}
	return m, nil
}

// Encode marshals a message. Messages here always marshal. An Ack, a
// Report and an Event append their own encoding (append.go), into a buffer
// on the stack and then one allocation of its size.
func Encode(v any) []byte {
	var buf [320]byte
	switch m := v.(type) {
	case Ack:
		return bytes.Clone(m.AppendJSON(buf[:0]))
	case Report:
		return bytes.Clone(m.AppendJSON(buf[:0]))
	case Event:
		return bytes.Clone(m.AppendJSON(buf[:0]))
	}
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("protocol: encode %T: %v", v, err))
	}
	return b
}
