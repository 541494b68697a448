package agent

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
)

// sentMsg is one message an offline agent published.
type sentMsg struct {
	kind    string
	payload []byte
}

// newRecordingAgent is an offline agent (see newOfflineAgent) that keeps the
// payloads it publishes and loads its state file, as Start does. Its
// background writer is waited for when the test ends.
func newRecordingAgent(t *testing.T, cfg Config) (*Agent, *[]sentMsg) {
	a := New(cfg)
	var sent []sentMsg
	prefix := protocol.DevicesRoot + cfg.ID + "/up/"
	a.out = func(topic string, _ byte, payload []byte) waiter {
		sent = append(sent, sentMsg{kind: topic[len(prefix):], payload: payload})
		return doneToken{}
	}
	a.loadState()
	t.Cleanup(a.persist.wg.Wait)
	return a, &sent
}

// persistConfig checkpoints every 4 chunks and never by time.
func persistConfig(t *testing.T) Config {
	return Config{ID: "dev-1", Model: "m", Version: "1", Seed: 1,
		StateFile:       filepath.Join(t.TempDir(), "dev-1.json"),
		CheckpointBytes: 4 * testChunk, CheckpointInterval: time.Hour}
}

// crash drops a without a clean shutdown, once the background writer wrote
// the checkpoints it was given (what a crash just after them leaves).
func crash(a *Agent) {
	a.persist.wg.Wait()
}

func sendChunks(a *Agent, img image, handle uint32, from, to int) {
	for off := from; off < to; off += testChunk {
		end := min(off+testChunk, len(img.data))
		a.handleDown(protocol.KindChunk, protocol.AppendFrame(nil, protocol.Frame{Handle: handle, Offset: uint32(off), Payload: img.data[off:end]}))
		step(a)
	}
}

func offerMsg(img image, update string, handle uint32) []byte {
	of := img.offer(update, handle, "2", "m")
	of.V, of.ChunkSize, of.Window = 1, testChunk, 4
	return protocol.Encode(of)
}

func lastOf(t *testing.T, sent []sentMsg, kind string) []byte {
	t.Helper()
	for i := len(sent) - 1; i >= 0; i-- {
		if sent[i].kind == kind {
			return sent[i].payload
		}
	}
	t.Fatalf("no %s sent", kind)
	return nil
}

func reportStates(t *testing.T, sent []sentMsg) []fleet.DeviceState {
	t.Helper()
	var states []fleet.DeviceState
	for _, m := range sent {
		if m.kind == protocol.KindReport {
			r, err := protocol.DecodeReport(m.payload)
			require.NoError(t, err)
			states = append(states, r.State)
		}
	}
	return states
}

func readStateFile(t *testing.T, path string) stateFile {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	var sf stateFile
	require.NoError(t, json.Unmarshal(b, &sf))
	return sf
}

