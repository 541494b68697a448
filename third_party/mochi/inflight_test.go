// SPDX-License-Identifier: MIT
// SPDX-FileCopyrightText: 2022 mochi-mqtt, mochi-co
// SPDX-FileContributor: mochi-co

package mqtt

import (
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/require"
)

func TestInflightSet(t *testing.T) {
	cl, _, _ := newTestClient()

	r := cl.State.Inflight.Set(packets.Packet{PacketID: 1})
	require.True(t, r)
	require.NotNil(t, cl.State.Inflight.internal[1])
	require.NotEqual(t, 0, cl.State.Inflight.internal[1].PacketID)

	r = cl.State.Inflight.Set(packets.Packet{PacketID: 1})
	require.False(t, r)
}

func TestInflightGet(t *testing.T) {
	cl, _, _ := newTestClient()
	cl.State.Inflight.Set(packets.Packet{PacketID: 2})

	msg, ok := cl.State.Inflight.Get(2)
	require.True(t, ok)
	require.NotEqual(t, 0, msg.PacketID)
}

func TestInflightGetAllAndImmediate(t *testing.T) {
	cl, _, _ := newTestClient()
	cl.State.Inflight.Set(packets.Packet{PacketID: 1, Created: 1})
	cl.State.Inflight.Set(packets.Packet{PacketID: 2, Created: 2})
	cl.State.Inflight.Set(packets.Packet{PacketID: 3, Created: 3, Expiry: -1})
	cl.State.Inflight.Set(packets.Packet{PacketID: 4, Created: 4, Expiry: -1})
	cl.State.Inflight.Set(packets.Packet{PacketID: 5, Created: 5})

	require.Equal(t, []packets.Packet{
		{PacketID: 1, Created: 1},
		{PacketID: 2, Created: 2},
		{PacketID: 3, Created: 3, Expiry: -1},
		{PacketID: 4, Created: 4, Expiry: -1},
		{PacketID: 5, Created: 5},
	}, cl.State.Inflight.GetAll(false))

	require.Equal(t, []packets.Packet{
		{PacketID: 3, Created: 3, Expiry: -1},
		{PacketID: 4, Created: 4, Expiry: -1},
	}, cl.State.Inflight.GetAll(true))
}

func TestInflightLen(t *testing.T) {
	cl, _, _ := newTestClient()
	cl.State.Inflight.Set(packets.Packet{PacketID: 2})
	require.Equal(t, 1, cl.State.Inflight.Len())
}

func TestInflightClone(t *testing.T) {
	cl, _, _ := newTestClient()
	cl.State.Inflight.Set(packets.Packet{PacketID: 2})
	require.Equal(t, 1, cl.State.Inflight.Len())

	cloned := cl.State.Inflight.Clone()
	require.NotNil(t, cloned)
	require.NotSame(t, cloned, cl.State.Inflight)
}

func TestInflightDelete(t *testing.T) {
	cl, _, _ := newTestClient()

	cl.State.Inflight.Set(packets.Packet{PacketID: 3})
	require.NotNil(t, cl.State.Inflight.internal[3])

	r := cl.State.Inflight.Delete(3)
	require.True(t, r)
	require.Nil(t, cl.State.Inflight.internal[3])

	_, ok := cl.State.Inflight.Get(3)
	require.False(t, ok)

	r = cl.State.Inflight.Delete(3)
	require.False(t, r)
}

func TestResetReceiveQuota(t *testing.T) {
	i := NewInflights()
	require.Equal(t, int32(0), atomic.LoadInt32(&i.maximumReceiveQuota))
	require.Equal(t, int32(0), atomic.LoadInt32(&i.receiveQuota))
	i.ResetReceiveQuota(6)
	require.Equal(t, int32(6), atomic.LoadInt32(&i.maximumReceiveQuota))
	require.Equal(t, int32(6), atomic.LoadInt32(&i.receiveQuota))
}

func TestReceiveQuota(t *testing.T) {
	i := NewInflights()
	i.receiveQuota = 4
	i.maximumReceiveQuota = 5
	require.Equal(t, int32(5), atomic.LoadInt32(&i.maximumReceiveQuota))
	require.Equal(t, int32(4), atomic.LoadInt32(&i.receiveQuota))

	// Return 1
	i.IncreaseReceiveQuota()
	require.Equal(t, int32(5), atomic.LoadInt32(&i.maximumReceiveQuota))
	require.Equal(t, int32(5), atomic.LoadInt32(&i.receiveQuota))

	// Try to go over max limit
	i.IncreaseReceiveQuota()
	require.Equal(t, int32(5), atomic.LoadInt32(&i.maximumReceiveQuota))
	require.Equal(t, int32(5), atomic.LoadInt32(&i.receiveQuota))

	// Reset to max 1
	i.ResetReceiveQuota(1)
	require.Equal(t, int32(1), atomic.LoadInt32(&i.maximumReceiveQuota))
	require.Equal(t, int32(1), atomic.LoadInt32(&i.receiveQuota))

	// Take 1
	i.DecreaseReceiveQuota()
	require.Equal(t, int32(1), atomic.LoadInt32(&i.maximumReceiveQuota))
	require.Equal(t, int32(0), atomic.LoadInt32(&i.receiveQuota))

	// Try to go below zero
	i.DecreaseReceiveQuota()
	require.Equal(t, int32(1), atomic.LoadInt32(&i.maximumReceiveQuota))
	require.Equal(t, int32(0), atomic.LoadInt32(&i.receiveQuota))
}

