package agent

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/agent/delta"
	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
)

// deltaPair is a base image, a target made of it with a few changes, and
// the bsdiff payload between them.
type deltaPair struct {
	base, target image
	payload      []byte
}

// newDeltaPair makes a base of n random bytes and a target that changes 8
// bytes in each of 4 places and inserts 1 KiB.
func newDeltaPair(t testing.TB, n int) deltaPair { return newDeltaPairInserting(t, n, 1024) }

// newDeltaPairInserting is newDeltaPair with an insertion of ins random
// bytes, which the payload carries as they are: a large payload of many
// segments.
func newDeltaPairInserting(t testing.TB, n, ins int) deltaPair {
	t.Helper()
	base := newImage(n)
	r := rand.New(rand.NewPCG(uint64(n), 2))
	tb := bytes.Clone(base.data)
	for i := 0; i < 4; i++ {
		at := r.IntN(n - 8)
		for j := 0; j < 8; j++ {
			tb[at+j] ^= 0x5a
		}
	}
	added := make([]byte, ins)
	for i := range added {
		added[i] = byte(r.Uint32())
	}
	tb = append(tb[:n/2:n/2], append(added, tb[n/2:]...)...)
	var p bytes.Buffer
	_, err := delta.Diff(&p, base.data, tb, delta.DiffOptions{})
	require.NoError(t, err)
	return deltaPair{base: base, target: imageOf(tb), payload: p.Bytes()}
}

func imageOf(b []byte) image {
	im := newImage(0)
	im.data = b
	im.sha = NewImages().Add(b)
	return im
}

// deltaOffer offers the payload of p as an update to p.target.
func (p deltaPair) offer(update string, handle uint32) protocol.Offer {
	of := p.target.offer(update, handle, "2", "m")
	of.V, of.ChunkSize, of.Window = 1, testChunk, 4
	of.Encoding, of.PayloadSize, of.Base = protocol.EncodingBSDiff, int64(len(p.payload)), p.base.sha
	return of
}

// helloOf says hello and decodes it.
func helloOf(t *testing.T, a *Agent, sent *[]sentMsg) protocol.Hello {
	t.Helper()
	a.sayHello(a.heldHello())
	h, err := protocol.DecodeHello(lastOf(t, *sent, protocol.KindHello))
	require.NoError(t, err)
	return h
}

func lastReport(t *testing.T, sent []sentMsg) protocol.Report {
	t.Helper()
	r, err := protocol.DecodeReport(lastOf(t, sent, protocol.KindReport))
	require.NoError(t, err)
	return r
}

// simConfig is a simulated device that runs base, with its content in imgs.
func simConfig(t *testing.T, imgs *Images, base image) Config {
	cfg := persistConfig(t)
	cfg.Images, cfg.Image = imgs, imgs.Add(base.data)
	return cfg
}

func TestAgent_AppliesADeltaToTheImageItRunsAndThenRunsTheTarget(t *testing.T) {
	p := newDeltaPair(t, 300<<10)
	imgs := NewImages()
	a, sent := newRecordingAgent(t, simConfig(t, imgs, p.base))
	h := helloOf(t, a, sent)
	assert.Equal(t, p.base.sha, h.Image)
	assert.Equal(t, []string{protocol.EncodingDeflate, protocol.EncodingBSDiff}, h.Caps)
	require.Less(t, len(p.payload), len(p.target.data)/20, "a delta of a few changes is small")

	a.handleDown(protocol.KindOffer, protocol.Encode(p.offer("u1", 3)))
	assert.Equal(t, fleet.StateAccepted, lastReport(t, *sent).State)
	sendChunks(a, image{data: p.payload}, 3, 0, len(p.payload))

	s := a.Stats()
	assert.Equal(t, p.target.sha, s.ImageSHA256, "the reconstructed image")
	assert.Equal(t, 1, s.Installs)
	assert.Equal(t, int64(len(p.payload)), s.BytesReceived, "acks and stats count payload bytes")
	assert.Equal(t, protocol.EncodingBSDiff, s.Encoding)
	assert.Equal(t, []fleet.DeviceState{fleet.StateAccepted, fleet.StateDownloaded, fleet.StateVerified,
		fleet.StateInstalling, fleet.StateRebooting}, reportStates(t, *sent))
	ack, err := protocol.DecodeAck(lastOf(t, *sent, protocol.KindAck))
	require.NoError(t, err)
	assert.Equal(t, int64(len(p.payload)), ack.Offset)

	// It runs the target now: its hello says so, and the one copy of the
	// target it made for the fleet is a base for the next delta.
	h = helloOf(t, a, sent)
	assert.Equal(t, p.target.sha, h.Image)
	assert.Equal(t, p.target.sha, a.Stats().Image)
	got, ok := imgs.get(p.target.sha)
	require.True(t, ok, "the verified target was added to the shared images")
	assert.Equal(t, p.target.data, got)
	assert.Contains(t, h.Caps, protocol.EncodingBSDiff)
}

