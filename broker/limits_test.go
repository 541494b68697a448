package broker

import (
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
)

// heapInUse returns the live heap after a collection.
func heapInUse() int64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

// heapSlack is the heap growth the memory tests allow: far below what the
// attacks cost without the limits (tens of MB each), far above the noise
// of a test binary under the race detector.
const heapSlack = 12 << 20

// TestBroker_DevicePublishesOnlyTheProtocolsUpTopics checks that a device
// may publish on the up kinds of the protocol and nowhere else in its up
// tree, and that the refusals are counted.
func TestBroker_DevicePublishesOnlyTheProtocolsUpTopics(t *testing.T) {
	b, _ := openBroker(t, Options{}, nil)
	var up inbox
	require.NoError(t, b.Subscribe(protocol.UpFilter, up.inline))
	c := dial(t, b, "dev-A")

	// In order on the connection: the refused ones first.
	for _, topic := range []string{"anything-else", "hello/x", "ack/", "statusx"} {
		publish(t, c, "flota/devices/dev-A/up/"+topic, 0, false, "refused")
	}
	for _, kind := range defaultUpKinds {
		publish(t, c, protocol.UpTopic("dev-A", kind), 0, false, "ok")
	}
	up.waitTopic(t, protocol.UpTopic("dev-A", protocol.KindStatus))
	var want []string
	for _, kind := range defaultUpKinds {
		want = append(want, protocol.UpTopic("dev-A", kind))
	}
	assert.Equal(t, want, up.topics())
	assert.EqualValues(t, 4, b.Stats().ACLDenied)
}

// TestBroker_ClientRetainsNothing checks that a device's retained publishes
// are delivered without the flag and kept nowhere: on its protocol topics
// the flag is cleared (and counted), elsewhere the publish is refused, so
// 20,000 retained messages on distinct topics leave the heap as it was.
func TestBroker_ClientRetainsNothing(t *testing.T) {
	b, _ := openBroker(t, Options{RateLimit: -1}, nil)
	var up inbox // of the protocol's topics only: the test keeps no message it refuses
	for _, kind := range defaultUpKinds {
		require.NoError(t, b.Subscribe(protocol.UpTopic("+", kind), up.inline))
	}
	c := dial(t, b, "dev-A")
	before := heapInUse()

	payload := strings.Repeat("r", 1024)
	for i := range 20000 {
		c.Publish(fmt.Sprintf("flota/devices/dev-A/up/r-%d", i), 0, true, payload) // QoS 0: not waited for
	}
	for _, kind := range []string{protocol.KindHello, protocol.KindReport, protocol.KindAck} {
		publish(t, c, protocol.UpTopic("dev-A", kind), 1, true, `{"v":1}`)
	}
	publish(t, c, protocol.UpTopic("dev-A", protocol.KindStatus), 1, true, `{"v":1,"online":true}`)
	up.waitTopic(t, protocol.UpTopic("dev-A", protocol.KindStatus))

	assert.Len(t, up.all(), 4, "only the protocol's topics are delivered")
	assert.Zero(t, len(clientRetained(b)), "nothing retained")
	assert.EqualValues(t, 3, b.Stats().RetainRefused, "hello, report and ack; presence is not counted")
	assert.EqualValues(t, 20000, b.Stats().ACLDenied)
	grown := heapInUse() - before
	t.Logf("heap grew by %d bytes", grown)
	assert.Less(t, grown, int64(heapSlack), "heap grew by %d bytes", grown)

	c.Disconnect(50)
	require.Eventually(t, func() bool { return !b.Online("dev-A") }, waitFor, tick)
	assert.Zero(t, len(clientRetained(b)), "nothing kept after the device left")
	grown = heapInUse() - before
	t.Logf("heap grew by %d bytes after the device left", grown)
	assert.Less(t, grown, int64(heapSlack), "heap grew by %d bytes", grown)
}

// clientRetained returns the topics of the messages mochi retains, but for
// its own $SYS topics.
func clientRetained(b *Broker) []string {
	var topics []string
	for topic := range b.srv.Topics.Retained.GetAll() {
		if !strings.HasPrefix(topic, "$SYS/") {
			topics = append(topics, topic)
		}
	}
	return topics
}

// deepFilter returns a filter of levels levels in device A's down tree,
// which the ACL lets it read.
func deepFilter(levels int) string {
	return "flota/devices/dev-A/down" + strings.Repeat("/x", levels-4)
}

