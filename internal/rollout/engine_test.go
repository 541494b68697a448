package rollout_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/agent"
	"github.com/flotaio/flota/broker"
	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
	"github.com/flotaio/flota/internal/rollout"
	"github.com/flotaio/flota/internal/sqlite"
)

// harness runs the real store, broker and engine on 127.0.0.1:0, and real
// agents over TCP.
type harness struct {
	t      *testing.T
	dir    string
	store  *sqlite.Store
	broker *broker.Broker
	engine *rollout.Engine
	agents []*agent.Agent
	log    *slog.Logger
}

func testLogger(t *testing.T) *slog.Logger {
	if os.Getenv("FLOTA_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	return newHarnessWith(t, testLogger(t), nil)
}

// newHarnessWith is newHarness with every component logging to log and
// the engine configured by configure before it opens.
func newHarnessWith(t *testing.T, log *slog.Logger, configure func(*rollout.Engine)) *harness {
	t.Helper()
	h := &harness{t: t, dir: t.TempDir(), log: log}
	h.store = sqlite.New(h.dir)
	h.store.Logger = h.log
	require.NoError(t, h.store.Open())
	t.Cleanup(func() { h.store.Close() })

	h.broker = broker.New(broker.Options{Addr: "127.0.0.1:0", Logger: h.log})
	h.openEngineWith(configure)
	require.NoError(t, h.broker.Open())
	t.Cleanup(func() { h.broker.Close() })
	return h
}

// openEngine starts a new engine on the harness's store and broker.
func (h *harness) openEngine() { h.openEngineWith(nil) }

func (h *harness) openEngineWith(configure func(*rollout.Engine)) {
	h.engine = rollout.New(h.store, h.broker, h.log)
	h.engine.AckTimeout = 500 * time.Millisecond
	h.engine.OfferTimeout = 2 * time.Second
	if configure != nil {
		configure(h.engine)
	}
	e := h.engine
	h.broker.OnPresence(func(id string, online bool) { e.DevicePresence(id, online) })
	require.NoError(h.t, e.Open(context.Background()))
	h.t.Cleanup(func() { e.Close() })
}

func (h *harness) startAgents(n int, prefix string, cfg agent.Config) []*agent.Agent {
	h.t.Helper()
	var out []*agent.Agent
	for i := 0; i < n; i++ {
		c := cfg
		c.Broker = "tcp://" + h.broker.Addr()
		c.ID = fmt.Sprintf("%s%03d", prefix, i)
		if c.Model == "" {
			c.Model = "m1"
		}
		if c.Version == "" {
			c.Version = "1.0.0"
		}
		if c.RebootDelay == 0 {
			c.RebootDelay = 50 * time.Millisecond
		}
		c.Seed = uint64(i + 1)
		c.Logger = h.log
		a := agent.New(c)
		require.NoError(h.t, a.Start(context.Background()))
		h.t.Cleanup(func() { a.Close() })
		out = append(out, a)
	}
	h.agents = append(h.agents, out...)
	return out
}

// waitDevices waits until n devices are registered.
func (h *harness) waitDevices(n int) {
	h.t.Helper()
	eventually(h.t, 10*time.Second, func() bool {
		_ = h.store.Flush(context.Background())
		_, total, err := h.store.ListDevices(context.Background(), sqlite.DeviceFilter{Limit: 1})
		return err == nil && total >= n
	}, "devices registered")
}

func (h *harness) addFirmware(size int, version string) (fleet.Firmware, []byte) {
	h.t.Helper()
	img := make([]byte, size)
	_, _ = rand.Read(img)
	fw, err := h.store.AddFirmware(context.Background(), fleet.Firmware{Name: "app", Version: version, Model: "m1"}, bytes.NewReader(img))
	require.NoError(h.t, err)
	return fw, img
}

func (h *harness) create(fw fleet.Firmware, pol fleet.Policy, sel fleet.Selector) fleet.Update {
	h.t.Helper()
	u, err := h.engine.CreateUpdate(context.Background(), rollout.CreateRequest{FirmwareID: fw.ID, Selector: sel, Policy: pol})
	require.NoError(h.t, err)
	return u
}

// waitEnd waits until the update is terminal and returns its summary.
func (h *harness) waitEnd(id string, within time.Duration) fleet.UpdateSummary {
	h.t.Helper()
	var s fleet.UpdateSummary
	eventually(h.t, within, func() bool {
		var err error
		s, err = h.engine.Summary(context.Background(), id)
		require.NoError(h.t, err)
		return s.State.Terminal()
	}, "update ends")
	return s
}

func eventually(t *testing.T, within time.Duration, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for: %s", within, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func TestEngine_FleetUpdateSucceeds(t *testing.T) {
	h := newHarness(t)
	agents := h.startAgents(30, "dev", agent.Config{})
	h.waitDevices(30)
	fw, img := h.addFirmware(100_000, "1.1.0") // not a multiple of the chunk size
	u := h.create(fw, fleet.Policy{MaxInFlight: 8, ChunkSize: 4096, Window: 4}, fleet.Selector{Model: "m1"})

	s := h.waitEnd(u.ID, 60*time.Second)
	assert.Equal(t, fleet.UpdateCompleted, s.State)
	assert.Equal(t, 30, s.Counts[fleet.StateSucceeded])
	for _, a := range agents {
		st := a.Stats()
		assert.Equal(t, "1.1.0", st.Version, st.ID)
		assert.Equal(t, 1, st.Installs, st.ID)
		assert.Equal(t, sha(img), st.ImageSHA256, st.ID)
	}

	// The store agrees with the engine.
	require.NoError(t, h.store.Flush(context.Background()))
	counts, err := h.store.CountProgress(context.Background(), u.ID)
	require.NoError(t, err)
	assert.Equal(t, map[fleet.DeviceState]int{fleet.StateSucceeded: 30}, counts)
	stored, err := h.store.Update(context.Background(), u.ID)
	require.NoError(t, err)
	assert.Equal(t, fleet.UpdateCompleted, stored.State)
	assert.NotNil(t, stored.FinishedAt)

	// Every device went through the whole happy path, in order, in the log.
	events, err := h.store.Events(context.Background(), u.ID, 0, 10_000)
	require.NoError(t, err)
	path := map[string][]string{}
	var last int64
	for _, ev := range events {
		assert.Greater(t, ev.Seq, last, "sequence is monotonic")
		last = ev.Seq
		if ev.Type == fleet.EventDevice {
			path[ev.DeviceID] = append(path[ev.DeviceID], ev.State)
		}
	}
	want := []string{"offered", "accepted", "downloading", "downloaded", "verified", "installing", "rebooting", "succeeded"}
	for _, a := range agents {
		assert.Equal(t, want, path[a.ID()], a.ID())
	}
	assert.Zero(t, h.engine.Stats().IllegalChanges)
}

func TestEngine_SkipsDevicesAlreadyOnTarget(t *testing.T) {
	h := newHarness(t)
	h.startAgents(3, "old", agent.Config{})
	h.startAgents(2, "new", agent.Config{Version: "1.1.0"})
	h.waitDevices(5)
	fw, _ := h.addFirmware(10_000, "1.1.0")
	u := h.create(fw, fleet.Policy{}, fleet.Selector{})
	s := h.waitEnd(u.ID, 30*time.Second)
	assert.Equal(t, 3, s.Counts[fleet.StateSucceeded])
	assert.Equal(t, 2, s.Counts[fleet.StateSkipped])
	assert.Equal(t, fleet.UpdateCompleted, s.State)

	_, err := h.engine.CreateUpdate(context.Background(), rollout.CreateRequest{FirmwareID: fw.ID, Selector: fleet.Selector{Model: "nope"}})
	assert.ErrorIs(t, err, fleet.ErrNoTargets)
	_, err = h.engine.CreateUpdate(context.Background(), rollout.CreateRequest{FirmwareID: "fw-missing"})
	assert.ErrorIs(t, err, fleet.ErrFirmwareNotFound)
	_, err = h.engine.CreateUpdate(context.Background(), rollout.CreateRequest{FirmwareID: fw.ID, Policy: fleet.Policy{Window: 1000}})
	assert.ErrorIs(t, err, fleet.ErrInvalidPolicy)
}

func TestEngine_ResendsDroppedChunks(t *testing.T) {
	h := newHarness(t)
	agents := h.startAgents(10, "lossy", agent.Config{Faults: agent.Faults{DropChunks: 0.1}})
	h.waitDevices(10)
	fw, img := h.addFirmware(64*1024, "1.1.0")
	u := h.create(fw, fleet.Policy{ChunkSize: 2048, Window: 8}, fleet.Selector{})
	s := h.waitEnd(u.ID, 60*time.Second)
	assert.Equal(t, 10, s.Counts[fleet.StateSucceeded])
	dropped := 0
	for _, a := range agents {
		st := a.Stats()
		dropped += st.ChunksDropped
		assert.Equal(t, sha(img), st.ImageSHA256)
	}
	require.Positive(t, dropped, "the fault was injected")
	assert.Positive(t, h.engine.Stats().Resends)
}

func TestEngine_InstallFailureEndsFailedWithReason(t *testing.T) {
	h := newHarness(t)
	h.startAgents(4, "ok", agent.Config{})
	bad := h.startAgents(1, "broken", agent.Config{Faults: agent.Faults{FailInstall: 1}})[0]
	h.waitDevices(5)
	fw, _ := h.addFirmware(20_000, "1.1.0")
	u := h.create(fw, fleet.Policy{}, fleet.Selector{})
	s := h.waitEnd(u.ID, 30*time.Second)
	assert.Equal(t, fleet.UpdateCompletedWithFailures, s.State)
	assert.Equal(t, 4, s.Counts[fleet.StateSucceeded])
	assert.Equal(t, 1, s.Counts[fleet.StateFailed])
	require.NoError(t, h.store.Flush(context.Background()), "the end's writes are queued")
	rows, _, err := h.store.Progress(context.Background(), u.ID, sqlite.ProgressFilter{State: fleet.StateFailed})
	require.NoError(t, err)
	require.Len(t, rows, 1)
	assert.Equal(t, bad.ID(), rows[0].DeviceID)
	assert.Equal(t, fleet.ReasonInstallFailed, rows[0].Reason)
	assert.Equal(t, "1.0.0", bad.Stats().Version)
}

func TestEngine_ResumesAfterDeviceDisconnect(t *testing.T) {
	h := newHarness(t)
	agents := h.startAgents(8, "flaky", agent.Config{Faults: agent.Faults{Disconnect: 1}, ReconnectDelay: 100 * time.Millisecond})
	h.waitDevices(8)
	const size = 256 * 1024
	fw, img := h.addFirmware(size, "1.1.0")
	u := h.create(fw, fleet.Policy{ChunkSize: 8192}, fleet.Selector{})
	s := h.waitEnd(u.ID, 60*time.Second)
	assert.Equal(t, 8, s.Counts[fleet.StateSucceeded])
	for _, a := range agents {
		st := a.Stats()
		assert.Equal(t, sha(img), st.ImageSHA256)
		// Resume is byte-exact: nothing near a second full download.
		assert.Less(t, st.BytesReceived, int64(size)*3/2, st.ID)
	}
}

// rawDevice is a hand-driven MQTT client that speaks the protocol badly.
func rawDevice(t *testing.T, addr, id string) paho.Client {
	t.Helper()
	opts := paho.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(id).SetAutoReconnect(false)
	c := paho.NewClient(opts)
	tok := c.Connect()
	require.True(t, tok.WaitTimeout(5*time.Second))
	require.NoError(t, tok.Error())
	t.Cleanup(func() { c.Disconnect(0) })
	return c
}

func publish(t *testing.T, c paho.Client, topic string, payload []byte) {
	t.Helper()
	tok := c.Publish(topic, 1, false, payload)
	require.True(t, tok.WaitTimeout(5*time.Second))
}

func TestEngine_GarbageLeavesOtherDevicesServed(t *testing.T) {
	h := newHarness(t)
	agents := h.startAgents(10, "good", agent.Config{})
	evil := rawDevice(t, h.broker.Addr(), "evil")
	offers := make(chan protocol.Offer, 4)
	tok := evil.Subscribe(protocol.DownFilter("evil"), 1, func(_ paho.Client, m paho.Message) {
		if o, err := protocol.DecodeOffer(m.Payload()); err == nil {
			offers <- o
		}
	})
	require.True(t, tok.WaitTimeout(5*time.Second))
	publish(t, evil, protocol.UpTopic("evil", protocol.KindHello), []byte(`{"v":1,"model":"m1","version":"1.0.0"}`))
	h.waitDevices(11)
	fw, img := h.addFirmware(50_000, "1.1.0")
	u := h.create(fw, fleet.Policy{}, fleet.Selector{})

	var o protocol.Offer
	select {
	case o = <-offers:
	case <-time.After(10 * time.Second):
		t.Fatal("no offer for the raw device")
	}
	garbage := []struct{ kind, payload string }{
		{protocol.KindReport, "\x00\xff\x13random bytes"},
		{protocol.KindAck, "{not json"},
		{protocol.KindHello, `{"v":1,"model":5,"version":"1.0.0"}`},
		{protocol.KindReport, `{"v":2,"update":"` + u.ID + `","state":"accepted"}`},
		{protocol.KindReport, `{"v":1,"update":"u-unknown","handle":1,"state":"accepted"}`},
		{protocol.KindReport, fmt.Sprintf(`{"v":1,"update":%q,"handle":%d,"state":"accepted","offset":%d}`, u.ID, o.Handle, fw.Size+1)},
		{protocol.KindAck, fmt.Sprintf(`{"v":1,"handle":%d,"offset":%d}`, o.Handle, fw.Size*2)},
	} // a kind the protocol does not have never reaches the engine: the broker refuses it

	for _, g := range garbage {
		publish(t, evil, protocol.UpTopic("evil", g.kind), []byte(g.payload))
	}
	eventually(t, 5*time.Second, func() bool { return h.engine.Stats().BadMessages >= int64(len(garbage)) }, "bad messages counted")

	// A report on another device's topic never reaches the engine.
	intruder := rawDevice(t, h.broker.Addr(), "intruder")
	intruder.Publish(protocol.UpTopic("good000", protocol.KindReport), 0, false,
		[]byte(fmt.Sprintf(`{"v":1,"update":%q,"handle":1,"state":"failed","reason":"install_failed"}`, u.ID))).WaitTimeout(time.Second)
	eventually(t, 5*time.Second, func() bool { return h.broker.Stats().ACLDenied > 0 }, "ACL denial counted")

	// Every good device still succeeds; the raw device never acked and is
	// still in flight, so wait on the good ones only.
	eventually(t, 30*time.Second, func() bool {
		s, err := h.engine.Summary(context.Background(), u.ID)
		require.NoError(t, err)
		return s.Counts[fleet.StateSucceeded] == 10
	}, "good devices succeed")
	for _, a := range agents {
		assert.Equal(t, sha(img), a.Stats().ImageSHA256)
	}
	require.NoError(t, h.engine.Cancel(context.Background(), u.ID))
	s := h.waitEnd(u.ID, 5*time.Second)
	assert.Equal(t, fleet.UpdateCancelled, s.State)
	// The raw device never answers the cancel: the offer timeout ends it.
	eventually(t, 10*time.Second, func() bool { return h.summary(u.ID).Counts[fleet.StateCancelled] == 1 }, "silent device cancelled")
}

func TestEngine_PauseStopsAdmissionAndResumeFinishes(t *testing.T) {
	h := newHarness(t)
	h.startAgents(6, "p", agent.Config{InstallDelay: 200 * time.Millisecond})
	h.waitDevices(6)
	fw, _ := h.addFirmware(30_000, "1.1.0")
	u := h.create(fw, fleet.Policy{MaxInFlight: 1}, fleet.Selector{})
	require.NoError(t, h.engine.Pause(context.Background(), u.ID))
	assert.ErrorIs(t, h.engine.Pause(context.Background(), u.ID), fleet.ErrIllegalTransition)

	// The one admitted device may finish; nobody else is started.
	eventually(t, 10*time.Second, func() bool {
		s, _ := h.engine.Summary(context.Background(), u.ID)
		return s.InFlight == 0
	}, "in-flight transfer finishes")
	s, err := h.engine.Summary(context.Background(), u.ID)
	require.NoError(t, err)
	assert.Equal(t, fleet.UpdatePaused, s.State)
	assert.GreaterOrEqual(t, s.Counts[fleet.StateQueued], 5)
	assert.Equal(t, fleet.ReasonOperator, s.PausedReason)
	assert.Equal(t, "paused by an operator: 'update resume' goes on", s.WaitingDetail)
	eventually(t, 5*time.Second, func() bool { return h.summary(u.ID).RateBps > 0 }, "a rate measured")
	assert.Zero(t, h.summary(u.ID).ETASeconds, "a rate but nothing moves: no ETA")

	require.NoError(t, h.engine.Resume(context.Background(), u.ID))
	s = h.waitEnd(u.ID, 30*time.Second)
	assert.Equal(t, fleet.UpdateCompleted, s.State)
	assert.Equal(t, 6, s.Counts[fleet.StateSucceeded])
	assert.ErrorIs(t, h.engine.Resume(context.Background(), u.ID), fleet.ErrUpdateFinished)
	assert.ErrorIs(t, h.engine.Pause(context.Background(), "u-nope"), fleet.ErrUpdateNotFound)
}

func TestEngine_CancelStopsQueuedAndTransferringDevices(t *testing.T) {
	h := newHarness(t)
	agents := h.startAgents(5, "c", agent.Config{})
	h.waitDevices(5)
	fw, _ := h.addFirmware(2*1024*1024, "1.1.0")
	u := h.create(fw, fleet.Policy{MaxInFlight: 2, ChunkSize: 1024, Window: 1}, fleet.Selector{})
	eventually(t, 10*time.Second, func() bool {
		s, _ := h.engine.Summary(context.Background(), u.ID)
		return s.Counts[fleet.StateDownloading] > 0
	}, "a transfer starts")
	require.NoError(t, h.engine.Cancel(context.Background(), u.ID))
	s := h.waitEnd(u.ID, 10*time.Second)
	assert.Equal(t, fleet.UpdateCancelled, s.State)
	// The transferring agents answer the cancel with a cancelled report.
	eventually(t, 5*time.Second, func() bool { return h.summary(u.ID).Counts[fleet.StateCancelled] == 5 }, "all cancelled")
	var answered int
	for _, ev := range h.events(u.ID) {
		if ev.Type == fleet.EventDevice && ev.State == string(fleet.StateCancelled) && ev.From == string(fleet.StateDownloading) {
			answered++
		}
	}
	assert.Positive(t, answered, "a transferring device was cancelled by its own report")
	eventually(t, 5*time.Second, func() bool {
		for _, a := range agents {
			if a.Stats().Holding {
				return false
			}
		}
		return true
	}, "agents discard their partial downloads")
	for _, a := range agents {
		assert.Equal(t, "1.0.0", a.Stats().Version)
	}
}

func TestEngine_ResumeAfterRestart(t *testing.T) {
	h := newHarness(t)
	agents := h.startAgents(6, "r", agent.Config{})
	h.waitDevices(6)
	// Small chunks and a window of one keep every device downloading when
	// the engine stops.
	const size = 2 * 1024 * 1024
	fw, img := h.addFirmware(size, "1.1.0")
	u := h.create(fw, fleet.Policy{ChunkSize: 1024, Window: 1}, fleet.Selector{})
	eventually(t, 10*time.Second, func() bool {
		s, _ := h.engine.Summary(context.Background(), u.ID)
		return s.BytesAcked > 256*1024
	}, "transfers under way")

	// Stop the engine mid-transfer and start a new one on the same store.
	require.NoError(t, h.engine.Close())
	h.openEngine()
	// Devices are still connected: make them say hello as after a reconnect.
	for _, a := range agents {
		a.Close()
	}
	restarted := h.startAgentsLike(agents)
	s := h.waitEnd(u.ID, 60*time.Second)
	assert.Equal(t, fleet.UpdateCompleted, s.State)
	assert.Equal(t, 6, s.Counts[fleet.StateSucceeded])
	for _, a := range restarted {
		assert.Equal(t, "1.1.0", a.Stats().Version)
		assert.Equal(t, sha(img), a.Stats().ImageSHA256)
	}
}

// startAgentsLike restarts agents with the same IDs (a reconnect, without
// the transfer state: the device starts again from zero, which the engine
// must accept as the authoritative offset).
func (h *harness) startAgentsLike(old []*agent.Agent) []*agent.Agent {
	var out []*agent.Agent
	for _, o := range old {
		c := agent.Config{Broker: "tcp://" + h.broker.Addr(), ID: o.ID(), Model: "m1", Version: "1.0.0",
			RebootDelay: 50 * time.Millisecond, Logger: h.log}
		a := agent.New(c)
		require.NoError(h.t, a.Start(context.Background()))
		h.t.Cleanup(func() { a.Close() })
		out = append(out, a)
	}
	return out
}

// scripted is a device driven by the test, message by message.
type scripted struct {
	t      *testing.T
	id     string
	c      paho.Client
	offers chan protocol.Offer
	chunks chan protocol.Frame
}

func newScripted(t *testing.T, h *harness, id, version string) *scripted {
	t.Helper()
	s := &scripted{t: t, id: id, c: rawDevice(t, h.broker.Addr(), id),
		offers: make(chan protocol.Offer, 16), chunks: make(chan protocol.Frame, 1024)}
	tok := s.c.Subscribe(protocol.DownFilter(id), 1, func(_ paho.Client, m paho.Message) {
		switch {
		case strings.HasSuffix(m.Topic(), "/offer"):
			if o, err := protocol.DecodeOffer(m.Payload()); err == nil {
				s.offers <- o
			}
		case strings.HasSuffix(m.Topic(), "/chunk"):
			if f, err := protocol.DecodeFrame(append([]byte(nil), m.Payload()...)); err == nil {
				select {
				case s.chunks <- f:
				default:
				}
			}
		}
	})
	require.True(t, tok.WaitTimeout(5*time.Second))
	s.hello(version, nil)
	return s
}

func (s *scripted) send(kind string, v any) {
	s.t.Helper()
	publish(s.t, s.c, protocol.UpTopic(s.id, kind), protocol.Encode(v))
}

func (s *scripted) hello(version string, held *protocol.Held) {
	s.send(protocol.KindHello, protocol.Hello{V: 1, Model: "m1", Version: version, Transfer: held})
}

func (s *scripted) report(o protocol.Offer, state fleet.DeviceState, offset int64, reason fleet.Reason) {
	s.send(protocol.KindReport, protocol.Report{V: 1, Update: o.Update, Handle: o.Handle, State: state, Offset: offset, Reason: reason})
}

func (s *scripted) offer() protocol.Offer {
	s.t.Helper()
	select {
	case o := <-s.offers:
		return o
	case <-time.After(10 * time.Second):
		s.t.Fatalf("%s: no offer", s.id)
		return protocol.Offer{}
	}
}

// download receives every chunk of o in order and acks it.
func (s *scripted) download(o protocol.Offer) { s.downloadFrom(o, 0) }

// downloadFrom receives the chunks of o from offset next on.
func (s *scripted) downloadFrom(o protocol.Offer, next int64) {
	s.t.Helper()
	deadline := time.After(20 * time.Second)
	for next < o.Firmware.Size {
		select {
		case f := <-s.chunks:
			if f.Handle == o.Handle && int64(f.Offset) == next {
				next += int64(len(f.Payload))
			}
			s.send(protocol.KindAck, protocol.Ack{V: 1, Handle: o.Handle, Offset: next})
		case <-deadline:
			s.t.Fatalf("%s: download stalled at %d", s.id, next)
		}
	}
}

func (h *harness) deviceState(update, device string) fleet.Progress {
	h.t.Helper()
	require.NoError(h.t, h.store.Flush(context.Background()))
	rows, _, err := h.store.Progress(context.Background(), update, sqlite.ProgressFilter{Limit: 1000})
	require.NoError(h.t, err)
	for _, p := range rows {
		if p.DeviceID == device {
			return p
		}
	}
	h.t.Fatalf("no progress row for %s", device)
	return fleet.Progress{}
}

func TestEngine_ReplayedAndStaleReportsChangeNothing(t *testing.T) {
	h := newHarness(t)
	d := newScripted(t, h, "replay", "1.0.0")
	h.waitDevices(1)
	fw, _ := h.addFirmware(20_000, "1.1.0")
	u := h.create(fw, fleet.Policy{ChunkSize: 4096, Window: 2}, fleet.Selector{})

	first := d.offer()
	d.report(first, fleet.StateAccepted, 0, "")
	// Reconnect mid-transfer: a new offer with a new handle.
	d.hello("1.0.0", &protocol.Held{Update: u.ID, Handle: first.Handle, Offset: 0, State: fleet.StateDownloading})
	o := d.offer()
	require.NotEqual(t, first.Handle, o.Handle)
	d.report(o, fleet.StateAccepted, 0, "")
	d.download(o)
	d.report(o, fleet.StateDownloaded, fw.Size, "")
	d.report(o, fleet.StateVerified, fw.Size, "")
	eventually(t, 5*time.Second, func() bool { return h.deviceState(u.ID, "replay").State == fleet.StateVerified }, "verified")

	before := h.engine.Stats()
	// Replays of the old offer, duplicates, out-of-order and another
	// update's reports.
	d.report(first, fleet.StateFailed, 0, fleet.ReasonBadDigest)
	d.report(first, fleet.StateAccepted, 0, "")
	d.report(o, fleet.StateAccepted, 0, "")
	d.report(o, fleet.StateDownloaded, fw.Size, "")
	d.report(o, fleet.StateVerified, fw.Size, "")
	d.send(protocol.KindAck, protocol.Ack{V: 1, Handle: first.Handle, Offset: 4096})
	d.send(protocol.KindReport, protocol.Report{V: 1, Update: "u-000000000000", Handle: o.Handle, State: fleet.StateFailed})
	eventually(t, 5*time.Second, func() bool {
		st := h.engine.Stats()
		return st.StaleMessages+st.BadMessages+st.IllegalChanges-before.StaleMessages-before.BadMessages-before.IllegalChanges >= 7
	}, "replays counted")
	p := h.deviceState(u.ID, "replay")
	assert.Equal(t, fleet.StateVerified, p.State, "no state regressed")
	assert.Equal(t, 1, p.Attempts)

	d.report(o, fleet.StateInstalling, fw.Size, "")
	d.report(o, fleet.StateRebooting, fw.Size, "")
	d.hello("1.1.0", &protocol.Held{Update: u.ID, Handle: o.Handle, Offset: fw.Size, State: fleet.StateRebooting})
	s := h.waitEnd(u.ID, 10*time.Second)
	assert.Equal(t, fleet.UpdateCompleted, s.State)
	assert.Equal(t, map[fleet.DeviceState]int{fleet.StateSucceeded: 1}, s.Counts)

	// After the end, replays are stale and change nothing.
	d.report(o, fleet.StateFailed, 0, fleet.ReasonInstallFailed)
	d.hello("1.0.0", &protocol.Held{Update: u.ID, Handle: o.Handle, Offset: fw.Size, State: fleet.StateRebooting})
	require.NoError(t, h.store.Flush(context.Background()))
	assert.Equal(t, fleet.StateSucceeded, h.deviceState(u.ID, "replay").State)
	counts, err := h.store.CountProgress(context.Background(), u.ID)
	require.NoError(t, err)
	assert.Equal(t, map[fleet.DeviceState]int{fleet.StateSucceeded: 1}, counts)
}

func TestEngine_ConfirmsBootWhenReportsWereLost(t *testing.T) {
	for _, tc := range []struct {
		name string
		sent []fleet.DeviceState // reports that arrive after the download
	}{
		// downloaded ... rebooting never arrive; the device comes back on
		// the target version.
		{"no report", nil},
		// downloaded, verified and installing were lost (the connection
		// broke as they were sent); rebooting arrives.
		{"rebooting only", []fleet.DeviceState{fleet.StateRebooting}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			d := newScripted(t, h, "lost", "1.0.0")
			h.waitDevices(1)
			fw, _ := h.addFirmware(8192, "1.1.0")
			u := h.create(fw, fleet.Policy{ChunkSize: 4096}, fleet.Selector{})
			o := d.offer()
			d.report(o, fleet.StateAccepted, 0, "")
			d.download(o)
			for _, st := range tc.sent {
				d.report(o, st, 0, "")
			}
			d.hello("1.1.0", &protocol.Held{Update: u.ID, Handle: o.Handle, Offset: fw.Size, State: fleet.StateRebooting})
			s := h.waitEnd(u.ID, 10*time.Second)
			assert.Equal(t, map[fleet.DeviceState]int{fleet.StateSucceeded: 1}, s.Counts)
			assert.Zero(t, h.engine.Stats().IllegalChanges)

			var path []string
			for _, ev := range h.events(u.ID) {
				if ev.Type == fleet.EventDevice {
					path = append(path, ev.State)
				}
			}
			assert.Equal(t, []string{"offered", "accepted", "downloading", "downloaded", "verified", "installing", "rebooting", "succeeded"}, path,
				"the steps the device did not report are in the log, in order")
		})
	}
}