// baseDevice is a memDevice that can read the image it runs.
type baseDevice struct {
	*memDevice
	running []byte
}

func (d *baseDevice) RunningImage() (io.ReaderAt, int64, error) {
	return bytes.NewReader(d.running), int64(len(d.running)), nil
}

func TestAgentDevice_DeltaAndDeflateWriteTheImageToTheDevice(t *testing.T) {
	p := newDeltaPair(t, 200<<10)
	var deflated bytes.Buffer
	_, err := delta.Compress(&deflated, bytes.NewReader(p.target.data))
	require.NoError(t, err)
	for name, tc := range map[string]struct {
		base    bool // the Device implements BaseImage
		caps    []string
		offer   func(protocol.Offer) protocol.Offer
		payload []byte
	}{
		"bsdiff": {true, []string{protocol.EncodingDeflate, protocol.EncodingBSDiff}, func(o protocol.Offer) protocol.Offer { return o }, p.payload},
		"deflate without a base": {false, []string{protocol.EncodingDeflate}, func(o protocol.Offer) protocol.Offer {
			o.Encoding, o.Base, o.PayloadSize = protocol.EncodingDeflate, "", int64(deflated.Len())
			return o
		}, deflated.Bytes()},
	} {
		t.Run(name, func(t *testing.T) {
			o := startOrch(t)
			mem := &memDevice{booted: func(target string) string { return target }, rebootErr: ErrNoReboot}
			var dev Device = mem
			if tc.base {
				dev = &baseDevice{memDevice: mem, running: p.base.data}
			}
			_, h := startAgentHello(t, o, func(c *Config) { c.Device = dev })
			assert.Equal(t, tc.caps, h.Caps)
			if tc.base {
				assert.Equal(t, p.base.sha, h.Image, "hashed from the running image")
			}
			of := tc.offer(p.offer("u1", 5))
			of.Firmware.Model, of.Window = "m1", 1
			o.offer("dev-1", of)
			o.expectReport(fleet.StateAccepted)
			o.push("dev-1", 5, tc.payload, 0)
			o.expectReports(fleet.StateDownloaded, fleet.StateVerified, fleet.StateInstalling, fleet.StateRebooting)
			h = recv(t, o.hello, "hello after reboot")
			assert.Equal(t, p.target.sha, h.Image)
			require.NotNil(t, h.Transfer)
			assert.Equal(t, of.Encoding, h.Transfer.Encoding)
			assert.Equal(t, of.PayloadSize, h.Transfer.Offset)
			mem.get(func(d *memDevice) {
				assert.Equal(t, p.target.data, d.installed, "the device installed the reconstructed image")
			})
		})
	}
}

func TestAgent_RefusesPayloadsItCannotApply(t *testing.T) {
	p := newDeltaPair(t, 64<<10)
	other := newImage(64<<10 + 1)
	for name, tc := range map[string]struct {
		cfg    func(c *Config)
		offer  func(o protocol.Offer) protocol.Offer
		reason fleet.Reason
	}{
		"another base": {func(c *Config) {}, func(o protocol.Offer) protocol.Offer { o.Base = other.sha; return o }, fleet.ReasonBaseMismatch},
		"no base content": {func(c *Config) { c.Images = NewImages() }, func(o protocol.Offer) protocol.Offer { return o },
			fleet.ReasonUnsupportedEncoding},
		"encodings turned off": {func(c *Config) { c.Encodings = []string{} }, func(o protocol.Offer) protocol.Offer {
			o.Encoding, o.Base = protocol.EncodingDeflate, ""
			return o
		}, fleet.ReasonUnsupportedEncoding},
		"deflate only": {func(c *Config) { c.Encodings = []string{protocol.EncodingDeflate} }, func(o protocol.Offer) protocol.Offer { return o },
			fleet.ReasonUnsupportedEncoding},
	} {
		t.Run(name, func(t *testing.T) {
			cfg := simConfig(t, NewImages(), p.base)
			tc.cfg(&cfg)
			a, sent := newRecordingAgent(t, cfg)
			a.handleDown(protocol.KindOffer, protocol.Encode(tc.offer(p.offer("u1", 3))))
			r := lastReport(t, *sent)
			assert.Equal(t, fleet.StateRejected, r.State)
			assert.Equal(t, tc.reason, r.Reason)
			assert.False(t, a.Stats().Holding)
			if tc.reason == fleet.ReasonUnsupportedEncoding {
				assert.NotContains(t, helloOf(t, a, sent).Caps, tc.offer(p.offer("u1", 3)).Encoding, "it does not state what it cannot decode")
			}
		})
	}
}