// TestBroker_TopicsOverTheLimitsAreRefusedBeforeTheIndex checks that a
// filter, topic or will of 32,000 levels or 65,000 bytes is refused (SUBACK
// and UNSUBACK 0x8F, the publish dropped, the connection refused) and
// counted, that nothing of it reaches the topic index, and that a client
// using the broker meanwhile gets every message.
func TestBroker_TopicsOverTheLimitsAreRefusedBeforeTheIndex(t *testing.T) {
	b, _ := openBroker(t, Options{}, nil)
	deep := deepFilter(32000)
	long := "flota/devices/dev-A/down/" + strings.Repeat("l", 65000)

	legit := dialRaw(t, b, "dev-B", 4)
	require.Equal(t, []byte{1}, legit.subscribe(1, packets.Properties{}, packets.Subscription{Filter: protocol.DownFilter("dev-B"), Qos: 1}))
	legit.autoAck.Store(true)

	attacker := dialRaw(t, b, "dev-A", 5)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // the legitimate device's traffic goes on during the attack
		defer wg.Done()
		for i := range 50 {
			assert.NoError(t, b.Publish(protocol.DownTopic("dev-B", protocol.KindOffer), []byte{byte(i)}, false, 1))
		}
	}()
	for i := range 4 {
		id := uint16(10 + i)
		codes := attacker.subscribe(id, packets.Properties{},
			packets.Subscription{Filter: deep}, packets.Subscription{Filter: long}, packets.Subscription{Filter: deepFilter(17)},
			packets.Subscription{Filter: deepFilter(16)})
		require.Equal(t, []byte{0x8F, 0x8F, 0x8F, 0}, codes, "16 levels fit, 17 do not")
		attacker.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Unsubscribe}, PacketID: id,
			Filters: packets.Subscriptions{{Filter: deep}, {Filter: deepFilter(16)}}})
		assert.Equal(t, []byte{0x8F, 0}, attacker.waitAck(packets.Unsuback, id).ReasonCodes)
		attacker.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "flota/devices/dev-A/up" + strings.Repeat("/x", 32000)})
	}
	// Packets are handled in order: once this is answered, so is the last publish.
	attacker.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Unsubscribe}, PacketID: 99,
		Filters: packets.Subscriptions{{Filter: protocol.EventsFilter}}})
	attacker.waitAck(packets.Unsuback, 99)
	wg.Wait()
	waitUntil(t, waitFor, func() bool { return len(legit.publishes()) == 50 }, func() any { return len(legit.publishes()) })

	st := b.Stats()
	assert.EqualValues(t, 4*(3+1+1), st.TopicRefused, "3 filters, 1 unsubscription and 1 publish each time")
	assert.Zero(t, st.ACLDenied, "refused before the ACL")
	assert.EqualValues(t, 1, b.srv.Info.Subscriptions, "only the legitimate device's subscription is held")
	assert.Nil(t, b.srv.Topics.Subscribers(deep[:len(deep)-2]+"/y").Subscriptions)
	require.NoError(t, attacker.err0(), "the attacker is refused, not disconnected")

	// A will topic over the limits refuses the connection (one of 32,000
	// levels would not even be read: its CONNECT is over MaxConnectSize).
	_, err := tryDial(t, clientOptions(b, "dev-C").SetWill("flota/devices/dev-C/up"+strings.Repeat("/x", 2000), "bye", 0, false))
	require.Error(t, err)
	assert.EqualValues(t, st.TopicRefused+1, b.Stats().TopicRefused)
}

// err0 returns why the client's reading ended, nil while it reads.
func (c *rawClient) err0() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// TestBroker_SubscriptionsPerClientAreCapped checks that a client holds at
// most MaxSubscriptions filters, that a filter it holds can be subscribed
// again, that the refusals are counted, and that a persistent session that
// asked for 20,000 filters keeps the capped number after it disconnects.
func TestBroker_SubscriptionsPerClientAreCapped(t *testing.T) {
	b, _ := openBroker(t, Options{Topics: TopicLimits{SubscribeRate: -1}}, nil)

	c := dialRaw(t, b, "mon-1", 5)
	var subs []packets.Subscription
	for i := range DefaultMaxSubscriptions + 8 {
		subs = append(subs, packets.Subscription{Filter: fmt.Sprintf("flota/events/f-%d", i)})
	}
	codes := c.subscribe(1, packets.Properties{}, subs...)
	for i, code := range codes {
		if i < DefaultMaxSubscriptions {
			assert.Zero(t, code, "filter %d", i)
		} else {
			assert.EqualValues(t, packets.ErrQuotaExceeded.Code, code, "filter %d", i)
		}
	}
	assert.Equal(t, []byte{0}, c.subscribe(2, packets.Properties{}, subs[0]), "a filter held is replaced")
	assert.Equal(t, []byte{0x97}, c.subscribe(3, packets.Properties{}, subs[len(subs)-1]))
	assert.EqualValues(t, 9, b.Stats().SubscriptionsRefused)
	c.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Unsubscribe}, PacketID: 4, Filters: packets.Subscriptions{subs[0]}})
	c.waitAck(packets.Unsuback, 4)
	assert.Equal(t, []byte{0}, c.subscribe(5, packets.Properties{}, subs[len(subs)-1]), "room again after an unsubscription")

	// A persistent MQTT 3.1.1 session asks for 20,000 filters.
	before := heapInUse()
	p, r := connectRawWith(t, b, packets.ConnectParams{ClientIdentifier: "dev-P"}, 4)
	go p.readLoop(r)
	for batch := range 40 {
		subs = subs[:0]
		for i := range 500 {
			subs = append(subs, packets.Subscription{Filter: fmt.Sprintf("flota/status/s-%d-%d", batch, i)})
		}
		codes := p.subscribe(uint16(batch+1), packets.Properties{}, subs...)
		require.Len(t, codes, 500)
	}
	require.NoError(t, p.conn.Close())
	<-p.done
	require.Eventually(t, func() bool { return !b.Online("dev-P") }, waitFor, tick)
	session, ok := b.srv.Clients.Get("dev-P")
	require.True(t, ok, "the session outlives the connection")
	assert.Equal(t, DefaultMaxSubscriptions, session.State.Subscriptions.Len())
	assert.EqualValues(t, 2*DefaultMaxSubscriptions, atomic.LoadInt64(&b.srv.Info.Subscriptions))
	grown := heapInUse() - before
	t.Logf("heap grew by %d bytes", grown)
	assert.Less(t, grown, int64(heapSlack), "heap grew by %d bytes", grown)
}