func TestResetSendQuota(t *testing.T) {
	i := NewInflights()
	require.Equal(t, int32(0), atomic.LoadInt32(&i.maximumSendQuota))
	require.Equal(t, int32(0), atomic.LoadInt32(&i.sendQuota))
	i.ResetSendQuota(6)
	require.Equal(t, int32(6), atomic.LoadInt32(&i.maximumSendQuota))
	require.Equal(t, int32(6), atomic.LoadInt32(&i.sendQuota))
}

func TestSendQuota(t *testing.T) {
	i := NewInflights()
	i.sendQuota = 4
	i.maximumSendQuota = 5
	require.Equal(t, int32(5), atomic.LoadInt32(&i.maximumSendQuota))
	require.Equal(t, int32(4), atomic.LoadInt32(&i.sendQuota))

	// Return 1
	i.IncreaseSendQuota()
	require.Equal(t, int32(5), atomic.LoadInt32(&i.maximumSendQuota))
	require.Equal(t, int32(5), atomic.LoadInt32(&i.sendQuota))

	// Try to go over max limit
	i.IncreaseSendQuota()
	require.Equal(t, int32(5), atomic.LoadInt32(&i.maximumSendQuota))
	require.Equal(t, int32(5), atomic.LoadInt32(&i.sendQuota))

	// Reset to max 1
	i.ResetSendQuota(1)
	require.Equal(t, int32(1), atomic.LoadInt32(&i.maximumSendQuota))
	require.Equal(t, int32(1), atomic.LoadInt32(&i.sendQuota))

	// Take 1
	i.DecreaseSendQuota()
	require.Equal(t, int32(1), atomic.LoadInt32(&i.maximumSendQuota))
	require.Equal(t, int32(0), atomic.LoadInt32(&i.sendQuota))

	// Try to go below zero
	i.DecreaseSendQuota()
	require.Equal(t, int32(1), atomic.LoadInt32(&i.maximumSendQuota))
	require.Equal(t, int32(0), atomic.LoadInt32(&i.sendQuota))
}

func TestNextImmediate(t *testing.T) {
	cl, _, _ := newTestClient()
	cl.State.Inflight.Set(packets.Packet{PacketID: 1, Created: 1})
	cl.State.Inflight.Set(packets.Packet{PacketID: 2, Created: 2})
	cl.State.Inflight.Set(packets.Packet{PacketID: 3, Created: 3, Expiry: -1})
	cl.State.Inflight.Set(packets.Packet{PacketID: 4, Created: 4, Expiry: -1})
	cl.State.Inflight.Set(packets.Packet{PacketID: 5, Created: 5})

	pk, ok := cl.State.Inflight.NextImmediate()
	require.True(t, ok)
	require.Equal(t, packets.Packet{PacketID: 3, Created: 3, Expiry: -1}, pk)

	r := cl.State.Inflight.Delete(3)
	require.True(t, r)

	pk, ok = cl.State.Inflight.NextImmediate()
	require.True(t, ok)
	require.Equal(t, packets.Packet{PacketID: 4, Created: 4, Expiry: -1}, pk)

	r = cl.State.Inflight.Delete(4)
	require.True(t, r)

	_, ok = cl.State.Inflight.NextImmediate()
	require.False(t, ok)
}

func TestInflightNextImmediate_DoesNotDeadlockWithConcurrentSet(t *testing.T) {
	// NextImmediate used to read-lock the store and then call GetAll, which
	// read-locks it again: a Set waiting for the write lock in between
	// blocked both for good (flota patch).
	cl, _, _ := newTestClient()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for n := 0; n < 5000; n++ {
			cl.State.Inflight.NextImmediate()
		}
	}()
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		for n := 0; n < 5000; n++ {
			cl.State.Inflight.Set(packets.Packet{PacketID: uint16(n%100 + 1), Expiry: -1})
		}
	}()
	for _, c := range []chan struct{}{done, finished} {
		select {
		case <-c:
		case <-time.After(time.Minute): // far longer than the loops take under -race
			t.Fatal("NextImmediate and Set deadlocked")
		}
	}
}

