package broker

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"runtime"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
)

// countingSubscriber is an MQTT 3.1.1 client written by hand: it connects,
// subscribes at QoS 0 and then only counts the bytes it reads, so that a
// benchmark's allocations are the broker's alone.
type countingSubscriber struct {
	conn net.Conn
	read atomic.Int64
}

func dialCounting(tb testing.TB, b *Broker, id, filter string) *countingSubscriber {
	tb.Helper()
	conn, err := net.Dial("tcp", b.Addr())
	require.NoError(tb, err)
	tb.Cleanup(func() { _ = conn.Close() })

	connect := append([]byte{0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 60}, mqttString(id)...)
	subscribe := append([]byte{0, 1}, append(mqttString(filter), 0)...)
	_, err = conn.Write(append(packet(0x10, connect), packet(0x82, subscribe)...))
	require.NoError(tb, err)

	r := bufio.NewReader(conn)
	connack := make([]byte, 4)
	_, err = io.ReadFull(r, connack)
	require.NoError(tb, err)
	require.Equal(tb, []byte{0x20, 2, 0, 0}, connack, "connack")
	suback := make([]byte, 5)
	_, err = io.ReadFull(r, suback)
	require.NoError(tb, err)
	require.Equal(tb, []byte{0x90, 3, 0, 1, 0}, suback, "suback")

	s := &countingSubscriber{conn: conn}
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, err := r.Read(buf)
			s.read.Add(int64(n))
			if err != nil {
				return
			}
		}
	}()
	return s
}

// packet frames body as one MQTT control packet (body under 16 KiB).
func packet(header byte, body []byte) []byte {
	var rl []byte
	for n := len(body); ; {
		d := byte(n % 128)
		n /= 128
		if n > 0 {
			d |= 0x80
		}
		rl = append(rl, d)
		if n == 0 {
			break
		}
	}
	return append(append([]byte{header}, rl...), body...)
}

func mqttString(s string) []byte {
	return append([]byte{byte(len(s) >> 8), byte(len(s))}, s...)
}

// BenchmarkBroker_ChunkAllocs measures what the broker allocates to deliver
// a 16 KiB chunk at QoS 0 to a device, with a window of fleet.DefaultWindow
// chunks on their way as the engine keeps it. B/op is the figure to watch:
// every byte of it is garbage the collector must reclaim.
func BenchmarkBroker_ChunkAllocs(b *testing.B) {
	const size = fleet.DefaultChunkSize
	br, _ := openBroker(b, Options{}, nil)
	topic := protocol.DownTopic("dev-bench", protocol.KindChunk)
	s := dialCounting(b, br, "dev-bench", protocol.DownFilter("dev-bench"))
	payload := bytes.Repeat([]byte{0xA5}, size)
	frame := int64(len(packet(0x30, append(mqttString(topic), payload[:100]...)))) - 100 + size

	b.SetBytes(size)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range int64(b.N) {
		for (i-fleet.DefaultWindow)*frame > s.read.Load() {
			// wait for the window to open; the reader never blocks
			runtime.Gosched()
		}
		if err := br.Publish(topic, payload, false, 0); err != nil {
			b.Fatal(err)
		}
	}
	for int64(b.N)*frame > s.read.Load() {
		runtime.Gosched()
	}
	b.StopTimer()
	b.ReportMetric(float64(br.Stats().MessagesDropped), "drops")
}
