package mqtt

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/mochi-mqtt/server/v2/system"
)

// readPublishes reads QoS 0 PUBLISH packets from r and sends their payloads.
func readPublishes(r io.Reader, out chan<- string) {
	defer close(out)
	br := bufio.NewReader(r)
	for {
		if _, err := br.ReadByte(); err != nil {
			return
		}
		var n, shift int
		for {
			b, err := br.ReadByte()
			if err != nil {
				return
			}
			n |= int(b&0x7f) << shift
			shift += 7
			if b&0x80 == 0 {
				break
			}
		}
		body := make([]byte, n)
		if _, err := io.ReadFull(br, body); err != nil {
			return
		}
		topicLen := int(body[0])<<8 | int(body[1])
		out <- string(body[2+topicLen:])
	}
}

// publishInOrder publishes the payloads payload(0) to payload(n-1) to cl
// in order, as one publisher, trying again while cl's queue is full.
func publishInOrder(t *testing.T, s *Server, cl *Client, n int, payload func(i int) []byte) {
	for i := 0; i < n; i++ {
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "t", Payload: payload(i)}
		for {
			_, err := s.publishToClient(cl, packets.Subscription{Filter: "t"}, pk)
			if !errors.Is(err, packets.ErrPendingClientWritesExceeded) {
				require.NoError(t, err)
				break
			}
			time.Sleep(time.Millisecond) // queue full: try again, in order
		}
	}
}

// requireEachInOrder reads total payloads from got, each "p:iiii:" and
// more, and requires every publisher p's to arrive in order, from 0.
func requireEachInOrder(t *testing.T, got <-chan string, publishers, total int) {
	t.Helper()
	next := make([]int, publishers)
	for n := 0; n < total; n++ {
		select {
		case payload := <-got:
			var p, i int
			_, err := fmt.Sscanf(payload[:6], "%d:%04d", &p, &i)
			require.NoError(t, err)
			require.Equal(t, next[p], i, "publisher %d out of order", p)
			next[p]++
		case <-time.After(10 * time.Second):
			t.Fatalf("stalled: %v of %d in all", next, total)
		}
	}
}

func TestPublishToClient_OneWriterAtATimeKeepsEachPublishersOrder(t *testing.T) {
	s := New(nil)
	require.NoError(t, s.AddHook(new(AllowHook), nil))
	r, w := net.Pipe()
	defer r.Close()
	cl := newClient(w, &ops{info: new(system.Info), hooks: new(Hooks), log: logger, options: s.Options})
	cl.ID = "dev"
	cl.Properties.ProtocolVersion = 4

	got := make(chan string, 64)
	go readPublishes(r, got)

	const publishers, each = 8, 400 // more than the queue holds
	var wg sync.WaitGroup
	for p := 0; p < publishers; p++ {
		wg.Add(1)
		go func(p int) {
			defer wg.Done()
			publishInOrder(t, s, cl, each, func(i int) []byte {
				return []byte(fmt.Sprintf("%d:%04d:%s", p, i, string(make([]byte, 1500))))
			})
		}(p)
	}

	requireEachInOrder(t, got, publishers, publishers*each)
	wg.Wait()
	require.Eventually(t, func() bool { return !cl.State.writing.Load() }, 5*time.Second, time.Millisecond,
		"the writer ends once the queue is empty")
	require.Zero(t, len(cl.State.outbound))
}

func TestPublishToClient_IdleClientHasNoWriter(t *testing.T) {
	s := New(nil)
	require.NoError(t, s.AddHook(new(AllowHook), nil))
	r, w := net.Pipe()
	defer r.Close()
	cl := newClient(w, &ops{info: new(system.Info), hooks: new(Hooks), log: logger, options: s.Options})
	cl.Properties.ProtocolVersion = 4
	require.False(t, cl.State.writing.Load())

	got := make(chan string, 1)
	go readPublishes(r, got)
	_, err := s.publishToClient(cl, packets.Subscription{Filter: "t"},
		packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "t", Payload: []byte("hello")})
	require.NoError(t, err)
	require.Equal(t, "hello", <-got)
	require.Eventually(t, func() bool { return !cl.State.writing.Load() }, 5*time.Second, time.Millisecond)
}