func TestAgent_ResumesDownloadAfterCrash(t *testing.T) {
	cfg := persistConfig(t)
	img := newImage(20*testChunk + 100)

	a, _ := newRecordingAgent(t, cfg)
	a.handleDown(protocol.KindOffer, offerMsg(img, "u1", 9))
	sendChunks(a, img, 9, 0, 10*testChunk)
	require.Equal(t, int64(10*testChunk), a.held.expected)
	crash(a)

	// Checkpoints at 4 and 8 chunks; the last two chunks were not saved.
	b, sent := newRecordingAgent(t, cfg)
	b.sayHello(b.heldHello())
	h, err := protocol.DecodeHello(lastOf(t, *sent, protocol.KindHello))
	require.NoError(t, err)
	assert.Equal(t, "1", h.Version)
	assert.Equal(t, &protocol.Held{Update: "u1", Handle: 9, Offset: 8 * testChunk, State: fleet.StateDownloading}, h.Transfer)
	assert.True(t, b.Stats().Holding)

	// The orchestrator offers again (new handle): accepted at the offset held.
	b.handleDown(protocol.KindOffer, offerMsg(img, "u1", 10))
	r, err := protocol.DecodeReport(lastOf(t, *sent, protocol.KindReport))
	require.NoError(t, err)
	assert.Equal(t, fleet.StateAccepted, r.State)
	assert.Equal(t, int64(8*testChunk), r.Offset)
	assert.Equal(t, uint32(10), r.Handle)

	sendChunks(b, img, 10, 8*testChunk, len(img.data))
	s := b.Stats()
	assert.Equal(t, img.sha, s.ImageSHA256, "the restored hash state continues the digest")
	assert.Equal(t, 1, s.Installs)
	assert.Equal(t, "2", s.Version)
	assert.Equal(t, int64(len(img.data)-8*testChunk), s.BytesReceived)
	assert.Equal(t, []fleet.DeviceState{fleet.StateAccepted, fleet.StateDownloaded, fleet.StateVerified,
		fleet.StateInstalling, fleet.StateRebooting}, reportStates(t, *sent))

	crash(b) // the end of the transfer is saved in the background
	sf := readStateFile(t, cfg.StateFile)
	assert.Equal(t, "2", sf.Version)
	assert.Equal(t, 1, sf.Installs)
	assert.Nil(t, sf.Held)
	assert.Equal(t, &completedFile{Update: "u1", Handle: 10, Size: int64(len(img.data)), Version: "2"}, sf.Done)

	// Restarted once more: it runs the new version and answers a re-offer of
	// the update it completed with a hello, not a download.
	c, sent := newRecordingAgent(t, cfg)
	s = c.Stats()
	assert.Equal(t, "2", s.Version)
	assert.Equal(t, 1, s.Installs)
	assert.Equal(t, 1, s.InstallsBefore)
	assert.True(t, s.Updated)
	c.handleDown(protocol.KindOffer, offerMsg(img, "u1", 11))
	require.Len(t, *sent, 1)
	h, err = protocol.DecodeHello(lastOf(t, *sent, protocol.KindHello))
	require.NoError(t, err)
	assert.Equal(t, "2", h.Version)
	assert.Equal(t, &protocol.Held{Update: "u1", Handle: 11, Offset: int64(len(img.data)), State: fleet.StateRebooting}, h.Transfer)
}

func TestAgent_CheckpointsByTime(t *testing.T) {
	cfg := persistConfig(t)
	cfg.CheckpointBytes = 1 << 30
	cfg.CheckpointInterval = time.Nanosecond
	img := newImage(6 * testChunk)
	a, _ := newRecordingAgent(t, cfg)
	a.handleDown(protocol.KindOffer, offerMsg(img, "u1", 9))
	sendChunks(a, img, 9, 0, 3*testChunk)
	crash(a)
	sf := readStateFile(t, cfg.StateFile)
	require.NotNil(t, sf.Held)
	assert.Equal(t, int64(3*testChunk), sf.Held.Offset)
	assert.NotEmpty(t, sf.Held.HashState)
}

func TestAgent_ContinuesInstallAfterCrash(t *testing.T) {
	cfg := persistConfig(t)
	img := newImage(5 * testChunk)
	a, _ := newRecordingAgent(t, cfg)
	a.handleDown(protocol.KindOffer, offerMsg(img, "u1", 9))
	for off := 0; off < len(img.data); off += testChunk {
		a.handleDown(protocol.KindChunk, protocol.AppendFrame(nil, protocol.Frame{Handle: 9, Offset: uint32(off), Payload: img.data[off:min(off+testChunk, len(img.data))]}))
	}
	require.Equal(t, actInstall, a.action, "installing; the install did not run")
	crash(a)
	assert.Equal(t, fleet.StateInstalling, readStateFile(t, cfg.StateFile).Held.State)

	b, sent := newRecordingAgent(t, cfg)
	b.sayHello(b.heldHello())
	h, err := protocol.DecodeHello((*sent)[0].payload)
	require.NoError(t, err)
	assert.Equal(t, &protocol.Held{Update: "u1", Handle: 9, Offset: int64(len(img.data)), State: fleet.StateInstalling}, h.Transfer)
	step(b) // the install runs again, then the reboot
	s := b.Stats()
	assert.Equal(t, 1, s.Installs, "the interrupted install was never counted")
	assert.Equal(t, "2", s.Version)
	assert.Nil(t, b.held)
	assert.Equal(t, []fleet.DeviceState{fleet.StateRebooting}, reportStates(t, *sent))
}