// inflightPublish returns a QoS 1 PUBLISH as publishToClient stores it,
// every field that a delivery can carry filled in.
func inflightPublish(id uint16, payload []byte) packets.Packet {
	return packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Publish, Qos: 1, Remaining: len(payload) + 64},
		ProtocolVersion: 5,
		Origin:          "orchestrator",
		TopicName:       "flota/devices/dev-00001/down/offer",
		PacketID:        id,
		Payload:         payload,
		Created:         time.Now().Unix(),
		Expiry:          time.Now().Unix() + 3600,
		Properties: packets.Properties{
			PayloadFormat:          1,
			PayloadFormatFlag:      true,
			MessageExpiryInterval:  3600,
			ContentType:            "application/json",
			ResponseTopic:          "flota/devices/dev-00001/up/report",
			CorrelationData:        []byte("correlation"),
			SubscriptionIdentifier: []int{7},
			User:                   []packets.UserProperty{{Key: "k", Val: "v"}},
		},
	}
}

func TestInflight_AcknowledgedPacketLeavesLittleBehind(t *testing.T) {
	// What a client's store keeps once its packets are acknowledged: the
	// map and its first group of eight slots, each a key and a pointer
	// (about 230 bytes with Go 1.26). A store that kept its 816-byte
	// packets in the slots themselves would keep 6.5 KB, for every client
	// that ever had a QoS 1 delivery.
	const (
		stores   = 4000
		perStore = 1024 // bytes
	)
	payload := make([]byte, 512)
	all := make([]*Inflight, stores)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for n := range all {
		i := NewInflights()
		id := uint16(n%65535 + 1)
		require.True(t, i.Set(inflightPublish(id, payload)))
		require.True(t, i.Delete(id))
		all[n] = i
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	retained := (int64(after.HeapAlloc) - int64(before.HeapAlloc)) / stores
	runtime.KeepAlive(all)
	t.Logf("%d bytes retained per store", retained)
	require.LessOrEqual(t, retained, int64(perStore))
}

func TestInflight_SetAndDeleteAllocateNothing(t *testing.T) {
	// A map allocates a value larger than 128 bytes for each new key: an
	// 896-byte packet for every QoS 1 or 2 message in either direction,
	// garbage once acknowledged. The store's entries come from a pool
	// instead (flota patch).
	if raceEnabled {
		t.Skip("under the race detector, sync.Pool drops entries at random")
	}
	i := NewInflights()
	pk := inflightPublish(1, make([]byte, 512))
	i.Set(pk)
	i.Delete(pk.PacketID)
	allocs := testing.AllocsPerRun(1000, func() {
		pk.PacketID = pk.PacketID%64 + 1
		i.Set(pk)
		i.Delete(pk.PacketID)
	})
	require.Zero(t, allocs)
}

func TestInflight_ReturnedPacketsAreCopies(t *testing.T) {
	i := NewInflights()
	pk := inflightPublish(1, []byte("offer"))
	i.Set(pk)

	got, ok := i.Get(1)
	require.True(t, ok)
	got.TopicName, got.Expiry = "changed", -1
	all := i.GetAll(false)
	require.Len(t, all, 1)
	all[0].PacketID, all[0].Expiry = 9, -1
	next, ok := i.NextImmediate()
	require.False(t, ok, "%+v", next)

	got, ok = i.Get(1)
	require.True(t, ok)
	require.Equal(t, pk, got)
}

func TestInflight_CloneIsIndependent(t *testing.T) {
	i := NewInflights()
	a, b := inflightPublish(1, []byte("a")), inflightPublish(2, []byte("b"))
	b.Created = a.Created + 1 // GetAll's order
	i.Set(a)
	i.Set(b)
	c := i.Clone()

	// The original's entries go back to the pool and are taken again.
	require.True(t, i.Delete(1))
	require.False(t, i.Set(inflightPublish(2, []byte("b2"))))
	other := NewInflights()
	other.Set(inflightPublish(3, []byte("c")))

	require.Equal(t, []packets.Packet{a, b}, c.GetAll(false))
	c.Set(inflightPublish(1, []byte("a2")))
	got, ok := i.Get(1)
	require.False(t, ok, "%+v", got)
}

func TestInflight_ReusedEntryKeepsNothingOfItsLastPacket(t *testing.T) {
	i := NewInflights()
	for n := uint16(1); n <= 100; n++ {
		i.Set(inflightPublish(n, []byte("payload")))
		i.Delete(n)
	}
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrec}, PacketID: 7}
	require.True(t, i.Set(pk))
	got, ok := i.Get(7)
	require.True(t, ok)
	require.Equal(t, pk, got)
}

func BenchmarkInflight_SetDelete(b *testing.B) {
	i := NewInflights()
	pk := inflightPublish(1, make([]byte, 512))
	b.ReportAllocs()
	for n := 0; n < b.N; n++ {
		pk.PacketID = uint16(n%64 + 1)
		i.Set(pk)
		i.Delete(pk.PacketID)
	}
}
