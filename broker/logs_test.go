package broker

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/auth"
	"github.com/flotaio/flota/internal/fleet"
)

// textLog collects the broker's log as slog's text handler writes it, at
// debug level: what an operator's log file would hold.
type textLog struct {
	mu  sync.Mutex // guards buf
	buf bytes.Buffer
}

func (l *textLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *textLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func openTextLogged(t *testing.T, opts Options) (*Broker, *textLog) {
	t.Helper()
	var out textLog
	opts.Addr = "127.0.0.1:0"
	opts.Logger = slog.New(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: slog.LevelDebug}))
	b := New(opts)
	require.NoError(t, b.Open())
	t.Cleanup(func() { require.NoError(t, b.Close()) })
	return b, &out
}

// decimal is how fmt prints a byte slice: what a logged packet showed of a
// password or payload.
func decimal(s string) string {
	return strings.Trim(fmt.Sprint([]byte(s)), "[]")
}

// encode returns the wire bytes of pk.
func encode(t *testing.T, pk packets.Packet) []byte {
	t.Helper()
	var buf bytes.Buffer
	switch pk.FixedHeader.Type {
	case packets.Connect:
		require.NoError(t, pk.ConnectEncode(&buf))
	case packets.Publish:
		require.NoError(t, pk.PublishEncode(&buf))
	}
	return buf.Bytes()
}

// waitClosed reads conn until the broker closes it.
func waitClosed(t *testing.T, conn net.Conn) {
	t.Helper()
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(waitFor)))
	r := bufio.NewReader(conn)
	for {
		if _, err := r.ReadByte(); err != nil {
			var ne net.Error
			require.False(t, errors.As(err, &ne) && ne.Timeout(), "broker did not close the connection")
			return
		}
	}
}

func connectPacket(id, password string) packets.Packet {
	return packets.Packet{
		ProtocolVersion: 4,
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 60,
			ClientIdentifier: id, UsernameFlag: true, Username: []byte(id), PasswordFlag: true, Password: []byte(password)},
	}
}

func TestBroker_LogsNeverHoldPasswordsOrPayloads(t *testing.T) {
	const password = "pw-MARKER-7f3a9c"
	const payload = "payload-MARKER-51be"
	b, logs := openTextLogged(t, Options{})

	// A second CONNECT on an open connection: a protocol violation that
	// mochi logged with the whole packet, password included.
	conn, err := net.Dial("tcp", b.Addr())
	require.NoError(t, err)
	defer conn.Close()
	_, err = conn.Write(encode(t, connectPacket("dev-1", password)))
	require.NoError(t, err)
	ack := make([]byte, 4)
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(waitFor)))
	_, err = conn.Read(ack)
	require.NoError(t, err)
	require.Equal(t, byte(packets.Connack<<4), ack[0])
	_, err = conn.Write(encode(t, connectPacket("dev-1", password)))
	require.NoError(t, err)
	waitClosed(t, conn)

	// A QoS 1 publish the ACL refuses: mochi disconnects an MQTT 3.1.1
	// client and logged the packet with its payload.
	conn2, err := net.Dial("tcp", b.Addr())
	require.NoError(t, err)
	defer conn2.Close()
	_, err = conn2.Write(encode(t, connectPacket("dev-2", password)))
	require.NoError(t, err)
	_, err = conn2.Write(encode(t, packets.Packet{ProtocolVersion: 4,
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 7,
		TopicName: "flota/devices/dev-1/up/report", Payload: []byte(payload)}))
	require.NoError(t, err)
	waitClosed(t, conn2)

	require.Eventually(t, func() bool { return strings.Count(logs.String(), "error processing packet") >= 2 }, waitFor, tick,
		"both refusals logged:\n%s", logs)
	out := logs.String()
	for _, secret := range []string{password, decimal(password), payload, decimal(payload)} {
		assert.NotContains(t, out, secret)
	}
	assert.Contains(t, out, "packet=Connect")
	assert.Contains(t, out, "packet=Publish")
}

func TestBroker_RedactsPacketsWillsBytesAndSecrets(t *testing.T) {
	var out textLog
	log := slog.New(minLevel{h: slog.NewTextHandler(&out, nil), min: slog.LevelDebug})
	pk := connectPacket("dev-1", "pw-MARKER")
	pub := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, TopicName: "t/\x1b", Payload: []byte("payload-MARKER")}
	log.With("pk", pk).Warn("a", "packet", &pub, "raw", []byte("payload-MARKER"),
		"password", "pw-MARKER", slog.Group("g", "Payload", "payload-MARKER", "p", pub))
	s := out.String()
	assert.NotContains(t, s, "MARKER")
	assert.NotContains(t, s, "\x1b")
	assert.Contains(t, s, `pk=Connect`)
	assert.Contains(t, s, `packet="Publish qos=1 topic=t/\\x1b payload_bytes=14"`)
	assert.Contains(t, s, `raw="[14 bytes]"`)
	assert.Contains(t, s, `password=[redacted]`)
	assert.Contains(t, s, `g.Payload=[redacted]`)
}

func TestBroker_AuthRefusalFloodLogsBoundedLinesAndASummary(t *testing.T) {
	refuse := func(context.Context, auth.Connect) (fleet.Role, error) { return "", errors.New("bad credentials") }
	b, logs := openTextLogged(t, Options{Authenticate: refuse})
	var now atomic.Int64 // the limiter's clock, read by connection goroutines
	now.Store(time.Now().UnixNano())
	b.logs.Now = func() time.Time { return time.Unix(0, now.Load()) }

	const n = 200
	for i := 0; i < n; i++ {
		conn, err := net.Dial("tcp", b.Addr())
		require.NoError(t, err)
		_, err = conn.Write(encode(t, connectPacket("intruder", "wrong")))
		require.NoError(t, err)
		waitClosed(t, conn)
		conn.Close()
	}
	require.Eventually(t, func() bool { return b.Stats().AuthRefused == n }, waitFor, tick)
	lines := strings.Count(logs.String(), "authentication refused")
	assert.Positive(t, lines)
	assert.LessOrEqual(t, lines, 20)
	assert.EqualValues(t, n-lines, b.Stats().LogLinesSuppressed)

	now.Add(int64(time.Minute))
	b.sweepLogs()
	assert.Contains(t, logs.String(), "client=intruder suppressed=")
}