func TestAgent_ContinuesVerificationAfterCrash(t *testing.T) {
	cfg := persistConfig(t)
	img := newImage(5 * testChunk)
	a, _ := newRecordingAgent(t, cfg)
	a.handleDown(protocol.KindOffer, offerMsg(img, "u1", 9))
	sendChunks(a, img, 9, 0, 4*testChunk)
	// The last chunk arrived and the file says downloaded (with the hash
	// state), but the device lost power before verifying.
	t1 := a.held
	t1.hash.Write(img.data[4*testChunk:])
	t1.expected = int64(len(img.data))
	t1.state = fleet.StateDownloaded
	a.saveState(true)

	b, sent := newRecordingAgent(t, cfg)
	b.sayHello(b.heldHello())
	step(b)
	s := b.Stats()
	assert.Equal(t, img.sha, s.ImageSHA256)
	assert.Equal(t, 1, s.Installs)
	assert.Equal(t, "2", s.Version)
	assert.Equal(t, []fleet.DeviceState{fleet.StateDownloaded, fleet.StateVerified, fleet.StateInstalling,
		fleet.StateRebooting}, reportStates(t, *sent))
}

func TestAgent_RebootsIntoNewVersionAfterCrash(t *testing.T) {
	cfg := persistConfig(t)
	img := newImage(3 * testChunk)
	a, _ := newRecordingAgent(t, cfg)
	a.handleDown(protocol.KindOffer, offerMsg(img, "u1", 9))
	sendChunks(a, img, 9, 0, 2*testChunk)
	a.handleDown(protocol.KindChunk, protocol.AppendFrame(nil, protocol.Frame{Handle: 9, Offset: 2 * testChunk, Payload: img.data[2*testChunk:]}))
	a.action = actNone
	a.finishInstall(nil) // reported rebooting; the reboot did not happen
	crash(a)

	b, sent := newRecordingAgent(t, cfg)
	assert.Equal(t, 1, b.Stats().Installs)
	b.boot()
	b.sayHello(b.heldHello())
	h, err := protocol.DecodeHello(lastOf(t, *sent, protocol.KindHello))
	require.NoError(t, err)
	assert.Equal(t, "2", h.Version)
	assert.Equal(t, fleet.StateRebooting, h.Transfer.State)
	assert.Nil(t, b.held, "the reboot hello was acknowledged")
	assert.Equal(t, 1, readStateFile(t, cfg.StateFile).Installs)
}

func TestAgent_UnusableStateFileStartsFresh(t *testing.T) {
	img := newImage(5 * testChunk)
	good := func() stateFile {
		held := &heldRecord{Update: "u1", Handle: 1, State: fleet.StateDownloading,
			Firmware: protocol.FirmwareInfo{Version: "3", Size: int64(len(img.data)), SHA256: img.sha}}
		return stateFile{V: 1, ID: "dev-1", Version: "2", Installs: 1, Held: held}
	}
	enc := func(f func(*stateFile)) []byte {
		sf := good()
		f(&sf)
		b, err := json.Marshal(sf)
		require.NoError(t, err)
		return b
	}
	cases := map[string][]byte{
		"garbage":        []byte("\x00\x01not json"),
		"truncated":      enc(func(*stateFile) {})[:40],
		"empty":          {},
		"other device":   enc(func(sf *stateFile) { sf.ID = "dev-2" }),
		"future format":  enc(func(sf *stateFile) { sf.V = 2 }),
		"no hash state":  enc(func(*stateFile) {}),
		"offset > size":  enc(func(sf *stateFile) { sf.Held.Offset = sf.Held.Firmware.Size + 1 }),
		"unknown state":  enc(func(sf *stateFile) { sf.Held.State = "bogus" }),
		"unknown field":  []byte(`{"v":1,"id":"dev-1","version":"2","installs":0,"extra":1}`),
		"empty version":  enc(func(sf *stateFile) { sf.Version = ""; sf.Held = nil }),
		"early install":  enc(func(sf *stateFile) { sf.Held.State = fleet.StateInstalling; sf.Held.Offset = 1 }),
		"negative count": enc(func(sf *stateFile) { sf.Installs = -1; sf.Held = nil }),
	}
	for name, content := range cases {
		t.Run(name, func(t *testing.T) {
			cfg := persistConfig(t)
			require.NoError(t, os.WriteFile(cfg.StateFile, content, 0o644))
			a, sent := newRecordingAgent(t, cfg)
			assert.Nil(t, a.held)
			assert.Equal(t, Stats{ID: "dev-1", Version: "1"}, a.Stats())
			a.sayHello(a.heldHello())
			h, err := protocol.DecodeHello((*sent)[0].payload)
			require.NoError(t, err)
			assert.Equal(t, "1", h.Version)
			assert.Nil(t, h.Transfer)

			// It works, and replaces the file with a good one.
			a.handleDown(protocol.KindOffer, offerMsg(img, "u1", 9))
			sf := readStateFile(t, cfg.StateFile)
			require.NotNil(t, sf.Held)
			assert.Equal(t, fleet.StateDownloading, sf.Held.State)
		})
	}
}

