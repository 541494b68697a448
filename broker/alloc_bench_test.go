package broker

import (
	"bytes"
	"runtime"
	"sync/atomic"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
)

// countingSubscriber is a rawClient (status_test.go) that, once
// subscribed at QoS 0, only counts the bytes it reads, so that a
// benchmark's allocations are the broker's alone.
type countingSubscriber struct {
	read atomic.Int64
}

func dialCounting(tb testing.TB, b *Broker, id, filter string) *countingSubscriber {
	tb.Helper()
	c, r := connectRaw(tb, b, id, 4)
	c.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe}, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: filter}}})
	ack, err := c.read(r)
	require.NoError(tb, err)
	require.Equal(tb, packets.Suback, ack.FixedHeader.Type)
	require.Equal(tb, []byte{0}, ack.ReasonCodes, "suback")

	s := &countingSubscriber{}
	go func() {
		defer close(c.done)
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

// frameLen is the length on the wire of a QoS 0 PUBLISH of size bytes on topic.
func frameLen(tb testing.TB, topic string, size int) int64 {
	var buf bytes.Buffer
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: topic,
		Payload: make([]byte, size), ProtocolVersion: 4}
	require.NoError(tb, pk.PublishEncode(&buf))
	return int64(buf.Len())
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
	frame := frameLen(b, topic, size)

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
