package rollout_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/agent/delta"
	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
	"github.com/flotaio/flota/internal/rollout"
)

// compressible returns n bytes of words from a small vocabulary: an image
// that deflate shrinks, as real firmware images shrink.
func compressible(n int, seed uint64) []byte {
	words := []string{"flota ", "firmware ", "update ", "device ", "chunk ", "window ", "ack ", "offset ", "\x00\x01\x02\x03", "\xff\xfe"}
	rng := rand.New(rand.NewPCG(seed, 7))
	var b bytes.Buffer
	for b.Len() < n {
		b.WriteString(words[rng.IntN(len(words))])
		if rng.IntN(8) == 0 {
			b.WriteByte(byte(rng.Uint32()))
		}
	}
	return b.Bytes()[:n]
}

// edited returns base with a few small changes and a 4 KiB insertion.
func edited(base []byte, seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, 9))
	out := append([]byte(nil), base...)
	for i := 0; i < 10; i++ {
		at := rng.IntN(len(out) - 64)
		for j := 0; j < 32; j++ {
			out[at+j] ^= byte(rng.Uint32()) | 1
		}
	}
	ins := make([]byte, 4096)
	for i := range ins {
		ins[i] = byte(rng.Uint32())
	}
	at := len(out) / 2
	return append(out[:at:at], append(ins, out[at:]...)...)
}

// withBuilder gives the harness's engine a payload builder, configured by
// configure before it opens.
func withBuilder(configure func(*rollout.Engine, *rollout.Builder)) func(*rollout.Engine) {
	return func(e *rollout.Engine) {
		b := rollout.NewBuilder(e.Store, e.Logger)
		b.RetryMin, b.RetryMax = 10*time.Millisecond, 50*time.Millisecond
		e.Builder = b
		if configure != nil {
			configure(e, b)
		}
	}
}

func (h *harness) addImage(img []byte, version string) fleet.Firmware {
	h.t.Helper()
	fw, err := h.store.AddFirmware(context.Background(), fleet.Firmware{Name: "app", Version: version, Model: "m1"}, bytes.NewReader(img))
	require.NoError(h.t, err)
	return fw
}

// waitPayloads waits until every payload of fw is past pending, and
// returns them by encoding and base firmware ID.
func (h *harness) waitPayloads(fw fleet.Firmware, n int) map[[2]string]fleet.Payload {
	h.t.Helper()
	out := map[[2]string]fleet.Payload{}
	eventually(h.t, 60*time.Second, func() bool {
		ps, err := h.store.Payloads(context.Background(), fw.ID)
		require.NoError(h.t, err)
		clear(out)
		for _, p := range ps {
			if p.State == fleet.PayloadPending {
				return false
			}
			out[[2]string{p.Encoding, p.Base}] = p
		}
		return len(ps) == n
	}, "payloads built")
	return out
}

// twoVersions stores a base image (1.0.0) and an edited target (1.1.0) of
// size bytes, and waits for their payloads: the base's compressed copy,
// the target's and the delta between them.
func (h *harness) twoVersions(size int, seed uint64) (base, target []byte, baseFW, fw fleet.Firmware) {
	h.t.Helper()
	base = compressible(size, seed)
	baseFW = h.addImage(base, "1.0.0")
	h.waitPayloads(baseFW, 1)
	target = edited(base, seed+1)
	fw = h.addImage(target, "1.1.0")
	h.waitPayloads(fw, 2)
	return base, target, baseFW, fw
}

// payloadDevice is a scripted device that runs image and decodes caps.
func payloadDevice(t *testing.T, h *harness, id string, image []byte, caps ...string) *scripted {
	s := newScripted(t, h, id, "1.0.0")
	s.helloImage(image, caps, nil)
	h.waitImage(id, image) // the engine took this hello, not only the first
	return s
}

// waitImage waits until the store holds the image device said it runs.
func (h *harness) waitImage(device string, image []byte) {
	h.t.Helper()
	eventually(h.t, 10*time.Second, func() bool {
		require.NoError(h.t, h.store.Flush(context.Background()))
		d, err := h.store.Device(context.Background(), device)
		return err == nil && d.Image == sha(image)
	}, "device image stored")
}

