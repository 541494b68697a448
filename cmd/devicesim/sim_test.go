package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
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

func TestParseFlags_Validation(t *testing.T) {
	bad := map[string][]string{
		"devices zero":       {"--devices", "0"},
		"probability > 1":    {"--drop-chunks", "1.5"},
		"probability < 0":    {"--fail-install", "-0.1"},
		"disconnect NaN":     {"--disconnect", "NaN"},
		"bad tags":           {"--tags", "novalue"},
		"bad broker":         {"--broker", "127.0.0.1:1883"},
		"bad second broker":  {"--broker", "tcp://127.0.0.1:1883,127.0.0.1:1884"},
		"no broker":          {"--broker", " , "},
		"bad prefix":         {"--id-prefix", "a/b"},
		"connect rate":       {"--connect-rate", "0"},
		"negative duration":  {"--duration", "-1s"},
		"negative resub":     {"--resubscribe-after", "-1s"},
		"unknown flag":       {"--nope"},
		"positional":         {"extra"},
		"not a number":       {"--devices", "many"},
		"bad log level":      {"--log-level", "loud"},
		"empty version":      {"--version", ""},
		"too many devices":   {"--devices", "100000"},
		"prefix too long ID": {"--id-prefix", string(bytes.Repeat([]byte("a"), 60))},
		"tag with ESC":       {"--tags", "site=a\x1b[2J"},
		"tag value too long": {"--tags", "site=" + string(bytes.Repeat([]byte("a"), 65))},
		"model not ASCII":    {"--model", "capteur-é"},
		"version too long":   {"--version", string(bytes.Repeat([]byte("1"), 65))},
		"max chunk too low":  {"--max-chunk", "255"},
		"max chunk too high": {"--max-chunk", "65537"},
		"max window 65":      {"--max-window", "65"},
		"limited every 0":    {"--max-chunk", "1024", "--limited-every", "0"},
		"subscribe QoS 2":    {"--subscribe-qos", "2"},
	}
	for name, args := range bad {
		t.Run(name, func(t *testing.T) {
			_, err := parseFlags(args)
			var ue *usageError
			require.ErrorAs(t, err, &ue)
			// run reports the same error before doing anything.
			err = run(context.Background(), args, &bytes.Buffer{})
			require.ErrorAs(t, err, &ue)
		})
	}

	o, err := parseFlags([]string{"--devices", "3", "--tags", "site=a,ring=1", "--disconnect", "1", "--seed", "9"})
	require.NoError(t, err)
	assert.Equal(t, 3, o.devices)
	assert.Equal(t, map[string]string{"site": "a", "ring": "1"}, o.tags)
	assert.Equal(t, 1.0, o.faults.Disconnect)
	assert.Equal(t, "sim-", o.idPrefix)
	assert.Equal(t, 500, o.connectRate)
	assert.Equal(t, "sim-00001", deviceID(o.idPrefix, 1))
}

func TestPercentile_NearestRank(t *testing.T) {
	d := []time.Duration{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	assert.Equal(t, time.Duration(5), percentile(d, 0.5))
	assert.Equal(t, time.Duration(10), percentile(d, 0.99))
	assert.Equal(t, time.Duration(0), percentile(nil, 0.5))
}

// allowHook lets every client connect and use every topic.
type allowHook struct{ mqtt.HookBase }

func (h *allowHook) ID() string { return "allow-all" }
func (h *allowHook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnConnectAuthenticate, mqtt.OnACLCheck}, []byte{b})
}
func (h *allowHook) OnConnectAuthenticate(*mqtt.Client, packets.Packet) bool { return true }
func (h *allowHook) OnACLCheck(*mqtt.Client, string, bool) bool              { return true }

type upMsg struct {
	device, kind string
	payload      []byte
}

// session is the scripted orchestrator's view of one device.
type session struct {
	handle   uint32
	acked    int
	progress time.Time
	payload  []byte // what the chunks carry
}

// scriptedOrchestrator offers img to every device that says hello on
// version "1.0.0" and pushes it stop-and-wait, resending from the acked
// offset after a timeout or a resume hello.
func scriptedOrchestrator(t *testing.T, img []byte, sha string) string {
	t.Helper()
	return scriptedOrchestratorOffering(t, func(h protocol.Hello, of protocol.Offer) (protocol.Offer, []byte) {
		of.Firmware = protocol.FirmwareInfo{ID: "fw", Name: "fw", Version: "2.0.0", Size: int64(len(img)), SHA256: sha}
		return of, img
	})
}