func TestEngine_DeviceAwayPastIdleTimeoutIsQueuedAgainNotStuck(t *testing.T) {
	h := newHarness(t)
	d := newScripted(t, h, "away", "1.0.0")
	h.waitDevices(1)
	fw, _ := h.addFirmware(16384, "1.1.0")
	u := h.create(fw, fleet.Policy{ChunkSize: 4096, Window: 1, MaxAttempts: 1, IdleTimeout: fleet.Duration(300 * time.Millisecond)}, fleet.Selector{})
	o := d.offer()
	d.report(o, fleet.StateAccepted, 0, "")
	d.c.Disconnect(0)
	eventually(t, 5*time.Second, func() bool { return h.deviceState(u.ID, "away").State == fleet.StateQueued }, "queued again")

	// Back after a long time: offered again, same attempt, and it finishes.
	d2 := newScripted(t, h, "away", "1.0.0")
	o2 := d2.offer()
	assert.Equal(t, 1, o2.Attempt, "time away does not spend an attempt")
	d2.report(o2, fleet.StateAccepted, 4096, "")
	d2.downloadFrom(o2, 4096)
	d2.hello("1.1.0", &protocol.Held{Update: u.ID, Handle: o2.Handle, Offset: fw.Size, State: fleet.StateRebooting})
	s := h.waitEnd(u.ID, 10*time.Second)
	assert.Equal(t, map[fleet.DeviceState]int{fleet.StateSucceeded: 1}, s.Counts)
}