func TestAgent_StateSavedOnCancelAndFailure(t *testing.T) {
	cfg := persistConfig(t)
	img := newImage(5 * testChunk)
	a, _ := newRecordingAgent(t, cfg)
	a.handleDown(protocol.KindOffer, offerMsg(img, "u1", 9))
	sendChunks(a, img, 9, 0, testChunk)
	a.handleDown(protocol.KindCancel, protocol.Encode(protocol.Cancel{V: 1, Update: "u1", Handle: 9}))
	sf := readStateFile(t, cfg.StateFile)
	assert.Nil(t, sf.Held, "a cancelled transfer is forgotten on disk too")

	bad := img
	bad.sha = "00" + img.sha[2:]
	a.handleDown(protocol.KindOffer, offerMsg(bad, "u2", 10))
	sendChunks(a, bad, 10, 0, len(img.data))
	assert.Equal(t, fleet.ReasonBadDigest, a.Stats().LastReason)
	sf = readStateFile(t, cfg.StateFile)
	assert.Nil(t, sf.Held)
	assert.Equal(t, "1", sf.Version)
}

// TestAgent_CloseSavesExactOffset runs an agent with a broker: a clean Close
// saves the offset it holds exactly, and a new agent on the same file says
// hello with it.
func TestAgent_CloseSavesExactOffset(t *testing.T) {
	o := startOrch(t)
	file := filepath.Join(t.TempDir(), "dev-1.json")
	a := startAgent(t, o, func(c *Config) { c.StateFile = file; c.CheckpointInterval = time.Hour })
	img := newImage(10 * testChunk)
	of := img.offer("u1", 7, "2.0.0", "m1")
	of.Window = 1
	o.offer("dev-1", of)
	o.expectReport(fleet.StateAccepted)
	for off := 0; off < 3*testChunk; off += testChunk {
		o.chunk("dev-1", 7, img.data, off)
		o.expectAck(7, off+testChunk)
	}
	require.NoError(t, a.Close())

	b := New(Config{Broker: o.url, ID: "dev-1", Model: "m1", Version: "1.0.0", StateFile: file,
		RetryInterval: 100 * time.Millisecond, DialTimeout: time.Second})
	t.Cleanup(func() { require.NoError(t, b.Close()) })
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	require.NoError(t, b.Start(ctx))
	h := recv(t, o.hello, "hello of the restarted device")
	assert.Equal(t, &protocol.Held{Update: "u1", Handle: 7, Offset: 3 * testChunk, State: fleet.StateDownloading}, h.Transfer)

	of.Handle = 8
	o.offer("dev-1", of)
	r := o.expectReport(fleet.StateAccepted)
	assert.Equal(t, int64(3*testChunk), r.Offset)
	o.push("dev-1", 8, img.data, 3*testChunk)
	for _, st := range []fleet.DeviceState{fleet.StateDownloaded, fleet.StateVerified, fleet.StateInstalling, fleet.StateRebooting} {
		o.expectReport(st)
	}
	h = recv(t, o.hello, "hello after reboot")
	assert.Equal(t, "2.0.0", h.Version)
	eventually(t, func() bool { return !b.Stats().Holding }, "reboot confirmed")
	assert.Equal(t, img.sha, b.Stats().ImageSHA256)
}
