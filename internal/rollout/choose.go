package rollout

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
)

// DefaultPayloadWait bounds how long a device waits in the queue for a
// delta from its image that is still being built.
const DefaultPayloadWait = fleet.DefaultPayloadWait

// Payload choice (docs/ARCHITECTURE.md, Payloads). When a device starts an
// attempt, it is sent, first that applies:
//
//  1. a delta, when the update allows deltas, the device's hello lists the
//     bsdiff capability and names as its image a stored firmware from
//     which a delta to the target is ready;
//  2. the compressed image, when the update allows compression, the device
//     decodes deflate (or bsdiff, which implies it) and a compressed copy
//     is ready;
//  3. the image itself.
//
// A delta from the device's image still being built makes the device wait
// in the queue (it takes no slot) until it is ready or failed, at most
// PayloadWait. The choice holds for the whole attempt, a resume after a
// reconnect or a restart included (it is stored with the progress row),
// unless the device holds a transfer of another payload: then it is made
// again and the offer starts from offset 0.

// payload is one payload a run's sessions read chunks from: an encoded
// copy of the run's image. It is opened on first use and shared by every
// session of the run, never copied per device. The image itself is the
// run's blob, and a target without a payload (nil) is sent it.
type payload struct {
	encoding string // fleet.EncodingDeflate or fleet.EncodingDelta
	base     string // the base image's SHA-256 (deltas)
	size     int64
	sha256   string
	path     string // relative to the data directory
	blob     blob   // nil until opened
	broken   bool   // it failed to open: no device is sent it
}

// payloadKey names a payload within a run: its encoding and base image.
type payloadKey struct{ encoding, base string }

// runPayloads are a run's payloads: those ready, by key, and the bases of
// deltas still being built.
type runPayloads struct {
	ready   map[payloadKey]*payload
	pending map[string]bool // base image SHA-256 -> a delta from it is being built
	waitQ   []*target       // devices waiting for a pending delta, in the order they came
}

// deviceCaps are the payload capabilities a device states in its hello.
const (
	capDeflate uint8 = 1 << iota
	capBSDiff
)

// capsOf returns the payload capabilities in a hello's caps.
func capsOf(caps []string) uint8 {
	var c uint8
	for _, s := range caps {
		switch s {
		case protocol.EncodingDeflate:
			c |= capDeflate
		case protocol.EncodingBSDiff:
			c |= capBSDiff | capDeflate // its segments are deflated
		}
	}
	return c
}

// protocolEncoding is the offer's encoding of a payload encoding.
func protocolEncoding(enc string) string {
	switch enc {
	case fleet.EncodingDeflate:
		return protocol.EncodingDeflate
	case fleet.EncodingDelta:
		return protocol.EncodingBSDiff
	}
	return ""
}

// fleetEncoding is the payload encoding of an offer's (or a held
// transfer's) encoding.
func fleetEncoding(enc string) string {
	switch enc {
	case protocol.EncodingDeflate:
		return fleet.EncodingDeflate
	case protocol.EncodingBSDiff:
		return fleet.EncodingDelta
	}
	return fleet.EncodingFull
}

// size is the size of t's payload: what its offsets count.
func (t *target) size() int64 {
	if t.pl != nil {
		return t.pl.size
	}
	return t.r.fw.Size
}

// encoding names t's payload.
func (t *target) encoding() string {
	if t.pl != nil {
		return t.pl.encoding
	}
	return fleet.EncodingFull
}

// key is t's payload key.
func (t *target) key() payloadKey { return keyOf(t.pl) }