// downTransport fails the chunk publishes while down is set, as an external
// broker's client does while it reconnects (mqttclient.ErrNotConnected).
type downTransport struct {
	rollout.Transport
	down   atomic.Bool
	failed atomic.Int64 // chunk publishes refused
}

func (d *downTransport) Publish(topic string, payload []byte, retain bool, qos byte) error {
	if d.down.Load() && strings.HasSuffix(topic, "/"+protocol.KindChunk) {
		d.failed.Add(1)
		return errors.New("not connected to the broker")
	}
	return d.Transport.Publish(topic, payload, retain, qos)
}

// A chunk whose publish failed leaves nothing outstanding, so no ack comes
// to send more; the resend timer sends it again once the transport is back,
// long before the idle timeout would fail the attempt.
func TestEngine_ChunkPublishFailureWithNothingOutstandingIsResent(t *testing.T) {
	h := newHarness(t)
	tr := &downTransport{Transport: h.broker}
	require.NoError(t, h.engine.Close())
	h.openEngineWith(func(e *rollout.Engine) { e.Transport = tr })
	d := newScripted(t, h, "cut", "1.0.0")
	h.waitDevices(1)
	fw, _ := h.addFirmware(16384, "1.1.0")
	u := h.create(fw, fleet.Policy{ChunkSize: 4096, Window: 2, MaxAttempts: 1}, fleet.Selector{})
	o := d.offer()

	tr.down.Store(true)
	d.report(o, fleet.StateAccepted, 0, "")
	eventually(t, 10*time.Second, func() bool { return tr.failed.Load() > 0 }, "the first chunk's publish fails")
	tr.down.Store(false) // reconnected; the device, still connected, says nothing

	d.download(o) // fails after 20 s, well under the 2 minute idle timeout
	d.report(o, fleet.StateDownloaded, fw.Size, "")
	d.report(o, fleet.StateVerified, fw.Size, "")
	d.report(o, fleet.StateInstalling, fw.Size, "")
	d.report(o, fleet.StateRebooting, fw.Size, "")
	d.hello("1.1.0", &protocol.Held{Update: u.ID, Handle: o.Handle, Offset: fw.Size, State: fleet.StateRebooting})
	s := h.waitEnd(u.ID, 20*time.Second)
	assert.Equal(t, map[fleet.DeviceState]int{fleet.StateSucceeded: 1}, s.Counts)
}