func TestDrainOutbound_FlushesBytesBufferedBehindAPacketThatFails(t *testing.T) {
	s := New(nil)
	r, w := net.Pipe()
	defer r.Close()
	cl := newClient(w, &ops{info: new(system.Info), hooks: new(Hooks), log: logger, options: s.Options})
	cl.Properties.ProtocolVersion = 5
	cl.Properties.Props.MaximumPacketSize = 512 // the client takes nothing larger

	got := make(chan string, 2)
	go readPublishes(r, got)

	// A delivery too large for the client is queued; a packet written
	// directly meanwhile (an acknowledgement, a stored status) is buffered
	// behind it, to be flushed with the queue.
	tooLarge := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "t", Payload: make([]byte, 1024)}
	cl.State.outbound <- &tooLarge
	atomic.AddInt32(&cl.State.outboundQty, 1)
	require.NoError(t, cl.WritePacket(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "t", Payload: []byte("status")}))

	cl.startWriter()
	select {
	case payload := <-got:
		require.Equal(t, "\x00status", payload, "an MQTT 5 PUBLISH: no properties, then the payload")
	case <-time.After(5 * time.Second):
		t.Fatal("the directly written packet is still buffered after the writer ended")
	}
}

func TestEstablishConnection_IdleClientCostsOneGoroutine(t *testing.T) {
	s := newServer()
	defer s.Close()
	const clients = 20
	before := runtime.NumGoroutine()
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	for n := 0; n < clients; n++ {
		r, w := net.Pipe()
		conns = append(conns, w)
		go func() { _ = s.EstablishConnection("tcp", r) }() // this goroutine is the read loop
		var buf bytes.Buffer
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 4,
			Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 60,
				ClientIdentifier: "idle-" + strconv.Itoa(n)}}
		require.NoError(t, pk.ConnectEncode(&buf))
		_, err := w.Write(buf.Bytes())
		require.NoError(t, err)
		connack := make([]byte, 4)
		_, err = io.ReadFull(w, connack)
		require.NoError(t, err)
		require.Equal(t, []byte{packets.Connack << 4, 2, 0, 0}, connack)
	}
	// Each connected client has its read loop; upstream mochi also ran a
	// write loop per client for its whole life (flota patch).
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before+clients && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	require.LessOrEqual(t, runtime.NumGoroutine(), before+clients, "goroutines for %d idle clients", clients)
}

// tcpPair returns the two ends of a loopback TCP connection, on which a
// writer batches the queue (writesVectored), unlike on a net.Pipe.
func tcpPair(t *testing.T) (server, client net.Conn) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	server = <-accepted
	require.NotNil(t, server)
	t.Cleanup(func() {
		_ = client.Close()
		_ = server.Close()
	})
	require.True(t, writesVectored(server))
	return server, client
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// sentHook counts the packets OnPacketSent reports and their bytes, and
// the PUBLISHes whose bytes do not end with their payload.
type sentHook struct {
	HookBase
	packets, bytes, mismatched atomic.Int64
}

func (h *sentHook) ID() string           { return "sent" }
func (h *sentHook) Provides(b byte) bool { return b == OnPacketSent }
func (h *sentHook) OnPacketSent(_ *Client, pk packets.Packet, b []byte) {
	h.packets.Add(1)
	h.bytes.Add(int64(len(b)))
	if pk.FixedHeader.Type == packets.Publish && !bytes.HasSuffix(b, pk.Payload) {
		h.mismatched.Add(1)
	}
}

