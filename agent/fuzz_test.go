package agent

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/agent/delta"
	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
)

// fuzzKinds maps a selector byte to a down message kind.
var fuzzKinds = []string{protocol.KindOffer, protocol.KindChunk, protocol.KindCancel, "junk"}

// encodeSession frames a sequence of down messages for the fuzzer: kind byte,
// u16 length, payload.
func encodeSession(msgs ...[]byte) []byte {
	var b []byte
	for i := 0; i+1 < len(msgs); i += 2 {
		b = append(b, msgs[i][0])
		b = binary.BigEndian.AppendUint16(b, uint16(len(msgs[i+1])))
		b = append(b, msgs[i+1]...)
	}
	return b
}

// newOfflineAgent is an agent driven without a broker: publishes are
// recorded and succeed at once.
func newOfflineAgent(cfg Config) (*Agent, *[]string) {
	a := New(cfg)
	var topics []string
	a.out = func(topic string, _ byte, _ []byte) waiter {
		topics = append(topics, topic)
		return doneToken{}
	}
	return a, &topics
}

// step runs the actions a message asked for, as the loop would, except
// that disconnects and reboots take no time.
func step(a *Agent) {
	for a.action != actNone {
		act := a.action
		a.action = actNone
		switch act {
		case actInstall:
			a.finishInstall(nil)
		case actReboot:
			a.boot()
			a.sayHello(a.heldHello())
		case actFaultDisconnect:
			a.sayHello(a.heldHello())
		}
	}
}

func FuzzAgent_HandleDown(f *testing.F) {
	img := []byte("firmware image bytes, two chunks of it")
	of := protocol.Encode(protocol.Offer{V: 1, Update: "u1", Handle: 9, ChunkSize: 20, Window: 4,
		Firmware: protocol.FirmwareInfo{Version: "2", Size: int64(len(img)), SHA256: "3c3f3b6c0b09c1a4b9a3b0d8b1f1e3c2"}})
	c0 := protocol.AppendFrame(nil, protocol.Frame{Handle: 9, Offset: 0, Payload: img[:20]})
	c1 := protocol.AppendFrame(nil, protocol.Frame{Flags: protocol.FlagLast, Handle: 9, Offset: 20, Payload: img[20:]})
	cancel := protocol.Encode(protocol.Cancel{V: 1, Update: "u1", Handle: 9, Reason: fleet.ReasonOperator})
	f.Add(encodeSession([]byte{0}, of, []byte{1}, c0, []byte{1}, c1))
	f.Add(encodeSession([]byte{0}, of, []byte{1}, c1, []byte{1}, c0, []byte{2}, cancel))
	f.Add(encodeSession([]byte{0}, of, []byte{1}, c0, []byte{0}, of, []byte{1}, c1, []byte{0}, of))
	f.Add(encodeSession([]byte{3}, []byte("x"), []byte{1}, []byte{1, 0, 0, 0}))
	// Encoded payloads: the image compressed, and a delta from the base the
	// agent runs.
	base := []byte("firmware image bytes, one chunk of it and the rest")
	images := NewImages()
	baseSHA := images.Add(base)
	for _, enc := range []string{protocol.EncodingDeflate, protocol.EncodingBSDiff} {
		var p bytes.Buffer
		if enc == protocol.EncodingDeflate {
			_, _ = delta.Compress(&p, bytes.NewReader(img))
		} else {
			_, _ = delta.Diff(&p, base, img, delta.DiffOptions{})
		}
		o := protocol.Offer{V: 1, Update: "u2", Handle: 7, ChunkSize: 20, Window: 4, Encoding: enc, PayloadSize: int64(p.Len()),
			Firmware: protocol.FirmwareInfo{Version: "2", Size: int64(len(img)), SHA256: "3c3f3b6c0b09c1a4b9a3b0d8b1f1e3c2"}}
		if enc == protocol.EncodingBSDiff {
			o.Base = baseSHA
		}
		session := [][]byte{{0}, protocol.Encode(o)}
		for off := 0; off < p.Len(); off += 20 {
			session = append(session, []byte{1}, protocol.AppendFrame(nil, protocol.Frame{Handle: 7, Offset: uint32(off), Payload: p.Bytes()[off:min(off+20, p.Len())]}))
		}
		f.Add(encodeSession(session...))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		a, _ := newOfflineAgent(Config{ID: "dev-1", Model: "m", Version: "1", Seed: 1, Image: baseSHA, Images: images,
			Faults: Faults{DropChunks: 0.1, FailInstall: 0.1, Disconnect: 0.5}})
		for len(data) >= 3 {
			kind := fuzzKinds[int(data[0])%len(fuzzKinds)]
			n := int(binary.BigEndian.Uint16(data[1:3]))
			data = data[3:]
			n = min(n, len(data))
			a.handleDown(kind, data[:n])
			step(a)
			data = data[n:]
			if t := a.held; t != nil && (t.expected < 0 || t.expected > t.size()) {
				panic("held offset out of the payload")
			}
			if t := a.held; t != nil && t.enc != nil && t.enc.target > t.fw.Size {
				panic("decoded past the image's size")
			}
		}
		stopDecoder(a.held) // its coroutine
	})
}

