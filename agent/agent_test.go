package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
)

const (
	testChunk   = 1024
	waitTimeout = 10 * time.Second
)

// allowHook lets every client connect and use every topic, until deny is
// set. (mochi's auth.AllowHook does the same, but its package pulls in a YAML
// dependency.)
type allowHook struct {
	mqtt.HookBase
	deny atomic.Bool
}

func (h *allowHook) ID() string { return "allow-all" }
func (h *allowHook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnConnectAuthenticate, mqtt.OnACLCheck}, []byte{b})
}
func (h *allowHook) OnConnectAuthenticate(*mqtt.Client, packets.Packet) bool { return !h.deny.Load() }
func (h *allowHook) OnACLCheck(*mqtt.Client, string, bool) bool              { return true }

// orch is a scripted orchestrator: an embedded mochi broker whose inline
// subscription sorts the device's up messages by kind.
type orch struct {
	t         *testing.T
	srv       *mqtt.Server
	auth      *allowHook
	closeOnce sync.Once
	url       string
	hello     chan protocol.Hello
	report    chan protocol.Report
	ack       chan protocol.Ack
	status    chan statusMsg
}

func startOrch(t *testing.T) *orch { return startOrchAt(t, "127.0.0.1:0") }

func startOrchAt(t *testing.T, addr string) *orch {
	t.Helper()
	srv := mqtt.New(&mqtt.Options{InlineClient: true, Logger: slog.New(slog.DiscardHandler)})
	auth := new(allowHook)
	require.NoError(t, srv.AddHook(auth, nil))
	tcp := listeners.NewTCP(listeners.Config{ID: "tcp", Address: addr})
	require.NoError(t, srv.AddListener(tcp))
	o := &orch{
		t: t, srv: srv, auth: auth, url: "tcp://" + tcp.Address(),
		hello:  make(chan protocol.Hello, 64),
		report: make(chan protocol.Report, 256),
		ack:    make(chan protocol.Ack, 4096),
		status: make(chan statusMsg, 64),
	}
	err := srv.Subscribe(protocol.UpFilter, 1, func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
		_, kind, ok := protocol.ParseUpTopic(pk.TopicName)
		if !ok {
			t.Errorf("bad up topic %q", pk.TopicName)
			return
		}
		var full bool
		switch kind {
		case protocol.KindHello:
			m, err := protocol.DecodeHello(pk.Payload)
			assert.NoError(t, err)
			full = !trySend(o.hello, m)
		case protocol.KindReport:
			m, err := protocol.DecodeReport(pk.Payload)
			assert.NoError(t, err)
			full = !trySend(o.report, m)
		case protocol.KindAck:
			m, err := protocol.DecodeAck(pk.Payload)
			assert.NoError(t, err)
			full = !trySend(o.ack, m)
		case protocol.KindStatus:
			full = !trySend(o.status, statusMsg{string(pk.Payload), pk.FixedHeader.Retain})
		default:
			t.Errorf("unexpected kind %q", kind)
		}
		if full {
			t.Errorf("test queue full for %s", kind)
		}
	})
	require.NoError(t, err)
	// Serve only once the inline subscription is in place, so no hello is missed.
	require.NoError(t, srv.Serve())
	t.Cleanup(o.close)
	return o
}

// close stops the broker (mochi's Close is not idempotent). It refuses new
// connections first: mochi closes its clients before its listener, and a
// client that reconnects in between would stay connected to the closed server.
func (o *orch) close() {
	o.closeOnce.Do(func() {
		o.auth.deny.Store(true)
		require.NoError(o.t, o.srv.Close())
	})
}

func trySend[T any](ch chan T, v T) bool {
	select {
	case ch <- v:
		return true
	default:
		return false
	}
}