// loadPayloads reads the run's payloads from the store: those ready (an
// opened one is kept) and the deltas still pending. It runs outside the
// loop for a new run, on the loop when the builder says one changed.
func (e *Engine) loadPayloads(ctx context.Context, r *run) error {
	ps, err := e.Store.Payloads(ctx, r.fw.ID)
	if err != nil {
		return fmt.Errorf("payloads of %s: %w", r.fw.ID, err)
	}
	ready := map[payloadKey]*payload{}
	pending := map[string]bool{}
	for _, p := range ps {
		k := payloadKey{p.Encoding, p.BaseSHA256}
		switch p.State {
		case fleet.PayloadReady:
			if old := r.pl.ready[k]; old != nil && old.size == p.Size && old.sha256 == p.SHA256 {
				ready[k] = old
				continue
			}
			ready[k] = &payload{encoding: p.Encoding, base: p.BaseSHA256, size: p.Size, sha256: p.SHA256, path: p.Path}
		case fleet.PayloadPending:
			if p.Encoding == fleet.EncodingDelta {
				pending[p.BaseSHA256] = true
			}
		}
	}
	// A payload no longer listed (its base deleted) stays open for the
	// sessions that read it; it closes with the run.
	for k, old := range r.pl.ready {
		if ready[k] != old && old.blob != nil {
			r.retired = append(r.retired, old)
		}
	}
	r.pl.ready, r.pl.pending = ready, pending
	return nil
}

// PayloadsChanged tells the engine that the payloads of a firmware were
// built or failed: runs reload theirs at the next tick, and the devices
// that waited for one are admitted. Safe from any goroutine; it never
// blocks.
func (e *Engine) PayloadsChanged(firmwareID string) {
	e.payloadsDirty.Store(true)
}

// refreshPayloads reloads the payloads of every run after a change, and
// admits the devices that waited for one; it also lets go the devices
// whose wait is over.
func (e *Engine) refreshPayloads(now time.Time) {
	dirty := e.payloadsDirty.Swap(false)
	for _, r := range e.runs {
		if dirty {
			if err := e.loadPayloads(contextBG, r); err != nil {
				e.Logger.Error("reload payloads", "update", r.u.ID, "err", err)
			}
		}
		if len(r.pl.waitQ) == 0 {
			continue
		}
		expired := false
		for _, t := range r.pl.waitQ {
			if now.Sub(t.waitSince) >= e.payloadWait() {
				expired = true
				break
			}
		}
		if !dirty && !expired {
			continue
		}
		// Back to the front of their queues, in order (they are still
		// marked queued): admit decides again.
		var ready, again []*target
		for _, t := range r.pl.waitQ {
			if t.started {
				again = append(again, t)
			} else {
				ready = append(ready, t)
			}
		}
		r.pl.waitQ = nil
		r.readyQ = append(ready, r.readyQ...)
		r.againQ = append(again, r.againQ...)
		r.dirty = true
		e.admit(r)
	}
}

func (e *Engine) payloadWait() time.Duration {
	if e.PayloadWait <= 0 {
		return DefaultPayloadWait
	}
	return e.PayloadWait
}

// needsPick reports whether t's next offer chooses its payload: a new
// attempt, or one whose choice was dropped.
func (t *target) needsPick() bool {
	return !t.picked || t.p.State == fleet.StateQueued && !t.resume
}

// waitsForPayload reports whether t, about to start, must wait for a
// delta from its device's image that is being built; it then joins the
// run's wait queue.
func (e *Engine) waitsForPayload(t *target, now time.Time) bool {
	r := t.r
	if !t.needsPick() || r.u.Policy.NoDelta || len(r.pl.pending) == 0 {
		return false
	}
	d := e.limits[t.p.DeviceID]
	if d.caps&capBSDiff == 0 || !r.pl.pending[d.image] {
		return false
	}
	if t.waitSince.IsZero() {
		t.waitSince = now
	}
	if now.Sub(t.waitSince) >= e.payloadWait() {
		return false
	}
	t.queued = true
	r.pl.waitQ = append(r.pl.waitQ, t)
	return true
}

// choose returns the payload t's device is sent (nil: the image itself).
func (e *Engine) choose(t *target) *payload {
	r := t.r
	pol := r.u.Policy
	d := e.limits[t.p.DeviceID]
	if !pol.NoDelta && d.caps&capBSDiff != 0 && d.image != "" && d.image != r.fw.SHA256 {
		if pl := r.pl.ready[payloadKey{fleet.EncodingDelta, d.image}]; e.openPayload(r, pl) {
			return pl
		}
	}
	if !pol.NoCompress && d.caps&capDeflate != 0 {
		if pl := r.pl.ready[payloadKey{fleet.EncodingDeflate, ""}]; e.openPayload(r, pl) {
			return pl
		}
	}
	return nil
}