func TestWriteQueuedBatch_EveryPacketArrivesInOrderAndIsCountedOnce(t *testing.T) {
	s := New(nil)
	s.Options.Capabilities.MaximumClientWritesPending = 64 // the publishers wait for room now and then
	require.NoError(t, s.AddHook(new(AllowHook), nil))
	sent := new(sentHook)
	require.NoError(t, s.AddHook(sent, nil))
	w, r := tcpPair(t)
	info := new(system.Info)
	cl := newClient(w, &ops{info: info, hooks: s.hooks, log: logger, options: s.Options})
	cl.ID = "dev"
	cl.Properties.ProtocolVersion = 4

	cr := &countingReader{r: r}
	got := make(chan string, 64)
	go readPublishes(cr, got)

	// Queued deliveries from several publishers, and packets written
	// directly by another goroutine meanwhile (as acknowledgements and
	// stored statuses are), which go out between batches or in outbuf
	// ahead of one. Every seventh is 20 KiB, so that some batches end at
	// maxBatchBytes rather than maxBatchPackets.
	const publishers, each = 8, 300
	const direct = publishers // the payload prefix of the packets written directly
	payload := func(p, i int) []byte {
		size := 100
		if i%7 == 0 {
			size = 20 << 10
		}
		return []byte(fmt.Sprintf("%d:%04d:%s", p, i, make([]byte, size)))
	}
	var wg sync.WaitGroup
	for p := 0; p < publishers; p++ {
		wg.Add(1)
		go func(p int) {
			defer wg.Done()
			publishInOrder(t, s, cl, each, func(i int) []byte { return payload(p, i) })
		}(p)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < each; i++ {
			require.NoError(t, cl.WritePacket(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish},
				TopicName: "d", Payload: payload(direct, i)}))
		}
	}()

	const total = (publishers + 1) * each
	requireEachInOrder(t, got, publishers+1, total)
	wg.Wait()
	require.Eventually(t, func() bool { return !cl.State.writing.Load() }, 5*time.Second, time.Millisecond,
		"the writer ends once the queue is empty")
	require.Zero(t, atomic.LoadInt32(&cl.State.outboundQty))

	require.EqualValues(t, total, atomic.LoadInt64(&info.PacketsSent))
	require.EqualValues(t, total, atomic.LoadInt64(&info.MessagesSent))
	require.Equal(t, cr.n.Load(), atomic.LoadInt64(&info.BytesSent), "every byte written is counted once")
	require.EqualValues(t, total, sent.packets.Load(), "OnPacketSent once a packet")
	require.Equal(t, cr.n.Load(), sent.bytes.Load())
	require.Zero(t, sent.mismatched.Load(), "OnPacketSent gets each packet with its own bytes")
}

// queuePublish puts a PUBLISH of payload on cl's queue as mochi's tests
// do, not from the pool.
func queuePublish(cl *Client, payload []byte) *packets.Packet {
	pk := &packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "t", Payload: payload}
	cl.State.outbound <- pk
	atomic.AddInt32(&cl.State.outboundQty, 1)
	return pk
}

