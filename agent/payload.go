package agent

import (
	"bytes"
	"crypto/sha256"
	"encoding"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/flotaio/flota/agent/delta"
	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
)

// Encoded payloads (docs/PROTOCOL.md, protocol 1.1): an offer with an
// encoding sends the image compressed (deflate) or as a delta from the image
// the device runs (bsdiff). The agent feeds the chunks to a delta.Decoder,
// which writes the reconstructed image to the same storage and the same
// running SHA-256 as a plain image's chunks; offsets, acks and the held
// offset count payload bytes. What is verified does not change: the
// signature over the offer's metadata before anything is held, the size and
// SHA-256 of the reconstructed image before the install. A payload the
// decoder refuses (delta.ErrCorrupt) ends failed, bad_digest: nothing is
// installed.
//
// Durability: the decoder can restart only at a segment boundary (its
// Checkpoint), so the state file keeps, for an encoded download, the last
// checkpoint (payload offset and image bytes before it) with the SHA-256
// state of exactly those image bytes. After a restart the device truncates
// its image to Checkpoint.Target (a Device drops what follows a lower write
// offset), restores that hash state and states Checkpoint.Payload as its
// held offset, with the encoding, in its hello.

// BaseImage is implemented by a Device that can read the image it runs: the
// base a delta is applied to. Only such a Device states the bsdiff
// capability; every Device decodes deflate, whose output is written with
// WriteImage as a plain image's chunks are.
type BaseImage interface {
	// RunningImage returns the content of the image the device runs and
	// its size. The agent reads it at random offsets while it applies a
	// delta, and hashes it once at start when Config.Image is empty. It
	// must stay unchanged until the device reboots into another image.
	RunningImage() (io.ReaderAt, int64, error)
}

// maxBuildSize bounds the image a simulated agent copies into Images (the
// one device of a fleet that reconstructs an image no other holds yet).
const maxBuildSize = 256 << 20

// Images holds image contents by SHA-256 for simulated agents (devicesim):
// the image a simulated device runs is the base of its deltas, and a fleet of
// thousands holds one copy per image rather than one per device. The first
// device that downloads an image the set lacks copies it while it
// reconstructs it, and adds it once its digest is verified; the devices
// that install it later run it, and can take a delta from it. Safe for
// concurrent use.
type Images struct {
	mu       sync.Mutex        // guards byDigest and building
	byDigest map[string][]byte // content by lower-case hex SHA-256
	building map[string]bool   // digests a device is copying
}

// NewImages returns an empty set.
func NewImages() *Images {
	return &Images{byDigest: map[string][]byte{}, building: map[string]bool{}}
}

// Add stores content (not copied: the caller must not change it) and
// returns its SHA-256 in lower-case hex.
func (s *Images) Add(content []byte) string {
	sum := sha256.Sum256(content)
	d := hex.EncodeToString(sum[:])
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.byDigest[d]; !ok {
		s.byDigest[d] = content
	}
	return d
}