func TestAgent_CorruptPayloadFailsBadDigestAndInstallsNothing(t *testing.T) {
	p := newDeltaPair(t, 200<<10)
	for name, corrupt := range map[string]func(b []byte){
		"a byte flipped in a segment": func(b []byte) { b[len(b)/2] ^= 0x40 },
		"a segment length broken":     func(b []byte) { b[0] = 0xff },
		"cut short":                   nil,
	} {
		t.Run(name, func(t *testing.T) {
			a, sent := newRecordingAgent(t, simConfig(t, NewImages(), p.base))
			bad := bytes.Clone(p.payload)
			of := p.offer("u1", 3)
			if corrupt != nil {
				corrupt(bad)
			} else {
				bad = bad[:len(bad)-3]
				of.PayloadSize = int64(len(bad))
			}
			a.handleDown(protocol.KindOffer, protocol.Encode(of))
			sendChunks(a, image{data: bad}, 3, 0, len(bad))
			r := lastReport(t, *sent)
			assert.Equal(t, fleet.StateFailed, r.State)
			assert.Equal(t, fleet.ReasonBadDigest, r.Reason)
			s := a.Stats()
			assert.Zero(t, s.Installs, "nothing installed")
			assert.False(t, s.Holding)
			assert.Equal(t, "1", s.Version)
			assert.Equal(t, p.base.sha, helloOf(t, a, sent).Image, "it still runs its base")
			assert.NotContains(t, reportStates(t, *sent), fleet.StateInstalling)
		})
	}
}

func TestAgent_ResumesADeltaFromItsLastCheckpointAfterACrash(t *testing.T) {
	p := newDeltaPairInserting(t, 400<<10, 300<<10)
	imgs := NewImages()
	cfg := simConfig(t, imgs, p.base)
	cfg.CheckpointBytes = testChunk
	a, _ := newRecordingAgent(t, cfg)
	a.handleDown(protocol.KindOffer, protocol.Encode(p.offer("u1", 3)))
	cut := len(p.payload) / 2
	cut -= cut % testChunk
	sendChunks(a, image{data: p.payload}, 3, 0, cut)
	crash(a)

	sf := readStateFile(t, cfg.StateFile)
	require.NotNil(t, sf.Held)
	assert.Equal(t, protocol.EncodingBSDiff, sf.Held.Encoding)
	require.Positive(t, sf.Held.Offset, "a checkpoint was saved")
	assert.Less(t, sf.Held.Offset, int64(cut))
	assert.Positive(t, sf.Held.Target)

	b, sent := newRecordingAgent(t, cfg)
	assert.Equal(t, protocol.EncodingBSDiff, b.Stats().Encoding, "restored with the transfer")
	h := helloOf(t, b, sent)
	require.NotNil(t, h.Transfer)
	assert.Equal(t, protocol.Held{Update: "u1", Handle: 3, Offset: sf.Held.Offset, State: fleet.StateDownloading,
		Encoding: protocol.EncodingBSDiff}, *h.Transfer, "it holds the checkpoint's payload offset")

	b.handleDown(protocol.KindOffer, protocol.Encode(p.offer("u1", 4)))
	r := lastReport(t, *sent)
	assert.Equal(t, fleet.StateAccepted, r.State)
	assert.Equal(t, sf.Held.Offset, r.Offset)
	sendChunks(b, image{data: p.payload}, 4, int(sf.Held.Offset), len(p.payload))
	s := b.Stats()
	assert.Equal(t, p.target.sha, s.ImageSHA256, "the restored hash state continues the digest")
	assert.Equal(t, 1, s.Installs)
	assert.Equal(t, int64(len(p.payload))-sf.Held.Offset, s.BytesReceived)
	_, ok := imgs.get(p.target.sha)
	assert.False(t, ok, "a device that resumed cannot have copied the whole target")
}

