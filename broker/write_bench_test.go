package broker

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
)

// writeSyscalls returns the write and writev system calls this process has
// made (syscw of /proc/self/io), or false where that is not available.
func writeSyscalls(tb testing.TB) (int64, bool) {
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "syscw: "); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			require.NoError(tb, err)
			return n, true
		}
	}
	return 0, false
}

// processCounter reports the write system calls made and the CPU time
// used between begin and report, per unit of work. Both are the whole
// process's: the benchmarks' clients only read while measured, so the
// writes are the broker's; the CPU time includes the clients' reads.
type processCounter struct {
	tb     testing.TB
	writes int64
	ok     bool
	cpu    time.Duration
}

func cpuTime(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	require.NoError(tb, syscall.Getrusage(syscall.RUSAGE_SELF, &ru))
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func (c *processCounter) begin() {
	c.writes, c.ok = writeSyscalls(c.tb)
	c.cpu = cpuTime(c.tb)
}

func (c *processCounter) report(b *testing.B, units int64, unit string) {
	cpu := cpuTime(b) - c.cpu
	end, ok := writeSyscalls(b)
	if units == 0 {
		return
	}
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(units), "cpu-ns/"+unit)
	if c.ok && ok {
		b.ReportMetric(float64(end-c.writes)/float64(units), "writes/"+unit)
	}
}

// BenchmarkBroker_ChunkWindowWrites publishes a window of 16 KiB chunks at
// QoS 0 to each of 100 devices, as the engine opens a window (8 chunks) or
// moves it on an ack (4), and waits until every device has read them all,
// over loopback TCP. writes/chunk counts the broker's write system calls,
// cpu-ns/chunk the CPU time of the broker and the devices' reads.
func BenchmarkBroker_ChunkWindowWrites(b *testing.B) {
	const devices = 100
	for _, window := range []int{fleet.DefaultWindow, 4} {
		b.Run(fmt.Sprintf("window=%d", window), func(b *testing.B) {
			br, _ := openBroker(b, Options{}, nil)
			payload := bytes.Repeat([]byte{0xA5}, fleet.DefaultChunkSize)
			subs := make([]*countingSubscriber, devices)
			topics := make([]string, devices)
			for i := range subs {
				id := fmt.Sprintf("dev-%03d", i)
				subs[i] = dialCounting(b, br, id, protocol.DownFilter(id))
				topics[i] = protocol.DownTopic(id, protocol.KindChunk)
			}
			frame := frameLen(b, topics[0], fleet.DefaultChunkSize)
			sent := int64(0)
			windows := func() {
				for i := range devices {
					for range window {
						if err := br.Publish(topics[i], payload, false, 0); err != nil {
							b.Fatal(err)
						}
					}
				}
				sent += int64(window) * frame
				for _, s := range subs {
					for s.read.Load() < sent {
						time.Sleep(20 * time.Microsecond) // not spinning, which would count as CPU time
					}
				}
			}
			windows() // the pools filled, as in a running update
			pc := &processCounter{tb: b}

			b.SetBytes(int64(devices * window * fleet.DefaultChunkSize))
			b.ReportAllocs()
			b.ResetTimer()
			pc.begin()
			for range b.N {
				windows()
			}
			b.StopTimer()
			pc.report(b, int64(b.N*devices*window), "chunk")
			require.Zero(b, br.Stats().MessagesDropped)
		})
	}
}

// BenchmarkBroker_ChunkStream streams 16 KiB chunks at QoS 0 to one device
// over loopback TCP with a window of fleet.DefaultWindow chunks, the
// publisher blocking while the window is shut (BenchmarkBroker_ChunkAllocs
// spins instead, which takes a processor from the writer and the reader).
func BenchmarkBroker_ChunkStream(b *testing.B) {
	br, _ := openBroker(b, Options{}, nil)
	c, r := connectRaw(b, br, "dev-stream", 4)
	c.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe}, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: protocol.DownFilter("dev-stream")}}})
	ack, err := c.read(r)
	require.NoError(b, err)
	require.Equal(b, packets.Suback, ack.FixedHeader.Type)

	window := make(chan struct{}, fleet.DefaultWindow)
	go func() {
		for {
			if _, err := c.read(r); err != nil {
				return
			}
			<-window // a slot is always held for a chunk received: never blocks
		}
	}()
	topic := protocol.DownTopic("dev-stream", protocol.KindChunk)
	payload := bytes.Repeat([]byte{0xA5}, fleet.DefaultChunkSize)
	pc := &processCounter{tb: b}

	b.SetBytes(fleet.DefaultChunkSize)
	b.ResetTimer()
	pc.begin()
	publishThroughWindow(b, br, window, topic, payload, 0)
	b.StopTimer()
	pc.report(b, int64(b.N), "chunk")
}

// publishThroughWindow publishes payload to topic at qos b.N times, each
// once window has room, which the device frees as it receives them, and
// returns once it has received them all.
func publishThroughWindow(b *testing.B, br *Broker, window chan struct{}, topic string, payload []byte, qos byte) {
	for range b.N {
		window <- struct{}{}
		if err := br.Publish(topic, payload, false, qos); err != nil {
			b.Fatal(err)
		}
	}
	for range cap(window) {
		window <- struct{}{} // every chunk received
	}
}