func (s *scripted) helloImage(image []byte, caps []string, held *protocol.Held) {
	s.send(protocol.KindHello, protocol.Hello{V: 1, Model: "m1", Version: "1.0.0", Image: sha(image), Caps: caps, Transfer: held})
}

// downloadPayload accepts o from offset 0, receives its payload and
// acknowledges it, and returns it.
func (s *scripted) downloadPayload(o protocol.Offer) []byte {
	s.t.Helper()
	size := o.Firmware.Size
	if o.Encoding != "" {
		size = o.PayloadSize
	}
	got := make([]byte, 0, size)
	deadline := time.After(20 * time.Second)
	for int64(len(got)) < size {
		select {
		case f := <-s.chunks:
			if f.Handle == o.Handle && int64(f.Offset) == int64(len(got)) {
				got = append(got, f.Payload...)
			}
			s.send(protocol.KindAck, protocol.Ack{V: 1, Handle: o.Handle, Offset: int64(len(got))})
		case <-deadline:
			s.t.Fatalf("%s: payload download stalled at %d of %d", s.id, len(got), size)
		}
	}
	return got
}

// decode rebuilds the image an offer's payload stands for.
func decode(t *testing.T, o protocol.Offer, payload, base []byte) []byte {
	t.Helper()
	if o.Encoding == "" {
		return payload
	}
	var out bytes.Buffer
	d, err := delta.NewDecoder(o.Encoding, bytes.NewReader(base), int64(len(base)), &out, delta.Checkpoint{})
	require.NoError(t, err)
	_, err = d.Write(payload)
	require.NoError(t, err)
	require.NoError(t, d.Close())
	return out.Bytes()
}

func TestEngine_DevicesAreOfferedTheSmallestPayloadTheyDecode(t *testing.T) {
	h := newHarnessWith(t, testLogger(t), withBuilder(nil))
	base := compressible(200_000, 1)
	target := edited(base, 2)
	baseFW := h.addImage(base, "1.0.0")
	h.waitPayloads(baseFW, 1)
	fw := h.addImage(target, "1.1.0")
	ps := h.waitPayloads(fw, 2) // compressed, and a delta from 1.0.0
	deflated, diff := ps[[2]string{fleet.EncodingDeflate, ""}], ps[[2]string{fleet.EncodingDelta, baseFW.ID}]
	require.Equal(t, fleet.PayloadReady, deflated.State, deflated.Error)
	require.Equal(t, fleet.PayloadReady, diff.State, diff.Error)
	assert.Less(t, diff.Size, deflated.Size)
	assert.Equal(t, "1.0.0", diff.BaseVersion)

	withDelta := payloadDevice(t, h, "delta", base, "bsdiff")
	compress := payloadDevice(t, h, "deflate", base, "deflate")
	plain := payloadDevice(t, h, "plain", base)
	other := payloadDevice(t, h, "other", compressible(200_000, 3), "bsdiff") // runs no stored image
	h.waitDevices(4)
	u := h.create(fw, fleet.Policy{ChunkSize: 4096, Window: 8}, fleet.Selector{})

	cases := []struct {
		d        *scripted
		encoding string
		size     int64
	}{
		{withDelta, protocol.EncodingBSDiff, diff.Size},
		{compress, protocol.EncodingDeflate, deflated.Size},
		{plain, "", 0},
		{other, protocol.EncodingDeflate, deflated.Size},
	}
	for _, c := range cases {
		o := c.d.offer()
		require.Equal(t, c.encoding, o.Encoding, c.d.id)
		require.Equal(t, c.size, o.PayloadSize, c.d.id)
		require.Equal(t, fw.SHA256, o.Firmware.SHA256, "the offer describes the target image")
		if o.Encoding == protocol.EncodingBSDiff {
			require.Equal(t, sha(base), o.Base)
		}
		c.d.report(o, fleet.StateAccepted, 0, "")
		img := decode(t, o, c.d.downloadPayload(o), base)
		require.Equal(t, sha(target), sha(img), "%s rebuilds the target", c.d.id)
		c.d.finish(o, u)
	}
	s := h.waitEnd(u.ID, 30*time.Second)
	assert.Equal(t, 4, s.Counts[fleet.StateSucceeded])
	assert.Equal(t, map[string]int{fleet.EncodingDelta: 1, fleet.EncodingDeflate: 2, fleet.EncodingFull: 1}, s.Encodings)
	assert.Equal(t, 4*fw.Size, s.ImageBytes)
	assert.Equal(t, diff.Size+2*deflated.Size+fw.Size, s.BytesSent, "bytes on the wire are payload bytes")

	p := h.deviceState(u.ID, "delta")
	assert.Equal(t, fleet.EncodingDelta, p.Encoding)
	assert.Equal(t, diff.Size, p.PayloadSize)
	assert.Equal(t, diff.Size, p.WireBytes)
	p = h.deviceState(u.ID, "plain")
	assert.Equal(t, fleet.EncodingFull, p.Encoding)
	assert.Equal(t, fw.Size, p.WireBytes)
}