func TestAgentDevice_ResumedDeltaRewritesTheImageFromTheCheckpoint(t *testing.T) {
	p := newDeltaPairInserting(t, 300<<10, 300<<10)
	mem := &memDevice{booted: func(target string) string { return target }, rebootErr: ErrNoReboot}
	dev := &baseDevice{memDevice: mem, running: p.base.data}
	cfg := persistConfig(t)
	cfg.Device, cfg.CheckpointBytes = dev, testChunk
	a, _ := newRecordingAgent(t, cfg)
	a.dev = &deviceRun{ctx: context.Background(), installed: make(chan installResult, 1)}
	a.hashRunningImage()
	a.handleDown(protocol.KindOffer, protocol.Encode(p.offer("u1", 3)))
	cut := (len(p.payload) / 2) &^ (testChunk - 1)
	sendChunks(a, image{data: p.payload}, 3, 0, cut)
	crash(a)
	mem.get(func(d *memDevice) {
		require.Greater(t, int64(d.img.Len()), readStateFile(t, cfg.StateFile).Held.Target)
	})

	b, sent := newRecordingAgent(t, cfg)
	b.dev = &deviceRun{ctx: context.Background(), installed: make(chan installResult, 1)}
	b.hashRunningImage()
	off := b.held.expected
	b.handleDown(protocol.KindOffer, protocol.Encode(p.offer("u1", 4)))
	last := int(off) + (len(p.payload)-int(off)-1)/testChunk*testChunk
	sendChunks(b, image{data: p.payload}, 4, int(off), last)
	mem.get(func(d *memDevice) {
		assert.Positive(t, d.img.Len())
		assert.True(t, bytes.HasPrefix(p.target.data, d.img.Bytes()), "the image past the checkpoint was written again, not appended")
	})
	sendChunks(b, image{data: p.payload}, 4, last, len(p.payload))
	assert.Equal(t, p.target.sha, b.Stats().ImageSHA256)
	assert.Equal(t, []fleet.DeviceState{fleet.StateAccepted, fleet.StateDownloaded, fleet.StateVerified, fleet.StateInstalling, fleet.StateRebooting},
		reportStates(t, *sent))
}

// cutAfterLastDeltaChunk runs an agent that checkpoints every chunk through
// a delta's last chunk, and cuts its power there, before the digest check.
func cutAfterLastDeltaChunk(t *testing.T) (deltaPair, Config, *Agent) {
	p := newDeltaPairInserting(t, 400<<10, 300<<10)
	cfg := simConfig(t, NewImages(), p.base)
	cfg.CheckpointBytes = testChunk
	a, _ := newRecordingAgent(t, cfg)
	a.handleDown(protocol.KindOffer, protocol.Encode(p.offer("u1", 3)))
	a.held.cutAt = int64(len(p.payload)) - 1
	sendChunks(a, image{data: p.payload}, 3, 0, len(p.payload))
	require.NotNil(t, a.held)
	require.Equal(t, fleet.StateDownloading, a.held.state, "cut before the digest check")
	return p, cfg, a
}

func TestAgent_DeltaCutAfterItsLastChunkResumesAndInstalls(t *testing.T) {
	p, cfg, a := cutAfterLastDeltaChunk(t)
	crash(a)
	sf := readStateFile(t, cfg.StateFile)
	require.NotNil(t, sf.Held)
	assert.Less(t, sf.Held.Offset, int64(len(p.payload)), "as with a plain image, the last chunk is not checkpointed: the digest check saves")

	b, sent := newRecordingAgent(t, cfg)
	h := helloOf(t, b, sent)
	require.NotNil(t, h.Transfer)
	if h.Transfer.Offset < int64(len(p.payload)) {
		b.handleDown(protocol.KindOffer, protocol.Encode(p.offer("u1", 4)))
		sendChunks(b, image{data: p.payload}, 4, int(h.Transfer.Offset), len(p.payload))
	}
	step(b)
	s := b.Stats()
	assert.Equal(t, p.target.sha, s.ImageSHA256)
	assert.Equal(t, 1, s.Installs, "the resumed delta is verified and installed")
}

func TestAgent_DeltaHeldAtItsPayloadEndCompletesAfterTheHello(t *testing.T) {
	p, cfg, a := cutAfterLastDeltaChunk(t)
	a.saveState(true) // a state file saved at the payload's end
	crash(a)
	sf := readStateFile(t, cfg.StateFile)
	require.NotNil(t, sf.Held)
	require.Equal(t, int64(len(p.payload)), sf.Held.Offset)

	b, sent := newRecordingAgent(t, cfg)
	helloOf(t, b, sent)
	step(b)
	s := b.Stats()
	assert.Equal(t, p.target.sha, s.ImageSHA256)
	assert.Equal(t, 1, s.Installs, "the held payload is decoded to its end, verified and installed")
}
