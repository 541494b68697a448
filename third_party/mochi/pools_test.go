package mqtt

import (
	"io"
	"net"
	"runtime"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/mochi-mqtt/server/v2/system"
)

func TestPayloadClass_SizesCoverTheRangeWithLittleWaste(t *testing.T) {
	seen := map[int]int{}
	for n := minPooledPayload; n <= maxPooledPayload; n++ {
		i, size, ok := payloadClass(n)
		require.True(t, ok, n)
		require.GreaterOrEqual(t, size, n)
		require.LessOrEqual(t, size-n, n/classesPerDoubling, "waste for %d", n)
		require.GreaterOrEqual(t, i, 0)
		require.Less(t, i, len(payloadPools))
		if prev, ok := seen[i]; ok {
			require.Equal(t, prev, size, "pool %d holds one size", i)
		}
		seen[i] = size
		j, again, ok := payloadClass(size)
		require.True(t, ok)
		require.Equal(t, i, j, "a buffer goes back to the pool it came from (%d)", n)
		require.Equal(t, size, again)
	}
	_, _, ok := payloadClass(minPooledPayload - 1)
	require.False(t, ok)
	_, _, ok = payloadClass(maxPooledPayload + 1)
	require.False(t, ok)
}

func TestCopyPayload_ReusesReturnedBuffersAndCopiesTheBytes(t *testing.T) {
	src := make([]byte, 16404)
	for i := range src {
		src[i] = byte(i)
	}
	a, h := copyPayload(src, true)
	require.NotNil(t, h, "pooled")
	require.Equal(t, src, a)
	require.Equal(t, 18432, cap(a))
	require.Equal(t, &a[0], &(*h)[:1][0], "the handle holds the buffer returned")
	src[0] = 0xFF
	require.NotEqual(t, src[0], a[0], "a copy, not the caller's buffer")

	b, h2 := copyPayload(src, false)
	require.Nil(t, h2, "not pooled")
	require.Equal(t, src, b)

	small, h3 := copyPayload([]byte("event"), true)
	require.Nil(t, h3, "small payloads are not pooled")
	require.Equal(t, []byte("event"), small)

	none, h4 := copyPayload(nil, true)
	require.Nil(t, h4)
	require.Nil(t, none)

	putPayload(h3) // not pooled: ignored
	// A returned handle is handed out again (sync.Pool may drop an item,
	// and does so at random under -race: some of ten tries must reuse the
	// buffer just returned; one dropped is gone for good).
	reused := false
	for try := 0; try < 10 && !reused; try++ {
		returned := &(*h)[:1][0]
		putPayload(h)
		var again []byte
		again, h = copyPayload(src, true)
		reused = &again[0] == returned
	}
	require.True(t, reused, "a returned buffer is reused")
}

func TestCopyPayload_ReturnedBuffersSurviveCollections(t *testing.T) {
	// A sync.Pool drops what lay unused for two collections; the reserve
	// keeps it (flota patch).
	src := make([]byte, 16404)
	returned := map[*byte]bool{}
	var hs []*[]byte
	for n := 0; n < 32; n++ {
		_, h := copyPayload(src, true)
		hs = append(hs, h)
		returned[&(*h)[:1][0]] = true
	}
	for _, h := range hs {
		putPayload(h)
	}
	runtime.GC()
	runtime.GC()
	for n := 0; n < 32; n++ {
		a, h := copyPayload(src, true)
		require.True(t, returned[&a[0]], "copy %d reuses a returned buffer", n)
		require.Equal(t, src, a)
		defer putPayload(h)
	}
}

func TestPutPayload_ReserveHoldsNoMoreThanItsBound(t *testing.T) {
	// More buffers than the reserve may hold, of the largest class and of a
	// small one, all returned: the reserve keeps up to its bound, the pools
	// take the rest.
	var hs []*[]byte
	for _, size := range []int{maxPooledPayload, 4 << 10} {
		for n := 0; n <= payloadReserveBytes/size; n++ {
			_, h := copyPayload(make([]byte, size), true)
			hs = append(hs, h)
		}
	}
	for _, h := range hs {
		putPayload(h)
	}
	held := 0
	for i := range payloadReserve {
		payloadReserve[i].mu.Lock()
		for _, h := range payloadReserve[i].bufs {
			held += cap(*h)
		}
		payloadReserve[i].mu.Unlock()
	}
	require.LessOrEqual(t, held, payloadReserveBytes)
	require.Greater(t, held, payloadReserveBytes-maxPooledPayload, "full")
	require.Equal(t, int64(held), payloadReserved.Load())
}

func TestQueuedCopy_WriterReturnsPooledPacketsOnly(t *testing.T) {
	r, w := net.Pipe()
	defer r.Close()
	go func() { _, _ = io.Copy(io.Discard, r) }()
	cl := newClient(w, &ops{info: new(system.Info), hooks: new(Hooks), log: logger, options: New(nil).Options})
	cl.Properties.ProtocolVersion = 5
	defer cl.Stop(nil)

	// A packet not from the pool (a test's, say) is left as it was.
	mine := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "a/b", Payload: []byte("x")}
	kept := mine
	cl.writeQueued(&mine)
	require.Equal(t, kept, mine)

	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
		PacketID:    7,
		TopicName:   "flota/devices/d/down/chunk",
		Payload:     []byte("chunk"),
		Properties:  packets.Properties{SubscriptionIdentifier: []int{3}},
	}
	q := queuedCopy(&pk)
	require.True(t, q.Mods.PooledPacket)
	require.False(t, pk.Mods.PooledPacket, "the original is not marked")
	q.Mods.PooledPacket = false
	require.Equal(t, pk, *q, "a copy of every field")

	// A written packet from the pool is handed out again (sync.Pool may
	// drop an item, and does so at random under -race: some of ten tries
	// must reuse it), holding only what it is given the next time.
	other := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "x"}
	reused := false
	for try := 0; try < 10 && !reused; try++ {
		q = queuedCopy(&pk)
		cl.writeQueued(q)
		again := queuedCopy(&other)
		reused = again == q
		again.Mods.PooledPacket = false
		require.Equal(t, other, *again)
	}
	require.True(t, reused, "a written packet is reused")
}

// BenchmarkCopyPayload_AcrossCollections measures the payload copies of
// bursts of 16 KiB chunk frames held at once (queued to many devices) and
// returned, with a collection after each burst, as the broker sees one
// every half second to second during a rollout: "steady", the same burst
// each time; "peaks", a burst of 256 then two of 16, so that the buffers
// of a peak lie unused for two collections. allocs/op is the figure to
// watch: each is a buffer the pools did not have.
func BenchmarkCopyPayload_AcrossCollections(b *testing.B) {
	src := make([]byte, 16404)
	for _, tc := range []struct {
		name   string
		bursts []int
	}{
		{"steady", []int{64}},
		{"peaks", []int{256, 16, 16}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			held := make([]*[]byte, 0, 256)
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				for n := tc.bursts[i%len(tc.bursts)]; n > 0; n-- {
					_, h := copyPayload(src, true)
					held = append(held, h)
				}
				for _, h := range held {
					putPayload(h)
				}
				held = held[:0]
				runtime.GC()
			}
		})
	}
}

// BenchmarkCopyPayload_Pooled measures a pooled copy of a 16 KiB chunk
// frame and its return, with no collection in between: the cost of the
// pools themselves.
func BenchmarkCopyPayload_Pooled(b *testing.B) {
	src := make([]byte, 16404)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			_, h := copyPayload(src, true)
			putPayload(h)
		}
	})
}