func TestEngine_UpdateSwitchesDeltasAndCompressionOff(t *testing.T) {
	h := newHarnessWith(t, testLogger(t), withBuilder(nil))
	base, _, _, fw := h.twoVersions(100_000, 4)

	for _, c := range []struct {
		name     string
		pol      fleet.Policy
		encoding string
	}{
		{"no_delta", fleet.Policy{NoDelta: true}, protocol.EncodingDeflate},
		{"no_delta_no_compress", fleet.Policy{NoDelta: true, NoCompress: true}, ""},
		{"no_compress", fleet.Policy{NoCompress: true}, protocol.EncodingBSDiff},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := payloadDevice(t, h, "dev-"+c.name, base, "bsdiff")
			h.waitDevices(1)
			u := h.create(fw, c.pol, fleet.Selector{Devices: []string{d.id}})
			o := d.offer()
			assert.Equal(t, c.encoding, o.Encoding)
			require.NoError(t, h.engine.Cancel(context.Background(), u.ID))
			h.waitEnd(u.ID, 10*time.Second)
		})
	}
}

func TestEngine_DeviceWaitsForADeltaBeingBuiltThenGetsIt(t *testing.T) {
	release := make(chan struct{})
	h := newHarnessWith(t, testLogger(t), withBuilder(func(_ *rollout.Engine, b *rollout.Builder) {
		b.SetCodec(delta.Compress, func(dst io.Writer, base, target []byte) (int64, error) {
			<-release
			return delta.Diff(dst, base, target, delta.DiffOptions{})
		})
	}))
	base := compressible(100_000, 6)
	baseFW := h.addImage(base, "1.0.0")
	h.waitPayloads(baseFW, 1)
	// Added without the builder: the update asks for the delta.
	h.store.OnFirmwareAdded(nil)
	fw := h.addImage(edited(base, 7), "1.1.0")

	d := payloadDevice(t, h, "waiter", base, "bsdiff")
	plain := payloadDevice(t, h, "plain", base)
	h.waitImage("waiter", base)
	u := h.create(fw, fleet.Policy{}, fleet.Selector{})
	assert.Equal(t, "", plain.offer().Encoding, "a device that cannot take a delta does not wait")
	select {
	case o := <-d.offers:
		t.Fatalf("offered %q while its delta is being built", o.Encoding)
	case <-time.After(time.Second):
	}
	s := h.summary(u.ID)
	assert.Equal(t, 1, s.PayloadsPending)
	assert.Contains(t, s.WaitingDetail, "wait for a delta being built")
	assert.Equal(t, 1, s.InFlight, "the waiting device holds no slot")

	close(release)
	o := d.offer()
	assert.Equal(t, protocol.EncodingBSDiff, o.Encoding)
	assert.Zero(t, h.summary(u.ID).PayloadsPending)
}

func TestEngine_DeviceWaitsForADeltaAtMostPayloadWait(t *testing.T) {
	release := make(chan struct{})
	h := newHarnessWith(t, testLogger(t), withBuilder(func(e *rollout.Engine, b *rollout.Builder) {
		e.PayloadWait = 500 * time.Millisecond
		b.SetCodec(nil, func(dst io.Writer, base, target []byte) (int64, error) {
			<-release
			return 0, errors.New("released")
		})
	}))
	t.Cleanup(func() { close(release) }) // before the engine's Close, which waits for the build
	base := compressible(50_000, 8)
	h.addImage(base, "1.0.0")
	fw := h.addImage(edited(base, 9), "1.1.0")
	d := payloadDevice(t, h, "patient", base, "bsdiff")
	h.waitDevices(1)
	h.create(fw, fleet.Policy{}, fleet.Selector{})
	o := d.offer()
	assert.Equal(t, "", o.Encoding, "after its wait, the image whole (no compressed copy either)")
}

