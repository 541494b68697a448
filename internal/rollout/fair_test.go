package rollout_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/agent"
	"github.com/flotaio/flota/broker"
	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
	"github.com/flotaio/flota/internal/rollout"
	"github.com/flotaio/flota/internal/sqlite"
)

// dropLog is a slog handler that records which devices the engine logged
// as having messages dropped before the loop.
type dropLog struct {
	mu      sync.Mutex // guards devices
	devices map[string]int64
}

func (d *dropLog) Enabled(context.Context, slog.Level) bool { return true }
func (d *dropLog) WithAttrs([]slog.Attr) slog.Handler       { return d }
func (d *dropLog) WithGroup(string) slog.Handler            { return d }

func (d *dropLog) Handle(_ context.Context, r slog.Record) error {
	if r.Message != "device messages dropped before the engine" {
		return nil
	}
	var device string
	var n int64
	r.Attrs(func(a slog.Attr) bool {
		switch a.Key {
		case "device":
			device = a.Value.String()
		case "dropped":
			n = a.Value.Int64()
		}
		return true
	})
	d.mu.Lock()
	d.devices[device] += n
	d.mu.Unlock()
	return nil
}

func (d *dropLog) snapshot() map[string]int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make(map[string]int64, len(d.devices))
	for k, v := range d.devices {
		out[k] = v
	}
	return out
}

// flood connects to addr as id over raw MQTT 3.1.1 and publishes QoS 0
// messages of kind on its own up topic as fast as TCP takes them, until
// the connection is closed. It returns the connection.
func flood(t *testing.T, addr, id, kind string, payload []byte) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	var connect []byte
	connect = append(connect, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 0) // 3.1.1, clean session, no keepalive
	connect = binary.BigEndian.AppendUint16(connect, uint16(len(id)))
	connect = append(connect, id...)
	_, err = conn.Write(mqttPacket(0x10, connect))
	require.NoError(t, err)
	ack := make([]byte, 4)
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(10*time.Second)))
	_, err = io.ReadFull(conn, ack)
	require.NoError(t, err)
	require.Equal(t, []byte{0x20, 2, 0, 0}, ack, "CONNACK accepted")

	topic := protocol.UpTopic(id, kind)
	var pub []byte
	pub = binary.BigEndian.AppendUint16(pub, uint16(len(topic)))
	pub = append(pub, topic...)
	pub = append(pub, payload...)
	burst := bytes.Repeat(mqttPacket(0x30, pub), 256)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			if _, err := conn.Write(burst); err != nil {
				return // closed by the test's cleanup
			}
		}
	}()
	t.Cleanup(func() { conn.Close(); <-done })
	return conn
}

// mqttPacket frames body as an MQTT packet of the given first byte.
func mqttPacket(first byte, body []byte) []byte {
	out := []byte{first}
	for n := len(body); ; {
		b := byte(n % 128)
		n /= 128
		if n > 0 {
			b |= 0x80
		}
		out = append(out, b)
		if n == 0 {
			break
		}
	}
	return append(out, body...)
}

// TestEngine_FloodingDevicesCannotStarveOthers runs a 50-device update
// while 8 devices flood their own up topics as fast as they can, with no
// broker rate limit and a small engine queue that the flood alone would
// fill: every hello and report of the legitimate devices reaches the
// engine (none of their messages is dropped) and only the flooders' are.
func TestEngine_FloodingDevicesCannotStarveOthers(t *testing.T) {
	drops := &dropLog{devices: map[string]int64{}}
	h := &harness{t: t, dir: t.TempDir(), log: slog.New(drops)}
	h.store = sqlite.New(h.dir)
	h.store.Logger = testLogger(t)
	require.NoError(t, h.store.Open())
	t.Cleanup(func() { h.store.Close() })
	h.broker = broker.New(broker.Options{Addr: "127.0.0.1:0", RateLimit: -1, Logger: testLogger(t)})
	h.openEngineWith(func(e *rollout.Engine) {
		e.QueueSize = 1024
		// The drops are read from the log: no per-device log limit, which
		// could hold back a flooder's drop line behind its bad messages.
		e.LogLimit.Lines = -1
	})
	require.NoError(t, h.broker.Open())
	t.Cleanup(func() { h.broker.Close() })

	// Half of them flood acks, half reports: both quotas are exercised.
	var flooders []string
	for i := 0; i < 8; i++ {
		id := fmt.Sprintf("flood%d", i)
		kind, payload := protocol.KindAck, `{"v":1,"handle":7,"offset":1}`
		if i%2 == 1 {
			kind, payload = protocol.KindReport, `{"v":1,"update":"u-none","handle":7,"state":"accepted"}`
		}
		flood(t, h.broker.Addr(), id, kind, []byte(payload))
		flooders = append(flooders, id)
	}
	eventually(t, 30*time.Second, func() bool { return len(drops.snapshot()) == len(flooders) }, "every flooder over its quota")

	// The legitimate devices say hello during the flood.
	h.startAgents(50, "dev", agent.Config{})
	h.waitDevices(50)
	fw, _ := h.addFirmware(32*1024, "1.1.0")
	u := h.create(fw, fleet.Policy{ChunkSize: 4096, MaxInFlight: 50}, fleet.Selector{Model: "m1"})
	s := h.waitEnd(u.ID, 5*time.Minute)
	assert.Equal(t, fleet.UpdateCompleted, s.State)
	assert.Equal(t, 50, s.Counts[fleet.StateSucceeded])

	for device, n := range drops.snapshot() {
		assert.True(t, strings.HasPrefix(device, "flood"), "device %s had %d messages dropped", device, n)
	}
	st := h.engine.Stats()
	assert.Positive(t, st.QuotaDrops, "flooders' excess dropped and counted")
	assert.Zero(t, st.QueueDrops, "the queue never filled")
	t.Logf("update of 50 devices beside 8 flooders: %s; flood messages handled %d, dropped over quota %d; dropped on a full queue %d",
		s.State, st.BadMessages+st.StaleMessages, st.QuotaDrops, st.QueueDrops)
}
