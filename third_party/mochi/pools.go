// Pools of the flota patch (see PATCHES.md): outbound payload copies,
// encode buffers and queued packets are reused instead of being allocated
// for every delivery, which is most of what a broker moving firmware chunks
// allocates.

package mqtt

import (
	"math/bits"
	"sync"
	"sync/atomic"

	"github.com/mochi-mqtt/server/v2/mempool"
	"github.com/mochi-mqtt/server/v2/packets"
)

const (
	minPayloadShift  = 10
	maxPayloadShift  = 17
	minPooledPayload = 1 << minPayloadShift // smaller copies cost the collector little
	maxPooledPayload = 1 << maxPayloadShift // larger ones are not kept between uses
	maxPooledEncode  = maxPooledPayload + 1<<10
)

// payloadPools holds payload buffers by size class: eight classes between
// consecutive powers of two, so that a buffer wastes at most an eighth of
// itself (a 16 KiB chunk frame of 16,404 bytes takes an 18,432-byte one),
// from minPooledPayload to maxPooledPayload.
var payloadPools [(maxPayloadShift - minPayloadShift + 1) * classesPerDoubling]sync.Pool

const classesPerDoubling = 8

// payloadClass returns the index of the pool whose buffers can hold n bytes
// and their capacity, or false when n is outside the pooled range.
func payloadClass(n int) (int, int, bool) {
	if n < minPooledPayload || n > maxPooledPayload {
		return 0, 0, false
	}
	k := bits.Len(uint(n-1)) - 1 // 1<<k < n <= 2<<k
	step := (1 << k) / classesPerDoubling
	j := (n - 1<<k + step - 1) / step // 1..classesPerDoubling
	return (k-minPayloadShift+1)*classesPerDoubling + j - 1, 1<<k + j*step, true
}

// payloadReserveBytes bounds the bytes of the buffers payloadReserve keeps.
const payloadReserveBytes = 8 << 20

// payloadReserve keeps returned payload buffers by size class, up to
// payloadReserveBytes in all (payloadReserved counts them), and
// payloadPools takes those beyond. Every collection empties a sync.Pool of
// what lay unused since the one before, and a broker moving firmware
// collects every second or so: the buffers of a burst of deliveries were
// gone by the next one, which allocated them again. The reserve is not
// emptied; it holds at most payloadReserveBytes (455 buffers of a 16 KiB
// chunk's frame, 64 of the largest class), and only once that many buffers
// were in use at once (flota patch).
var (
	payloadReserve  [len(payloadPools)]bufferStack
	payloadReserved atomic.Int64
)

// bufferStack is a stack of buffers, the one returned last taken first.
type bufferStack struct {
	mu   sync.Mutex
	bufs []*[]byte
}

func (s *bufferStack) pop() *[]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := len(s.bufs)
	if n == 0 {
		return nil
	}
	h := s.bufs[n-1]
	s.bufs[n-1] = nil
	s.bufs = s.bufs[:n-1]
	return h
}

func (s *bufferStack) push(h *[]byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.bufs = append(s.bufs, h)
}

// copyPayload returns a copy of p and, when pooled is true and p's size is
// in the pooled range, the pool handle of the buffer holding it, for
// putPayload.
func copyPayload(p []byte, pooled bool) ([]byte, *[]byte) {
	if len(p) == 0 {
		return nil, nil
	}
	if pooled {
		if i, size, ok := payloadClass(len(p)); ok {
			h := payloadReserve[i].pop()
			if h != nil {
				payloadReserved.Add(-int64(size))
			} else {
				h, _ = payloadPools[i].Get().(*[]byte)
			}
			if h == nil {
				buf := make([]byte, 0, size)
				h = &buf
			}
			buf := (*h)[:len(p)]
			copy(buf, p)
			return buf, h
		}
	}
	return append([]byte(nil), p...), nil
}

// putPayload returns a buffer from copyPayload to the reserve, or to its
// pool once the reserve is full; its capacity says which. Putting the
// handle back, not the slice, allocates nothing.
func putPayload(h *[]byte) {
	if h == nil {
		return
	}
	i, size, ok := payloadClass(cap(*h))
	if !ok || size != cap(*h) {
		return
	}
	// Counted before it is pushed, and taken off the count after it is
	// popped: the reserve never holds more than the count says.
	if payloadReserved.Add(int64(size)) <= payloadReserveBytes {
		payloadReserve[i].push(h)
		return
	}
	payloadReserved.Add(-int64(size))
	payloadPools[i].Put(h)
}

// encodeBuffers holds the buffers packets are encoded into; one grown past
// the largest pooled payload is not kept.
var encodeBuffers = mempool.NewBuffer(maxPooledEncode)

// packetPool holds packets lent out and returned emptied: the copies
// publishTo puts on a client's outbound queue, which its writer returns
// once written (writeQueued), and the entries of the inflight stores,
// returned by Delete (flota patch).
var packetPool = sync.Pool{New: func() any { return new(packets.Packet) }}

// pooledCopy returns a copy of pk from packetPool.
func pooledCopy(pk *packets.Packet) *packets.Packet {
	p := packetPool.Get().(*packets.Packet)
	*p = *pk
	return p
}

// putPacket empties pk, so that the pool keeps no payload alive, and
// returns it to packetPool; pk must not be used afterwards.
func putPacket(pk *packets.Packet) {
	*pk = packets.Packet{}
	packetPool.Put(pk)
}

// queuedCopy returns a copy of pk from packetPool, marked for putQueued.
func queuedCopy(pk *packets.Packet) *packets.Packet {
	q := pooledCopy(pk)
	q.Mods.PooledPacket = true
	return q
}

// putQueued returns pk to packetPool if it came from there (queuedCopy);
// pk must not be used afterwards.
func putQueued(pk *packets.Packet) {
	if pk.Mods.PooledPacket {
		putPacket(pk)
	}
}