// TestBroker_SubscribeRateIsLimitedPerConnection checks that SUBSCRIBE
// packets over a connection's rate are refused whole with 0x97 (0x80 in
// MQTT 3.1.1) and counted, and that another connection is not affected.
func TestBroker_SubscribeRateIsLimitedPerConnection(t *testing.T) {
	// One token per 1,000 s: the burst is all a test can use.
	b, _ := openBroker(t, Options{Topics: TopicLimits{SubscribeRate: 0.001, SubscribeBurst: 3}}, nil)
	c5 := dialRaw(t, b, "dev-A", 5)
	down := packets.Subscription{Filter: protocol.DownFilter("dev-A")}
	for id := range uint16(3) {
		require.Equal(t, []byte{0}, c5.subscribe(id+1, packets.Properties{}, down))
	}
	assert.Equal(t, []byte{0x97, 0x97}, c5.subscribe(4, packets.Properties{}, down, packets.Subscription{Filter: protocol.EventsFilter}))
	assert.EqualValues(t, 1, b.Stats().SubscribeRateLimited)

	c4 := dialRaw(t, b, "dev-B", 4)
	for id := range uint16(3) {
		require.Equal(t, []byte{0}, c4.subscribe(id+1, packets.Properties{}, packets.Subscription{Filter: protocol.DownFilter("dev-B")}))
	}
	assert.Equal(t, []byte{0x80}, c4.subscribe(4, packets.Properties{}, packets.Subscription{Filter: protocol.EventsFilter}))
	assert.EqualValues(t, 2, b.Stats().SubscribeRateLimited)
	cl := serverClient(t, b, "dev-B")
	_, subscribed := cl.State.Subscriptions.Get(protocol.EventsFilter)
	assert.False(t, subscribed)
}

// TestTopicFits checks the bounds of topicFits.
func TestTopicFits(t *testing.T) {
	b := New(Options{Topics: TopicLimits{MaxTopicLength: 8, MaxTopicLevels: 3}})
	for topic, want := range map[string]bool{
		"a/b/c":     true,
		"a/b/c/d":   false,
		"abcdefgh":  true,
		"abcdefghi": false,
		"//":        true,
		"///":       false,
		"":          true,
	} {
		assert.Equal(t, want, b.topicFits(topic), "%q", topic)
	}
}

// TestHook_LimitsDoNotAllocateOnThePublishPath checks that the topic limits
// and the retain rule add no allocation to a device's publish.
func TestHook_LimitsDoNotAllocateOnThePublishPath(t *testing.T) {
	b := New(Options{})
	h := &hook{b: b}
	cl := b.srv.NewClient(nil, "tcp", "dev-1", false)
	b.clients.set(cl, &clientState{role: fleet.RoleDevice})
	pk := packets.Packet{TopicName: protocol.UpTopic("dev-1", protocol.KindAck), FixedHeader: packets.FixedHeader{Type: packets.Publish, Retain: true}}
	allocs := testing.AllocsPerRun(1000, func() {
		if !h.OnACLCheck(cl, pk.TopicName, true) {
			t.Fatal("denied")
		}
		if _, err := h.OnPublish(cl, pk); err != nil {
			t.Fatal(err)
		}
	})
	assert.Zero(t, allocs)
}

// TestMinTopicLimits_FitTheProtocol checks that the least limits serve
// accepts fit the protocol's longest topic and its deepest filter.
func TestMinTopicLimits_FitTheProtocol(t *testing.T) {
	id := strings.Repeat("d", 64)
	b := New(Options{Topics: TopicLimits{MaxTopicLength: MinTopicLength, MaxTopicLevels: MinTopicLevels}})
	for _, topic := range []string{
		protocol.DownTopic(id, protocol.KindCancel), protocol.UpTopic(id, protocol.KindReport), protocol.DownFilter(id),
		protocol.DeviceStatusTopic(id), "flota/status/devices/+/#",
	} {
		assert.True(t, b.topicFits(topic), topic)
	}
	assert.Equal(t, MinTopicLength, len(protocol.DownTopic(id, protocol.KindCancel)))
}