// pick chooses t's payload for its attempt, and starts the attempt's
// offsets afresh when it differs from the payload they counted.
func (e *Engine) pick(t *target) {
	pl := e.choose(t)
	t.waitSince = time.Time{}
	if !t.picked || t.key() != keyOf(pl) {
		// Offsets of another payload (or of none) count nothing here.
		t.acked, t.sent, t.credited, t.sentMax, t.saved, t.p.Offset = 0, 0, 0, 0, 0, 0
	}
	t.setPayload(pl)
	t.picked = true
}

func keyOf(pl *payload) payloadKey {
	if pl == nil {
		return payloadKey{fleet.EncodingFull, ""}
	}
	return payloadKey{pl.encoding, pl.base}
}

// setPayload makes pl t's payload, keeping the run's counts by encoding.
func (t *target) setPayload(pl *payload) {
	r := t.r
	if t.p.Encoding != "" {
		r.encodings[t.p.Encoding]--
	}
	t.pl = pl
	t.p.Encoding = t.encoding()
	t.p.PayloadSize = t.size()
	r.encodings[t.p.Encoding]++
}

// resolveRestored finds the payload of a target restored from the store,
// once: when it is gone, the target's next offer chooses again.
func (e *Engine) resolveRestored(t *target) {
	if !t.restored {
		return
	}
	t.restored = false
	if !e.restorePayload(t) {
		t.picked = false
	}
}

// restorePayload resolves the payload a target restored from the store
// was sent, from its stored encoding and size and its device's image; it
// reports false when that payload is gone.
func (e *Engine) restorePayload(t *target) bool {
	switch t.p.Encoding {
	case fleet.EncodingFull:
		return t.p.PayloadSize == t.r.fw.Size
	case fleet.EncodingDeflate, fleet.EncodingDelta:
		base := ""
		if t.p.Encoding == fleet.EncodingDelta {
			base = e.limits[t.p.DeviceID].image
		}
		pl := t.r.pl.ready[payloadKey{t.p.Encoding, base}]
		if pl == nil || pl.size != t.p.PayloadSize || !e.openPayload(t.r, pl) {
			return false
		}
		t.pl = pl
		return true
	}
	return false
}

// keepPayload drops the payload choice of a target whose device, saying
// hello mid-download, holds no transfer of the update or one of another
// payload (another encoding, or a delta from an image it no longer runs):
// its next offer chooses again and starts from offset 0. A device that
// holds the whole download keeps it: the payload no longer matters.
func (e *Engine) keepPayload(t *target, h protocol.Hello, holds bool) {
	e.resolveRestored(t)
	switch st := t.p.State; {
	case !t.picked:
	case st == fleet.StateOffered || st == fleet.StateAccepted || st == fleet.StateDownloading || st == fleet.StateQueued && t.resume:
		if !holds || !e.heldMatches(t, h.Transfer, h.Image) {
			t.picked = false
		}
	}
}

// heldMatches reports whether the transfer a device holds (its hello's)
// counts bytes of t's payload, so that it may resume.
func (e *Engine) heldMatches(t *target, held *protocol.Held, image string) bool {
	k := payloadKey{fleetEncoding(held.Encoding), ""}
	if k.encoding == fleet.EncodingDelta {
		k.base = image
	}
	return t.picked && k == t.key()
}

// openPayload opens pl for the run's sessions on first use, and reports
// whether it can be read. A file that is missing or of another size than
// recorded is not sent (logged once): the device gets another payload.
// A payload of at most memBlobMax bytes is held in memory, its SHA-256
// checked.
func (e *Engine) openPayload(r *run, pl *payload) bool {
	if pl == nil || pl.broken {
		return false
	}
	if pl.blob != nil {
		return true
	}
	if err := e.loadPayloadBlob(pl); err != nil {
		pl.broken = true
		e.Logger.Error("payload unusable: devices get another one", "update", r.u.ID, "firmware", r.fw.ID,
			"encoding", pl.encoding, "err", err)
		return false
	}
	return true
}