// get returns the content of digest.
func (s *Images) get(digest string) ([]byte, bool) {
	if s == nil || digest == "" {
		return nil, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.byDigest[digest]
	return b, ok
}

// claim reports whether the caller should copy the image digest: the set
// lacks it and no other device copies it.
func (s *Images) claim(digest string) bool {
	if s == nil {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.byDigest[digest]; ok || s.building[digest] {
		return false
	}
	s.building[digest] = true
	return true
}

// finish ends a claim: content, when not nil, is the verified image.
func (s *Images) finish(digest string, content []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.building, digest)
	if content != nil {
		s.byDigest[digest] = content
	}
}

// encoded is what a transfer of an encoded payload needs besides a plain
// one. Owned by the loop goroutine.
type encoded struct {
	encoding string
	size     int64  // payload bytes
	base     string // bsdiff: SHA-256 of the base image
	dec      *delta.Decoder
	out      targetOut // where dec writes the image
	target   int64     // image bytes written
	// ckpt is the newest decoder checkpoint seen at which the image hash
	// stood at exactly ckpt.Target bytes; ckptHash is that hash's state.
	// The state file saves these two, never the running ones.
	ckpt     delta.Checkpoint
	ckptHash []byte
}

// targetOut receives the decoder's output: the image, in order.
type targetOut struct {
	a   *Agent
	t   *transfer
	err error // a storage error of the Device, which is not the payload's fault
}

// errTargetTooLong is a payload that reconstructs more than the image's size.
var errTargetTooLong = fmt.Errorf("image longer than the offer's size: %w", delta.ErrCorrupt)

func (w *targetOut) Write(p []byte) (int, error) {
	a, t := w.a, w.t
	e := t.enc
	a.noteCheckpoint(t)
	if e.target+int64(len(p)) > t.fw.Size {
		return 0, errTargetTooLong
	}
	if d := a.cfg.Device; d != nil {
		if err := d.WriteImage(t.update, e.target, p); err != nil {
			w.err = err
			return 0, err
		}
	}
	t.hash.Write(p)
	t.copyOut(p)
	e.target += int64(len(p))
	return len(p), nil
}

// size is the number of bytes the transfer's offsets count: the payload's
// for an encoded transfer, else the image's.
func (t *transfer) size() int64 {
	if t.enc != nil {
		return t.enc.size
	}
	return t.fw.Size
}

// encoding is the transfer's payload encoding ("" for the image itself).
func (t *transfer) encoding() string {
	if t.enc != nil {
		return t.enc.encoding
	}
	return ""
}

// copyOut appends image bytes to the copy a simulated device makes for
// Images, if it makes one.
func (t *transfer) copyOut(p []byte) {
	if t.copy != nil {
		t.copy = append(t.copy, p...)
	}
}

// newEncoded prepares the encoded side of a new transfer of o.
func newEncoded(o protocol.Offer) *encoded {
	e := &encoded{encoding: o.Encoding, size: o.PayloadSize, base: strings.ToLower(o.Base)}
	e.ckptHash, _ = sha256.New().(encoding.BinaryMarshaler).MarshalBinary()
	return e
}

// encodings is what the agent decodes: Config.Encodings, or every encoding
// it can when that is nil, less bsdiff without a readable base.
func (a *Agent) encodings() []string {
	want := a.cfg.Encodings
	if want == nil {
		want = []string{protocol.EncodingDeflate, protocol.EncodingBSDiff}
	}
	out := make([]string, 0, len(want))
	for _, e := range want {
		switch {
		case e == protocol.EncodingDeflate, e == protocol.EncodingBSDiff && a.hasBase():
			out = append(out, e)
		}
	}
	return out
}

// canDecode reports whether the agent decodes the encoding enc.
func (a *Agent) canDecode(enc string) bool {
	for _, e := range a.encodings() {
		if e == enc {
			return true
		}
	}
	return false
}

// hasBase reports whether the agent can read the image it runs.
func (a *Agent) hasBase() bool {
	if a.image == "" {
		return false
	}
	if d := a.cfg.Device; d != nil {
		_, ok := d.(BaseImage)
		return ok
	}
	_, ok := a.cfg.Images.get(a.image)
	return ok
}

// caps is the hello's caps: Config.Caps and the encodings the agent decodes.
func (a *Agent) caps() []string {
	enc := a.encodings()
	if len(enc) == 0 {
		return a.cfg.Caps
	}
	return append(append(make([]string, 0, len(a.cfg.Caps)+len(enc)), a.cfg.Caps...), enc...)
}

// encodingRefusal says why the agent refuses an encoded offer, or "".
func (a *Agent) encodingRefusal(o protocol.Offer) fleet.Reason {
	switch {
	case o.Encoding == "":
		return ""
	case !a.canDecode(o.Encoding):
		return fleet.ReasonUnsupportedEncoding
	case o.Encoding == protocol.EncodingBSDiff && !strings.EqualFold(o.Base, a.image):
		return fleet.ReasonBaseMismatch
	}
	return ""
}

// sameEncoding reports whether o sends t's payload: the same encoding, size
// and base.
func sameEncoding(t *transfer, o protocol.Offer) bool {
	if t.enc == nil || o.Encoding == "" {
		return t.enc == nil && o.Encoding == ""
	}
	return t.enc.encoding == o.Encoding && t.enc.size == o.PayloadSize && strings.EqualFold(t.enc.base, o.Base)
}

// baseReader opens the image the device runs, the base of a bsdiff payload.
func (a *Agent) baseReader() (io.ReaderAt, int64, error) {
	if d := a.cfg.Device; d != nil {
		b, ok := d.(BaseImage)
		if !ok {
			return nil, 0, errors.New("the device cannot read its running image")
		}
		return b.RunningImage()
	}
	b, ok := a.cfg.Images.get(a.image)
	if !ok {
		return nil, 0, fmt.Errorf("no content for image %s", a.image)
	}
	return bytes.NewReader(b), int64(len(b)), nil
}

// startDecoder creates t's decoder at its checkpoint (0, or where a restart
// resumes).
func (a *Agent) startDecoder(t *transfer) error {
	e := t.enc
	var base io.ReaderAt
	var baseSize int64
	if e.encoding == protocol.EncodingBSDiff {
		var err error
		if base, baseSize, err = a.baseReader(); err != nil {
			return err
		}
	}
	e.out = targetOut{a: a, t: t}
	e.target = e.ckpt.Target
	dec, err := delta.NewDecoder(e.encoding, base, baseSize, &e.out, e.ckpt)
	if err != nil {
		return err
	}
	dec.ExpectTarget(t.fw.Size)
	e.dec = dec
	return nil
}

// decode feeds a chunk of the payload to the decoder; false: the transfer
// ended (failed, reported).
func (a *Agent) decode(t *transfer, p []byte) bool {
	e := t.enc
	if e.dec == nil {
		if err := a.startDecoder(t); err != nil {
			a.logger().Warn("decoder not started", "update", t.update, "encoding", e.encoding, "err", err)
			a.endEncoded(t, fleet.ReasonStorageError)
			return false
		}
	}
	if _, err := e.dec.Write(p); err != nil {
		a.decodeFailed(t, err)
		return false
	}
	a.noteCheckpoint(t)
	return true
}

// finishDecode checks that the payload ended at a segment boundary; false:
// the transfer ended (failed, reported).
func (a *Agent) finishDecode(t *transfer) bool {
	e := t.enc
	if e.dec == nil { // an empty payload; the decoder says whether that is one
		if err := a.startDecoder(t); err != nil {
			a.decodeFailed(t, err)
			return false
		}
	}
	if err := e.dec.Close(); err != nil {
		a.decodeFailed(t, err)
		return false
	}
	e.dec = nil // its buffers go before the install
	return true
}

// stopDecoder ends t's decoder, if it runs: its coroutine ends only then.
func stopDecoder(t *transfer) {
	if t == nil || t.enc == nil || t.enc.dec == nil {
		return
	}
	_ = t.enc.dec.Close() // the payload is abandoned: its error says nothing
	t.enc.dec = nil
}

// decodeFailed ends a transfer whose payload the decoder refused: bad_digest
// (nothing was or will be installed), or storage_error when the Device
// failed to store the output.
func (a *Agent) decodeFailed(t *transfer, err error) {
	reason := fleet.ReasonBadDigest
	if t.enc.out.err != nil && !errors.Is(err, delta.ErrCorrupt) {
		reason = fleet.ReasonStorageError
	}
	a.logger().Info("payload refused", "update", t.update, "encoding", t.enc.encoding, "offset", t.expected, "reason", reason, "err", err)
	a.endEncoded(t, reason)
}

func (a *Agent) endEncoded(t *transfer, reason fleet.Reason) {
	stopDecoder(t)
	a.setHeld(nil)
	a.report(protocol.Report{Update: t.update, Handle: t.handle, State: fleet.StateFailed, Reason: reason})
}

// noteCheckpoint records the decoder's checkpoint with the hash state, when
// the image written so far ends exactly there.
func (a *Agent) noteCheckpoint(t *transfer) {
	e := t.enc
	if e.dec == nil {
		return
	}
	cp := e.dec.Checkpoint()
	if cp == e.ckpt || cp.Target != e.target {
		return
	}
	st, err := t.hash.(encoding.BinaryMarshaler).MarshalBinary()
	if err != nil {
		return
	}
	e.ckpt, e.ckptHash = cp, st
}

// startCopy makes a simulated device copy the image it downloads into
// Images when no other device holds or copies it.
func (a *Agent) startCopy(t *transfer) {
	if a.cfg.Device != nil || a.cfg.Images == nil || t.fw.Size > maxBuildSize {
		return
	}
	d := strings.ToLower(t.fw.SHA256)
	if !protocol.ValidSHA256(d) || !a.cfg.Images.claim(d) {
		return
	}
	t.copy = make([]byte, 0, t.fw.Size) // not nil, even for an empty image
}

// endCopy ends t's copy: into Images when ok (the digest verified), else
// dropped.
func (a *Agent) endCopy(t *transfer, ok bool) {
	if t.copy == nil {
		return
	}
	var content []byte
	if ok && int64(len(t.copy)) == t.fw.Size {
		content = t.copy
	}
	a.cfg.Images.finish(strings.ToLower(t.fw.SHA256), content)
	t.copy = nil
}