// scriptedOrchestratorOffering is scriptedOrchestrator with the offer (and
// the payload its chunks carry) that choose makes for each device's hello.
func scriptedOrchestratorOffering(t *testing.T, choose func(h protocol.Hello, of protocol.Offer) (protocol.Offer, []byte)) string {
	t.Helper()
	srv := mqtt.New(&mqtt.Options{InlineClient: true, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, srv.AddHook(new(allowHook), nil))
	tcp := listeners.NewTCP(listeners.Config{ID: "tcp", Address: "127.0.0.1:0"})
	require.NoError(t, srv.AddListener(tcp))

	up := make(chan upMsg, 4096)
	require.NoError(t, srv.Subscribe(protocol.UpFilter, 1, func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
		id, kind, ok := protocol.ParseUpTopic(pk.TopicName)
		if !ok {
			return
		}
		select {
		case up <- upMsg{id, kind, append([]byte(nil), pk.Payload...)}:
		default:
			t.Error("orchestrator queue full")
		}
	}))
	require.NoError(t, srv.Serve()) // after the subscription, so no hello is missed

	const chunk = 1024
	send := func(id string, s *session) {
		end := min(s.acked+chunk, len(s.payload))
		frame := protocol.AppendFrame(nil, protocol.Frame{Handle: s.handle, Offset: uint32(s.acked), Payload: s.payload[s.acked:end]})
		assert.NoError(t, srv.Publish(protocol.DownTopic(id, protocol.KindChunk), frame, false, 1))
		s.progress = time.Now()
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		sessions := map[string]*session{}
		var nextHandle uint32
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				for id, s := range sessions {
					if s.acked < len(s.payload) && time.Since(s.progress) > 150*time.Millisecond {
						send(id, s)
					}
				}
			case m := <-up:
				s := sessions[m.device]
				switch m.kind {
				case protocol.KindHello:
					h, err := protocol.DecodeHello(m.payload)
					if !assert.NoError(t, err) {
						continue
					}
					switch {
					case h.Transfer == nil && h.Version == "1.0.0":
						nextHandle++
						of, payload := choose(h, protocol.Offer{V: 1, Update: "u1", Handle: nextHandle, Attempt: 1, ChunkSize: chunk, Window: 1})
						sessions[m.device] = &session{handle: nextHandle, payload: payload}
						assert.NoError(t, srv.Publish(protocol.DownTopic(m.device, protocol.KindOffer), protocol.Encode(of), false, 1))
					case h.Transfer != nil && h.Transfer.State == fleet.StateDownloading && s != nil:
						s.acked = int(h.Transfer.Offset)
						send(m.device, s)
					}
				case protocol.KindReport:
					r, err := protocol.DecodeReport(m.payload)
					if assert.NoError(t, err) && r.State == fleet.StateAccepted && s != nil {
						s.acked = int(r.Offset)
						send(m.device, s)
					}
				case protocol.KindAck:
					a, err := protocol.DecodeAck(m.payload)
					if assert.NoError(t, err) && s != nil && int(a.Offset) > s.acked {
						s.acked = int(a.Offset)
						if s.acked < len(s.payload) {
							send(m.device, s)
						}
					}
				}
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		_ = srv.Close()
	})
	return "tcp://" + tcp.Address()
}

func TestRun_UpdatesFleetWithFaults(t *testing.T) {
	img := bytes.Repeat([]byte("flota firmware "), 1500) // ~22 KiB
	sum := sha256.Sum256(img)
	sha := hex.EncodeToString(sum[:])
	broker := scriptedOrchestrator(t, img, sha)
	file := filepath.Join(t.TempDir(), "summary.json")

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var out bytes.Buffer
	err := run(ctx, []string{
		"--broker", broker, "--devices", "3", "--id-prefix", "t-", "--reboot-delay", "20ms",
		"--disconnect", "1", "--drop-chunks", "0.1", "--seed", "7",
		"--exit-when-updated", "2.0.0", "--summary", file,
	}, &out)
	require.NoError(t, err)
	require.NoError(t, ctx.Err(), "run ended by the test timeout")
	assert.Contains(t, out.String(), "updated         3")

	b, err := os.ReadFile(file)
	require.NoError(t, err)
	var s summary
	require.NoError(t, json.Unmarshal(b, &s))
	assert.Equal(t, 3, s.Devices)
	assert.Equal(t, 3, s.Updated)
	assert.Equal(t, 0, s.Failed)
	assert.Equal(t, 3, s.Installs)
	assert.GreaterOrEqual(t, s.BytesReceived, int64(3*len(img)))
	assert.Positive(t, s.UpdateTimeP50Ms)
	require.Len(t, s.DevicesDetail, 3)
	for i, d := range s.DevicesDetail {
		assert.Equal(t, deviceID("t-", i+1), d.ID)
		assert.Equal(t, "2.0.0", d.Version)
		assert.Equal(t, 1, d.Installs)
		assert.Equal(t, sha, d.ImageSHA256)
		assert.False(t, d.Failed)
	}
}

func TestRun_DurationEndsWithoutBroker(t *testing.T) {
	var out bytes.Buffer
	err := run(context.Background(), []string{"--broker", "tcp://127.0.0.1:1", "--devices", "2", "--duration", "200ms"}, &out)
	require.NoError(t, err)
	assert.Contains(t, out.String(), "devices         2")
	assert.Contains(t, out.String(), "connected       0")
}