func TestEngine_FailedDeltaBuildSendsAnotherPayload(t *testing.T) {
	h := newHarnessWith(t, testLogger(t), withBuilder(func(_ *rollout.Engine, b *rollout.Builder) {
		b.SetCodec(delta.Compress, func(io.Writer, []byte, []byte) (int64, error) {
			return 0, errors.New("diff exploded")
		})
	}))
	base := compressible(50_000, 10)
	baseFW := h.addImage(base, "1.0.0")
	h.waitPayloads(baseFW, 1)
	fw := h.addImage(edited(base, 11), "1.1.0")
	ps := h.waitPayloads(fw, 2)
	failed := ps[[2]string{fleet.EncodingDelta, baseFW.ID}]
	assert.Equal(t, fleet.PayloadFailed, failed.State)
	assert.Contains(t, failed.Error, "diff exploded")
	assert.Empty(t, failed.Path)
	eventually(t, 5*time.Second, func() bool { return h.engine.Builder.Stats().Failed == 1 }, "counted failed")

	d := payloadDevice(t, h, "fallback", base, "bsdiff")
	h.waitDevices(1)
	h.create(fw, fleet.Policy{}, fleet.Selector{})
	assert.Equal(t, protocol.EncodingDeflate, d.offer().Encoding)
}

func TestEngine_HeldTransferOfAnotherPayloadIsOfferedFromZero(t *testing.T) {
	h := newHarnessWith(t, testLogger(t), withBuilder(nil))
	base, _, _, fw := h.twoVersions(300_000, 12)
	d := payloadDevice(t, h, "held", base, "deflate")
	h.waitDevices(1)
	u := h.create(fw, fleet.Policy{ChunkSize: 1024, Window: 2}, fleet.Selector{})
	o := d.offer()
	require.Equal(t, protocol.EncodingDeflate, o.Encoding)
	d.report(o, fleet.StateAccepted, 0, "")
	// Two chunks held.
	for next := int64(0); next < 2048; {
		f := <-d.chunks
		if f.Handle == o.Handle && int64(f.Offset) == next {
			next += int64(len(f.Payload))
			d.send(protocol.KindAck, protocol.Ack{V: 1, Handle: o.Handle, Offset: next})
		}
	}
	eventually(t, 5*time.Second, func() bool { return h.summary(u.ID).BytesAcked == 2048 }, "acks applied")

	// Back holding the same payload: the transfer resumes at its offset.
	d.helloImage(base, []string{"deflate"}, &protocol.Held{Update: u.ID, Handle: o.Handle, Offset: 2048, State: fleet.StateDownloading, Encoding: protocol.EncodingDeflate})
	o2 := d.offer()
	assert.Equal(t, protocol.EncodingDeflate, o2.Encoding)
	eventually(t, 5*time.Second, func() bool { return h.deviceState(u.ID, "held").Offset == 2048 }, "offset kept")

	// Back holding the image itself (a device that lost its decoder
	// state, or another orchestrator's offer): the offer starts afresh.
	d.helloImage(base, []string{"deflate"}, &protocol.Held{Update: u.ID, Handle: o2.Handle, Offset: 2048, State: fleet.StateDownloading})
	o3 := d.offer()
	assert.Equal(t, protocol.EncodingDeflate, o3.Encoding)
	eventually(t, 5*time.Second, func() bool { return h.deviceState(u.ID, "held").Offset == 0 }, "offset back to 0")
	d.report(o3, fleet.StateAccepted, 0, "")
	img := decode(t, o3, d.downloadPayload(o3), nil)
	assert.Equal(t, fw.SHA256, sha(img))
}