func (e *Engine) loadPayloadBlob(pl *payload) error {
	f, err := os.Open(filepath.Join(e.Store.DataDir, pl.path))
	if err != nil {
		return err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	if fi.Size() != pl.size {
		f.Close()
		return fmt.Errorf("payload %s is %d bytes, recorded %d", pl.path, fi.Size(), pl.size)
	}
	if pl.size > memBlobMax {
		pl.blob = f
		return nil
	}
	defer f.Close()
	b := make([]byte, pl.size)
	if _, err := io.ReadFull(f, b); err != nil {
		return err
	}
	if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != pl.sha256 {
		return fmt.Errorf("payload %s: SHA-256 differs from the recorded one", pl.path)
	}
	pl.blob = memBlob{bytes.NewReader(b)}
	return nil
}

// closePayloads closes the payloads the run opened.
func (r *run) closePayloads() {
	for _, pl := range r.pl.ready {
		if pl.blob != nil {
			pl.blob.Close()
			pl.blob = nil
		}
	}
	for _, pl := range r.retired {
		if pl.blob != nil {
			pl.blob.Close()
			pl.blob = nil
		}
	}
	r.retired = nil
}

// encodingCounts returns a copy of the run's counts of started devices by
// payload encoding, without zeros.
func (r *run) encodingCounts() map[string]int {
	out := map[string]int{}
	for k, n := range r.encodings {
		if n > 0 {
			out[k] = n
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// payloadBases returns the stored firmware of the target's name and model
// that the devices run (by their hello's image), other than the target
// itself: the bases a delta is wanted from for an update.
func payloadBases(family []fleet.Firmware, target fleet.Firmware, devices []fleet.Device) []fleet.Firmware {
	images := map[string]bool{}
	for _, d := range devices {
		if d.Image != "" && d.Image != target.SHA256 {
			images[d.Image] = true
		}
	}
	var out []fleet.Firmware
	seen := map[string]bool{}
	for _, fw := range family {
		if fw.ID != target.ID && images[fw.SHA256] && !seen[fw.SHA256] {
			seen[fw.SHA256] = true
			out = append(out, fw)
		}
	}
	return slices.Clip(out)
}

// wantPayloads asks the builder for the deltas to the new run's image
// from the images its devices run (those stored as firmware of the same
// name and model), then loads the run's payloads: the devices that can
// take one of those deltas wait for it (bounded by PayloadWait).
func (e *Engine) wantPayloads(ctx context.Context, r *run, devices []fleet.Device) error {
	if e.Builder != nil && !(r.u.Policy.NoDelta && r.u.Policy.NoCompress) {
		family, err := e.Store.FirmwareFamily(ctx, r.fw.Name, r.fw.Model)
		if err != nil {
			return err
		}
		var bases []fleet.Firmware
		if !r.u.Policy.NoDelta {
			bases = payloadBases(family, r.fw, devices)
		}
		if err := e.Builder.Want(ctx, r.fw, bases); err != nil {
			// The update goes on: its devices get the images it has.
			e.Logger.Error("queue payloads", "firmware", r.fw.ID, "err", err)
		}
	}
	return e.loadPayloads(ctx, r)
}

// reofferWhole answers a device that refused an encoded payload because
// what the orchestrator knew of it was out of date: base_mismatch (it no
// longer runs the delta's base) or unsupported_encoding (it no longer
// decodes that encoding). Neither is the device's verdict on the update:
// the record is corrected for this connection and the device is offered
// again at once, choosing anew. It reports false, and the rejection
// stands, for any other reason or when the refused offer carried the
// image itself.
func (e *Engine) reofferWhole(t *target, reason fleet.Reason) bool {
	if t.pl == nil || t.p.State != fleet.StateOffered {
		return false
	}
	d := e.limits[t.p.DeviceID]
	switch reason {
	case fleet.ReasonBaseMismatch:
		d.image = ""
	case fleet.ReasonUnsupportedEncoding:
		d.caps = 0
	default:
		return false
	}
	e.limits[t.p.DeviceID] = d
	t.picked = false
	e.offer(t)
	return true
}