func TestAgent_HandleDownOffline(t *testing.T) {
	img := newImage(3000)
	a, topics := newOfflineAgent(Config{ID: "dev-1", Model: "m", Version: "1"})
	of := img.offer("u1", 9, "2", "m")
	of.V, of.ChunkSize, of.Window = 1, testChunk, 4
	a.handleDown(protocol.KindOffer, protocol.Encode(of))
	for off := 0; off < len(img.data); off += testChunk {
		end := min(off+testChunk, len(img.data))
		a.handleDown(protocol.KindChunk, protocol.AppendFrame(nil, protocol.Frame{Handle: 9, Offset: uint32(off), Payload: img.data[off:end]}))
		step(a)
	}
	s := a.Stats()
	assert.Equal(t, 1, s.Installs)
	assert.Equal(t, "2", s.Version)
	assert.True(t, s.Updated)
	assert.Equal(t, img.sha, s.ImageSHA256)
	assert.Nil(t, a.held)
	require.NotNil(t, a.done)
	assert.Equal(t, "u1", a.done.update)
	// accepted, 2 acks (window 4: every 2 chunks, and the last), downloaded,
	// verified, installing, rebooting, hello
	assert.Len(t, *topics, 8)
}

func TestAgent_AcksEveryHalfWindowAndAtOnceOnAGap(t *testing.T) {
	img := newImage(6*testChunk - 10)
	a, topics := newOfflineAgent(Config{ID: "dev-1", Model: "m", Version: "1"})
	of := img.offer("u1", 9, "2", "m")
	of.V, of.ChunkSize, of.Window = 1, testChunk, 8
	a.handleDown(protocol.KindOffer, protocol.Encode(of))
	acks := func() int {
		n := 0
		for _, tp := range *topics {
			if tp == protocol.UpTopic("dev-1", protocol.KindAck) {
				n++
			}
		}
		return n
	}
	chunk := func(i int) {
		off := i * testChunk
		end := min(off+testChunk, len(img.data))
		a.handleDown(protocol.KindChunk, protocol.AppendFrame(nil, protocol.Frame{Handle: 9, Offset: uint32(off), Payload: img.data[off:end]}))
	}
	for i := 0; i < 3; i++ {
		chunk(i)
	}
	assert.Equal(t, 0, acks(), "three in-order chunks of a window of 8: no ack yet")
	chunk(3)
	assert.Equal(t, 1, acks(), "the fourth chunk (half the window) is acked")
	chunk(5)
	assert.Equal(t, 2, acks(), "a gap is acked at once (a duplicate ack)")
	chunk(4)
	assert.Equal(t, 2, acks())
	chunk(5)
	assert.Equal(t, 3, acks(), "the last chunk is always acked")
	assert.Equal(t, img.sha, a.Stats().ImageSHA256)
}