func TestEngine_ResumeAfterRestartKeepsThePayloadOfTheAttempt(t *testing.T) {
	h := newHarnessWith(t, testLogger(t), withBuilder(nil))
	base := compressible(300_000, 14)
	target := edited(base, 15)
	fw := h.addImage(target, "1.1.0") // the base is not stored yet: no delta
	ps := h.waitPayloads(fw, 1)
	deflated := ps[[2]string{fleet.EncodingDeflate, ""}]
	d := payloadDevice(t, h, "restart", base, "bsdiff")
	h.waitImage("restart", base)
	u := h.create(fw, fleet.Policy{ChunkSize: 1024, Window: 1}, fleet.Selector{})
	o := d.offer()
	require.Equal(t, protocol.EncodingDeflate, o.Encoding)
	d.report(o, fleet.StateAccepted, 0, "")
	var got []byte
	for int64(len(got)) < 1024 {
		f := <-d.chunks
		if f.Handle == o.Handle && int(f.Offset) == len(got) {
			got = append(got, f.Payload...)
		}
	}
	d.send(protocol.KindAck, protocol.Ack{V: 1, Handle: o.Handle, Offset: 1024})
	eventually(t, 5*time.Second, func() bool { return h.summary(u.ID).BytesAcked == 1024 }, "ack applied")
	require.NoError(t, h.engine.Close())

	// While the engine is down, a delta from the device's image appears:
	// the attempt still resumes with the payload it started.
	h.store.OnFirmwareAdded(nil)
	baseFW := h.addImage(base, "1.0.0")
	b := rollout.NewBuilder(h.store, h.log)
	require.NoError(t, b.Want(context.Background(), fw, []fleet.Firmware{baseFW}))
	require.NoError(t, b.Open(context.Background()))
	h.waitPayloads(fw, 2)
	require.NoError(t, b.Close())
	h.openEngine()
	d.helloImage(base, []string{"bsdiff"}, &protocol.Held{Update: u.ID, Handle: o.Handle, Offset: 1024, State: fleet.StateDownloading, Encoding: protocol.EncodingDeflate})
	o2 := d.offer()
	assert.Equal(t, protocol.EncodingDeflate, o2.Encoding)
	assert.Equal(t, deflated.Size, o2.PayloadSize)
	d.report(o2, fleet.StateAccepted, 1024, "")
	for int64(len(got)) < o2.PayloadSize {
		f := <-d.chunks
		if f.Handle == o2.Handle && int(f.Offset) == len(got) {
			got = append(got, f.Payload...)
			d.send(protocol.KindAck, protocol.Ack{V: 1, Handle: o2.Handle, Offset: int64(len(got))})
		}
	}
	assert.Equal(t, sha(target), sha(decode(t, o2, got, base)))
	d.finish(o2, u)
	s := h.waitEnd(u.ID, 10*time.Second)
	assert.Equal(t, 1, s.Counts[fleet.StateSucceeded])
	assert.Equal(t, map[string]int{fleet.EncodingDeflate: 1}, s.Encodings)
	assert.Less(t, s.BytesSent, s.ImageBytes)
}

func TestEngine_DeviceRefusingAnEncodedPayloadItCannotApplyIsOfferedAgainWithoutIt(t *testing.T) {
	h := newHarnessWith(t, testLogger(t), withBuilder(nil))
	base, _, _, fw := h.twoVersions(300_000, 14)
	d := payloadDevice(t, h, "stale", base, "deflate", "bsdiff")
	h.waitDevices(1)
	u := h.create(fw, fleet.Policy{ChunkSize: 1024, Window: 2}, fleet.Selector{})

	// What the orchestrator knew of the device's image is out of date:
	// the delta is refused, and the next offer is the compressed image.
	o := d.offer()
	require.Equal(t, protocol.EncodingBSDiff, o.Encoding)
	d.report(o, fleet.StateRejected, 0, fleet.ReasonBaseMismatch)
	o2 := d.offer()
	require.Equal(t, protocol.EncodingDeflate, o2.Encoding)
	assert.NotEqual(t, o.Handle, o2.Handle)

	// Nor can it inflate any more: the image itself.
	d.report(o2, fleet.StateRejected, 0, fleet.ReasonUnsupportedEncoding)
	o3 := d.offer()
	require.Equal(t, "", o3.Encoding)
	d.report(o3, fleet.StateAccepted, 0, "")
	img := decode(t, o3, d.downloadPayload(o3), nil)
	assert.Equal(t, fw.SHA256, sha(img))
	eventually(t, 10*time.Second, func() bool { return h.deviceState(u.ID, "stale").Offset == fw.Size }, "image acked")
	// Neither refusal ended the device rejected.
	assert.Equal(t, fleet.StateDownloading, h.deviceState(u.ID, "stale").State)
}