func recv[T any](t *testing.T, ch chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(waitTimeout):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

func (o *orch) send(id, kind string, payload []byte) {
	o.t.Helper()
	require.NoError(o.t, o.srv.Publish(protocol.DownTopic(id, kind), payload, false, 1))
}

func (o *orch) offer(id string, of protocol.Offer) {
	of.V = protocol.Version
	if of.ChunkSize == 0 {
		of.ChunkSize = testChunk
	}
	if of.Window == 0 {
		of.Window = 1 // this orchestrator waits for an ack per chunk
	}
	o.send(id, protocol.KindOffer, protocol.Encode(of))
}

func (o *orch) chunk(id string, handle uint32, img []byte, off int) {
	end := min(off+testChunk, len(img))
	var flags byte
	if end == len(img) {
		flags = protocol.FlagLast
	}
	o.send(id, protocol.KindChunk, protocol.AppendFrame(nil, protocol.Frame{Flags: flags, Handle: handle, Offset: uint32(off), Payload: img[off:end]}))
}

func (o *orch) expectReport(state fleet.DeviceState) protocol.Report {
	o.t.Helper()
	r := recv(o.t, o.report, "report "+string(state))
	require.Equal(o.t, state, r.State, "report %+v", r)
	return r
}

func (o *orch) expectAck(handle uint32, off int) {
	o.t.Helper()
	a := recv(o.t, o.ack, "ack")
	require.Equal(o.t, protocol.Ack{V: protocol.Version, Handle: handle, Offset: int64(off)}, a)
}

// push sends the image from off, waiting for each ack.
func (o *orch) push(id string, handle uint32, img []byte, off int) {
	o.t.Helper()
	for ; off < len(img); off += testChunk {
		o.chunk(id, handle, img, off)
		o.expectAck(handle, min(off+testChunk, len(img)))
	}
}

type image struct {
	data []byte
	sha  string
}

func newImage(n int) image {
	r := rand.New(rand.NewPCG(uint64(n), 1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	s := sha256.Sum256(b)
	return image{b, hex.EncodeToString(s[:])}
}

func (im image) offer(update string, handle uint32, version, model string) protocol.Offer {
	return protocol.Offer{
		Update: update, Handle: handle, Attempt: 1,
		Firmware: protocol.FirmwareInfo{ID: "fw-1", Name: "fw", Version: version, Model: model, Size: int64(len(im.data)), SHA256: im.sha},
	}
}

func startAgent(t *testing.T, o *orch, mod func(*Config)) *Agent {
	t.Helper()
	a, _ := startAgentHello(t, o, mod)
	return a
}

// startAgentHello starts an agent and returns it with its first hello.
func startAgentHello(t *testing.T, o *orch, mod func(*Config)) (*Agent, protocol.Hello) {
	t.Helper()
	cfg := Config{
		Broker: o.url, ID: "dev-1", Model: "m1", Version: "1.0.0",
		Tags:        map[string]string{"site": "a"},
		RebootDelay: 50 * time.Millisecond, ReconnectDelay: 50 * time.Millisecond,
		RetryInterval: 100 * time.Millisecond, Seed: 42,
		// A broker that closes may accept a connection and never answer it.
		DialTimeout: time.Second,
	}
	if mod != nil {
		mod(&cfg)
	}
	a := New(cfg)
	t.Cleanup(func() { require.NoError(t, a.Close()) })
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	require.NoError(t, a.Start(ctx))
	h := recv(t, o.hello, "first hello")
	require.Equal(t, cfg.Version, h.Version)
	require.Equal(t, cfg.Model, h.Model)
	require.Nil(t, h.Transfer)
	return a, h
}

func eventually(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestAgent_UpdateHappyPath(t *testing.T) {
	o := startOrch(t)
	a := startAgent(t, o, nil)
	img := newImage(10*testChunk + 300)

	o.offer("dev-1", img.offer("u1", 7, "2.0.0", "m1"))
	r := o.expectReport(fleet.StateAccepted)
	assert.Equal(t, int64(0), r.Offset)
	assert.Equal(t, uint32(7), r.Handle)
	o.push("dev-1", 7, img.data, 0)

	for _, st := range []fleet.DeviceState{fleet.StateDownloaded, fleet.StateVerified, fleet.StateInstalling, fleet.StateRebooting} {
		r := o.expectReport(st)
		assert.Equal(t, "u1", r.Update)
	}
	h := recv(t, o.hello, "hello after reboot")
	assert.Equal(t, "2.0.0", h.Version)
	require.NotNil(t, h.Transfer)
	assert.Equal(t, protocol.Held{Update: "u1", Handle: 7, Offset: int64(len(img.data)), State: fleet.StateRebooting}, *h.Transfer)

	eventually(t, func() bool { return a.Stats().UpdateTime > 0 }, "update settled")
	s := a.Stats()
	assert.Equal(t, 1, s.Installs)
	assert.Equal(t, img.sha, s.ImageSHA256)
	assert.Equal(t, "2.0.0", s.Version)
	assert.True(t, s.Updated)
	assert.True(t, s.Connected)
	assert.False(t, s.Failed)
	assert.Equal(t, int64(len(img.data)), s.BytesReceived)

	// A re-offer of the update it already runs is answered with a hello.
	o.offer("dev-1", img.offer("u1", 8, "2.0.0", "m1"))
	h = recv(t, o.hello, "hello on re-offer")
	assert.Equal(t, "2.0.0", h.Version)
	require.NotNil(t, h.Transfer)
	assert.Equal(t, uint32(8), h.Transfer.Handle)
	assert.Equal(t, fleet.StateRebooting, h.Transfer.State)
	assert.Equal(t, 1, a.Stats().Installs)
}

func TestAgent_BadDigestFails(t *testing.T) {
	o := startOrch(t)
	a := startAgent(t, o, nil)
	img := newImage(3 * testChunk)
	of := img.offer("u1", 1, "2.0.0", "")
	of.Firmware.SHA256 = strings.Repeat("00", 32)
	o.offer("dev-1", of)
	o.expectReport(fleet.StateAccepted)
	o.push("dev-1", 1, img.data, 0)
	o.expectReport(fleet.StateDownloaded)
	r := o.expectReport(fleet.StateFailed)
	assert.Equal(t, fleet.ReasonBadDigest, r.Reason)

	eventually(t, func() bool { return a.Stats().Failed }, "failed in stats")
	s := a.Stats()
	assert.Equal(t, 0, s.Installs)
	assert.Equal(t, fleet.ReasonBadDigest, s.LastReason)
	assert.Equal(t, "1.0.0", s.Version)
	assert.Equal(t, img.sha, s.ImageSHA256)
}

func TestAgent_GapGetsDuplicateAck(t *testing.T) {
	o := startOrch(t)
	startAgent(t, o, nil)
	img := newImage(4 * testChunk)
	o.offer("dev-1", img.offer("u1", 3, "2.0.0", "m1"))
	o.expectReport(fleet.StateAccepted)

	o.chunk("dev-1", 3, img.data, testChunk) // gap: 0 is missing
	o.expectAck(3, 0)
	o.chunk("dev-1", 3, img.data, 0)
	o.expectAck(3, testChunk)
	o.chunk("dev-1", 3, img.data, 0) // duplicate
	o.expectAck(3, testChunk)
	o.push("dev-1", 3, img.data, testChunk)
	o.expectReport(fleet.StateDownloaded)
	o.expectReport(fleet.StateVerified)
}

func TestAgent_BadCRCDropped(t *testing.T) {
	o := startOrch(t)
	a := startAgent(t, o, nil)
	img := newImage(4 * testChunk)
	o.offer("dev-1", img.offer("u1", 3, "2.0.0", "m1"))
	o.expectReport(fleet.StateAccepted)

	frame := protocol.AppendFrame(nil, protocol.Frame{Handle: 3, Offset: 0, Payload: img.data[:testChunk]})
	frame[protocol.HeaderSize+5] ^= 0xff
	o.send("dev-1", protocol.KindChunk, frame)
	o.chunk("dev-1", 3, img.data, 0)
	o.chunk("dev-1", 3, img.data, testChunk)
	// Had the corrupt frame been taken, a duplicate ack would come in between.
	o.expectAck(3, testChunk)
	o.expectAck(3, 2*testChunk)
	eventually(t, func() bool { return a.Stats().BadFrames == 1 }, "bad frame counted")
	assert.Equal(t, int64(2*testChunk), a.Stats().BytesReceived)
}

func TestAgent_ReofferResumes(t *testing.T) {
	o := startOrch(t)
	a := startAgent(t, o, nil)
	img := newImage(6 * testChunk)
	o.offer("dev-1", img.offer("u1", 1, "2.0.0", "m1"))
	o.expectReport(fleet.StateAccepted)
	o.push("dev-1", 1, img.data[:3*testChunk], 0)

	o.offer("dev-1", img.offer("u1", 2, "2.0.0", "m1"))
	r := o.expectReport(fleet.StateAccepted)
	assert.Equal(t, int64(3*testChunk), r.Offset)
	assert.Equal(t, uint32(2), r.Handle)

	o.chunk("dev-1", 1, img.data, 3*testChunk) // old handle: dropped silently
	o.push("dev-1", 2, img.data, 3*testChunk)
	for _, st := range []fleet.DeviceState{fleet.StateDownloaded, fleet.StateVerified, fleet.StateInstalling, fleet.StateRebooting} {
		o.expectReport(st)
	}
	h := recv(t, o.hello, "hello after reboot")
	assert.Equal(t, "2.0.0", h.Version)
	eventually(t, func() bool { return a.Stats().UpdateTime > 0 }, "update settled")
	assert.Equal(t, img.sha, a.Stats().ImageSHA256)
	assert.Equal(t, int64(len(img.data)), a.Stats().BytesReceived)
}

func TestAgent_Cancel(t *testing.T) {
	o := startOrch(t)
	a := startAgent(t, o, nil)
	img := newImage(6 * testChunk)
	o.offer("dev-1", img.offer("u1", 1, "2.0.0", "m1"))
	o.expectReport(fleet.StateAccepted)
	o.push("dev-1", 1, img.data[:2*testChunk], 0)

	o.send("dev-1", protocol.KindCancel, protocol.Encode(protocol.Cancel{V: protocol.Version, Update: "u1", Handle: 1, Reason: fleet.ReasonOperator}))
	r := o.expectReport(fleet.StateCancelled)
	assert.Equal(t, fleet.ReasonOperator, r.Reason)
	eventually(t, func() bool { return a.Stats().State == fleet.StateCancelled }, "cancelled in stats")

	// The partial download is gone: a new offer starts at 0.
	o.offer("dev-1", img.offer("u1", 2, "2.0.0", "m1"))
	r = o.expectReport(fleet.StateAccepted)
	assert.Equal(t, int64(0), r.Offset)

	// A cancel of an update it does not hold is answered unknown_update.
	o.send("dev-1", protocol.KindCancel, protocol.Encode(protocol.Cancel{V: protocol.Version, Update: "u9", Handle: 9}))
	r = o.expectReport(fleet.StateCancelled)
	assert.Equal(t, fleet.ReasonUnknownUpdate, r.Reason)
}

func TestAgent_Rejects(t *testing.T) {
	o := startOrch(t)
	a := startAgent(t, o, func(c *Config) { c.MaxImageSize = 8 * testChunk })
	img := newImage(2 * testChunk)

	o.offer("dev-1", img.offer("u1", 1, "2.0.0", "other"))
	r := o.expectReport(fleet.StateRejected)
	assert.Equal(t, fleet.ReasonIncompatibleModel, r.Reason)
	eventually(t, func() bool { return a.Stats().Failed }, "rejection in stats")

	big := img.offer("u2", 2, "2.0.0", "m1")
	big.Firmware.Size = 9 * testChunk
	o.offer("dev-1", big)
	r = o.expectReport(fleet.StateRejected)
	assert.Equal(t, fleet.ReasonNoSpace, r.Reason)

	o.offer("dev-1", img.offer("u3", 3, "2.0.0", "m1"))
	o.expectReport(fleet.StateAccepted)
	o.offer("dev-1", img.offer("u4", 4, "2.0.0", "m1"))
	r = o.expectReport(fleet.StateRejected)
	assert.Equal(t, fleet.ReasonBusy, r.Reason)
	assert.Equal(t, "u4", r.Update)

	// Undecodable control messages are counted, not answered.
	o.send("dev-1", protocol.KindOffer, []byte("{nope"))
	eventually(t, func() bool { return a.Stats().BadFrames == 1 }, "bad offer counted")
}

func TestAgent_InstallFailureKeepsVersion(t *testing.T) {
	o := startOrch(t)
	a := startAgent(t, o, func(c *Config) { c.Faults.FailInstall = 1; c.InstallDelay = 10 * time.Millisecond })
	img := newImage(2 * testChunk)
	o.offer("dev-1", img.offer("u1", 1, "2.0.0", "m1"))
	o.expectReport(fleet.StateAccepted)
	o.push("dev-1", 1, img.data, 0)
	o.expectReport(fleet.StateDownloaded)
	o.expectReport(fleet.StateVerified)
	o.expectReport(fleet.StateInstalling)
	r := o.expectReport(fleet.StateFailed)
	assert.Equal(t, fleet.ReasonInstallFailed, r.Reason)
	eventually(t, func() bool { return a.Stats().Failed }, "failure in stats")
	s := a.Stats()
	assert.Equal(t, "1.0.0", s.Version)
	assert.Equal(t, 0, s.Installs)
	assert.False(t, s.Updated)
}

// TestAgent_DisconnectFaultResumes drives the transfer like the orchestrator
// does: chunks from the acked offset, and a resume from the offset a hello
// announces after the injected disconnect.
func TestAgent_DisconnectFaultResumes(t *testing.T) {
	o := startOrch(t)
	a := startAgent(t, o, func(c *Config) { c.Faults.Disconnect = 1 })
	img := newImage(16 * testChunk)
	o.offer("dev-1", img.offer("u1", 5, "2.0.0", "m1"))
	o.expectReport(fleet.StateAccepted)

	off, resumed := 0, false
	for off < len(img.data) {
		o.chunk("dev-1", 5, img.data, off)
		select {
		case ack := <-o.ack:
			off = int(ack.Offset)
		case h := <-o.hello:
			require.NotNil(t, h.Transfer)
			assert.Equal(t, fleet.StateDownloading, h.Transfer.State)
			assert.Equal(t, "u1", h.Transfer.Update)
			off, resumed = int(h.Transfer.Offset), true
		case <-time.After(waitTimeout):
			t.Fatal("no ack or hello")
		}
	}
	require.True(t, resumed, "the device never disconnected")
	o.expectReport(fleet.StateDownloaded)
	o.expectReport(fleet.StateVerified)
	o.expectReport(fleet.StateInstalling)
	o.expectReport(fleet.StateRebooting)
	h := recv(t, o.hello, "hello after reboot")
	assert.Equal(t, "2.0.0", h.Version)
	eventually(t, func() bool { return a.Stats().UpdateTime > 0 }, "update settled")
	assert.Equal(t, img.sha, a.Stats().ImageSHA256)
	assert.Equal(t, 1, a.Stats().Installs)
}

func TestAgent_ResumesAfterBrokerRestart(t *testing.T) {
	o := startOrch(t)
	a := startAgent(t, o, nil)
	img := newImage(6 * testChunk)
	o.offer("dev-1", img.offer("u1", 1, "2.0.0", "m1"))
	o.expectReport(fleet.StateAccepted)
	o.push("dev-1", 1, img.data[:3*testChunk], 0)

	addr := strings.TrimPrefix(o.url, "tcp://")
	o.close()
	o2 := startOrchAt(t, addr)
	h := recv(t, o2.hello, "hello after the broker restart")
	require.NotNil(t, h.Transfer)
	assert.Equal(t, protocol.Held{Update: "u1", Handle: 1, Offset: 3 * testChunk, State: fleet.StateDownloading}, *h.Transfer)

	// The restarted orchestrator re-offers with a new handle and resumes.
	o2.offer("dev-1", img.offer("u1", 2, "2.0.0", "m1"))
	r := o2.expectReport(fleet.StateAccepted)
	assert.Equal(t, int64(3*testChunk), r.Offset)
	o2.push("dev-1", 2, img.data, 3*testChunk)
	o2.expectReport(fleet.StateDownloaded)
	o2.expectReport(fleet.StateVerified)
	assert.Equal(t, img.sha, a.Stats().ImageSHA256)
}

func TestAgent_DropChunksFault(t *testing.T) {
	o := startOrch(t)
	a := startAgent(t, o, func(c *Config) { c.Faults.DropChunks = 0.5 })
	img := newImage(8 * testChunk)
	o.offer("dev-1", img.offer("u1", 5, "2.0.0", "m1"))
	o.expectReport(fleet.StateAccepted)
	// Stop-and-wait with a short resend timeout, as the orchestrator's ack timeout.
	off := 0
	for off < len(img.data) {
		o.chunk("dev-1", 5, img.data, off)
		select {
		case ack := <-o.ack:
			off = int(ack.Offset)
		case <-time.After(100 * time.Millisecond):
		}
	}
	o.expectReport(fleet.StateDownloaded)
	o.expectReport(fleet.StateVerified)
	assert.Positive(t, a.Stats().ChunksDropped)
}

func TestAgent_CloseIdempotent(t *testing.T) {
	o := startOrch(t)
	a := startAgent(t, o, nil)
	require.NoError(t, a.Close())
	require.NoError(t, a.Close())
	assert.False(t, a.Stats().Connected)
	require.ErrorIs(t, a.Start(context.Background()), fleet.ErrClosed)
}

func TestAgent_StartTimesOutWithoutBroker(t *testing.T) {
	a := New(Config{Broker: "tcp://127.0.0.1:1", ID: "dev-1", Version: "1", RetryInterval: 20 * time.Millisecond})
	defer func() { require.NoError(t, a.Close()) }()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	require.ErrorIs(t, a.Start(ctx), context.DeadlineExceeded)
}