func TestWriteQueuedBatch_DropsOnlyThePacketTooLargeForTheClient(t *testing.T) {
	s := New(nil)
	w, r := tcpPair(t)
	info := new(system.Info)
	cl := newClient(w, &ops{info: info, hooks: new(Hooks), log: logger, options: s.Options})
	cl.Properties.ProtocolVersion = 5
	cl.Properties.Props.MaximumPacketSize = 512 // the client takes nothing larger

	got := make(chan string, 4)
	go readPublishes(r, got)

	first := queuePublish(cl, []byte("first"))
	queuePublish(cl, make([]byte, 1024))
	queuePublish(cl, []byte("last"))
	// Written directly while packets are queued: buffered in outbuf, to
	// go out ahead of the queue.
	require.NoError(t, cl.WritePacket(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "t", Payload: []byte("direct")}))
	require.NotNil(t, cl.Net.outbuf)

	cl.startWriter()
	for _, want := range []string{"direct", "first", "last"} {
		select {
		case payload := <-got:
			require.Equal(t, "\x00"+want, payload, "an MQTT 5 PUBLISH: no properties, then the payload")
		case <-time.After(5 * time.Second):
			t.Fatalf("%q never arrived", want)
		}
	}
	require.Eventually(t, func() bool { return !cl.State.writing.Load() }, 5*time.Second, time.Millisecond)
	require.Zero(t, atomic.LoadInt32(&cl.State.outboundQty))
	require.EqualValues(t, 3, atomic.LoadInt64(&info.MessagesSent), "the packet too large is not counted")
	require.Nil(t, cl.Net.outbuf)
	require.Zero(t, first.ProtocolVersion, "a packet queued other than by publishTo is written from a copy, as WritePacket copies it")
	require.Zero(t, first.Mods.MaxSize)
}

func TestWriteQueuedBatch_WriteErrorCountsNothingAndEmptiesTheQueue(t *testing.T) {
	s := New(nil)
	w, _ := tcpPair(t)
	info := new(system.Info)
	sent := new(sentHook)
	hooks := new(Hooks)
	require.NoError(t, hooks.Add(sent, nil))
	cl := newClient(w, &ops{info: info, hooks: hooks, log: logger, options: s.Options})
	cl.Properties.ProtocolVersion = 4
	require.NoError(t, w.SetWriteDeadline(time.Now().Add(-time.Second))) // every write fails

	for i := 0; i < 3; i++ {
		queuePublish(cl, []byte("lost"))
	}
	cl.startWriter()
	require.Eventually(t, func() bool { return !cl.State.writing.Load() }, 5*time.Second, time.Millisecond)
	require.Zero(t, atomic.LoadInt32(&cl.State.outboundQty))
	require.Zero(t, atomic.LoadInt64(&info.PacketsSent))
	require.Zero(t, atomic.LoadInt64(&info.BytesSent))
	require.Zero(t, sent.packets.Load())
}

func TestWriteQueuedBatch_TakesThePacketsQueuedBehindUpToItsBounds(t *testing.T) {
	s := New(nil)
	w, r := tcpPair(t)
	info := new(system.Info)
	cl := newClient(w, &ops{info: info, hooks: new(Hooks), log: logger, options: s.Options})
	cl.Properties.ProtocolVersion = 4
	got := make(chan string, 64)
	go readPublishes(r, got)

	// Called as the writer calls it, with the packet it dequeued: each call
	// takes what is queued behind, up to maxBatchPackets packets or until
	// they hold maxBatchBytes, and leaves the rest queued.
	write := func(queued, wantLeft, size int) {
		t.Helper()
		for i := 0; i < queued; i++ {
			queuePublish(cl, []byte(fmt.Sprintf("%04d:%s", i, make([]byte, size))))
		}
		cl.writeQueuedBatch(<-cl.State.outbound)
		require.Equal(t, wantLeft, len(cl.State.outbound))
		require.EqualValues(t, wantLeft, atomic.LoadInt32(&cl.State.outboundQty))
		cl.writeQueuedBatch(<-cl.State.outbound) // the rest
		require.Zero(t, len(cl.State.outbound))
		require.Zero(t, atomic.LoadInt32(&cl.State.outboundQty))
		for i := 0; i < queued; i++ {
			select {
			case payload := <-got:
				require.Equal(t, fmt.Sprintf("%04d", i), payload[:4])
			case <-time.After(waitLimit):
				t.Fatalf("packet %d of %d never arrived", i, queued)
			}
		}
	}
	write(maxBatchPackets+5, 5, 10)
	// Four of a quarter of the bound each (and their headers) fill it.
	write(6, 2, maxBatchBytes/4)
	require.EqualValues(t, maxBatchPackets+5+6, atomic.LoadInt64(&info.MessagesSent))
}
