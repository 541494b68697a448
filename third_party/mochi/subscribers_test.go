package mqtt

import (
	"bufio"
	"io"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/mochi-mqtt/server/v2/system"
)

// readPublish reads one PUBLISH packet of an MQTT 5 connection from r.
func readPublish(t *testing.T, r *bufio.Reader) packets.Packet {
	t.Helper()
	hb, err := r.ReadByte()
	require.NoError(t, err)
	var pk packets.Packet
	require.NoError(t, pk.FixedHeader.Decode(hb))
	require.Equal(t, packets.Publish, pk.FixedHeader.Type)
	for shift := 0; ; shift += 7 {
		b, err := r.ReadByte()
		require.NoError(t, err)
		pk.FixedHeader.Remaining |= int(b&0x7f) << shift
		if b&0x80 == 0 {
			break
		}
	}
	body := make([]byte, pk.FixedHeader.Remaining)
	_, err = io.ReadFull(r, body)
	require.NoError(t, err)
	pk.ProtocolVersion = 5
	require.NoError(t, pk.PublishDecode(body))
	return pk
}

// newV5Subscriber returns a server with one MQTT 5 client, subscribed to
// each of subs, and a reader of what the server writes to the client.
func newV5Subscriber(t *testing.T, subs ...packets.Subscription) (*Server, *Client, *bufio.Reader) {
	t.Helper()
	s := newServer()
	r, w := net.Pipe()
	t.Cleanup(func() { _ = r.Close(); _ = w.Close() })
	require.NoError(t, r.SetReadDeadline(time.Now().Add(10*time.Second))) // no test hangs
	cl := newClient(w, &ops{info: new(system.Info), hooks: new(Hooks), log: logger, options: s.Options})
	cl.ID = "sub"
	cl.Properties.ProtocolVersion = 5
	s.Clients.Add(cl)
	for _, sub := range subs {
		require.True(t, s.Topics.Subscribe(cl.ID, sub))
	}
	return s, cl, bufio.NewReader(r)
}

// The subscription identifiers a subscriber receives with a message are
// those of its subscriptions matching the topic, sorted, 0 meaning none.
// A lone subscription's Identifier is used without merging it into an
// Identifiers map (flota patch); what is encoded is as upstream.
func TestPublishToSubscribers_SubscriptionIdentifiers(t *testing.T) {
	tt := []struct {
		name string
		subs []packets.Subscription
		want []int
	}{
		{name: "none", subs: []packets.Subscription{{Filter: "a/b/c"}}},
		{name: "one", subs: []packets.Subscription{{Filter: "a/b/c", Identifier: 7}}, want: []int{7}},
		{name: "one, large", subs: []packets.Subscription{{Filter: "a/+/c", Identifier: 268435455}}, want: []int{268435455}},
		{
			name: "two overlapping",
			subs: []packets.Subscription{{Filter: "a/#", Identifier: 30}, {Filter: "a/b/+", Identifier: 4}},
			want: []int{4, 30},
		},
		{
			name: "two overlapping, one without",
			subs: []packets.Subscription{{Filter: "a/b/c"}, {Filter: "a/#", Identifier: 5}},
			want: []int{5},
		},
		{name: "two overlapping, none", subs: []packets.Subscription{{Filter: "a/b/c"}, {Filter: "#"}}},
		{name: "shared", subs: []packets.Subscription{{Filter: SharePrefix + "/g/a/b/c", Identifier: 6}}, want: []int{6}},
		{
			name: "shared and plain overlapping",
			subs: []packets.Subscription{{Filter: "a/b/c", Identifier: 2}, {Filter: SharePrefix + "/g/a/#", Identifier: 3}},
			want: []int{2, 3},
		},
		{
			name: "one matching of two",
			subs: []packets.Subscription{{Filter: "a/b/c", Identifier: 8}, {Filter: "x/#", Identifier: 9}},
			want: []int{8},
		},
	}
	for _, tc := range tt {
		tc := tc
		t.Run(tc.name, func(t *testing.T) {
			s, _, r := newV5Subscriber(t, tc.subs...)
			go s.publishToSubscribers(packets.Packet{
				FixedHeader: packets.FixedHeader{Type: packets.Publish},
				TopicName:   "a/b/c",
				Payload:     []byte("hello"),
			})
			pk := readPublish(t, r)
			require.Equal(t, "a/b/c", pk.TopicName)
			require.Equal(t, []byte("hello"), pk.Payload)
			require.Equal(t, tc.want, pk.Properties.SubscriptionIdentifier)
		})
	}
}

// The Subscribers publishToSubscribers gathers into go back to a pool
// (flota patch): what one publish gathered must not reach the next one's
// subscribers, and a publish with shared subscribers, which a hook sees,
// keeps its own.
func TestPublishToSubscribers_PooledSubscribersStartEmpty(t *testing.T) {
	s := newServer()
	var readers [3]*bufio.Reader
	for i, filter := range []string{"a/1", "b/2", SharePrefix + "/g/c/3"} {
		r, w := net.Pipe()
		t.Cleanup(func() { _ = r.Close(); _ = w.Close() })
		require.NoError(t, r.SetReadDeadline(time.Now().Add(10*time.Second)))
		cl := newClient(w, &ops{info: new(system.Info), hooks: new(Hooks), log: logger, options: s.Options})
		cl.ID = filter
		cl.Properties.ProtocolVersion = 5
		s.Clients.Add(cl)
		require.True(t, s.Topics.Subscribe(cl.ID, packets.Subscription{Filter: filter, Identifier: i + 1}))
		readers[i] = bufio.NewReader(r)
	}
	publish := func(topic string) {
		s.publishToSubscribers(packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Publish},
			TopicName:   topic,
			Payload:     []byte(topic),
		})
	}

	go func() {
		for _, topic := range []string{"a/1", "c/3", "b/2", "b/2", "a/1"} {
			publish(topic)
		}
	}()
	for i, want := range [][]string{{"a/1", "a/1"}, {"b/2", "b/2"}, {"c/3"}} {
		for _, topic := range want {
			pk := readPublish(t, readers[i])
			require.Equal(t, topic, pk.TopicName)
			require.Equal(t, []int{i + 1}, pk.Properties.SubscriptionIdentifier)
		}
	}
	// Nothing else was sent: each client's next packet is the last publish.
	go publish("a/1")
	go publish("b/2")
	go publish("c/3")
	for i, topic := range []string{"a/1", "b/2", "c/3"} {
		require.Equal(t, topic, readPublish(t, readers[i]).TopicName)
	}
}

// selectAllHook selects every member of each shared subscription group,
// writing into the Subscribers it is given as a hook could upstream.
type selectAllHook struct {
	HookBase
}

func (h *selectAllHook) ID() string { return "select-all" }

func (h *selectAllHook) Provides(b byte) bool { return b == OnSelectSubscribers }

func (h *selectAllHook) OnSelectSubscribers(subs *Subscribers, pk packets.Packet) *Subscribers {
	for _, group := range subs.Shared {
		for client, sub := range group {
			subs.SharedSelected[client] = sub
		}
	}
	return subs
}

// Subscribers' maps are made only when something is added to them (flota
// patch), but a hook selecting shared subscribers still gets them made.
func TestPublishToSubscribers_SelectHookGetsMaps(t *testing.T) {
	s, _, r := newV5Subscriber(t, packets.Subscription{Filter: SharePrefix + "/g/a/b/c", Identifier: 6})
	require.NoError(t, s.AddHook(new(selectAllHook), nil))
	go s.publishToSubscribers(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish},
		TopicName:   "a/b/c",
		Payload:     []byte("shared"),
	})
	pk := readPublish(t, r)
	require.Equal(t, []byte("shared"), pk.Payload)
	require.Equal(t, []int{6}, pk.Properties.SubscriptionIdentifier)
}

// A retained message sent to a client as it subscribes carries no
// subscription identifier, as upstream: that path does not set them.
func TestPublishRetainedToClient_SubscriptionIdentifiersAsUpstream(t *testing.T) {
	s, cl, r := newV5Subscriber(t)
	s.Topics.RetainMessage(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Retain: true},
		TopicName:   "a/b/c",
		Payload:     []byte("kept"),
	})
	go s.publishRetainedToClient(cl, packets.Subscription{Filter: "a/b/c", Identifier: 9}, false)
	pk := readPublish(t, r)
	require.Equal(t, []byte("kept"), pk.Payload)
	require.True(t, pk.FixedHeader.Retain)
	require.Empty(t, pk.Properties.SubscriptionIdentifier)
}

// maxPublishAllocs is how many allocations the server may make to route a
// QoS 0 PUBLISH to a client with one plain subscription and write it.
// Upstream, with flota's pools, made eleven: the Subscribers gathered and
// five maps, an identifier list, the encoded topic name and the queued copy
// of the packet.
const maxPublishAllocs = 0

func TestPublishToSubscribers_OnePlainSubscriberAllocations(t *testing.T) {
	if raceEnabled {
		t.Skip("under the race detector, sync.Pool drops buffers at random")
	}
	s := newServer()
	r, w := net.Pipe()
	defer w.Close()
	defer r.Close()
	go func() {
		buf := make([]byte, 64<<10)
		for {
			if _, err := r.Read(buf); err != nil {
				return
			}
		}
	}()
	cl := newClient(w, &ops{info: new(system.Info), hooks: new(Hooks), log: logger, options: s.Options})
	cl.ID = "dev-000042"
	cl.Properties.ProtocolVersion = 4
	s.Clients.Add(cl)
	require.True(t, s.Topics.Subscribe(cl.ID, packets.Subscription{Filter: "flota/devices/dev-000042/down/#"}))
	// The test writes the queue itself, so that no writer goroutine is
	// started (whether one must be depends on timing).
	cl.State.writing.Store(true)

	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish},
		TopicName:   "flota/devices/dev-000042/down/chunk",
		Payload:     make([]byte, 16<<10),
	}
	allocs := testing.AllocsPerRun(200, func() {
		s.publishToSubscribers(pk)
		select {
		case out := <-cl.State.outbound:
			cl.writeQueued(out)
		default:
			t.Fatal("nothing queued")
		}
	})
	require.LessOrEqual(t, allocs, float64(maxPublishAllocs))
}

// selectAndForgetHook selects every member of each shared group and then
// empties Shared, which nothing reads after the hook (upstream allows it).
type selectAndForgetHook struct {
	selectAllHook
}

func (h *selectAndForgetHook) ID() string { return "select-and-forget" }

func (h *selectAndForgetHook) OnSelectSubscribers(subs *Subscribers, pk packets.Packet) *Subscribers {
	subs = h.selectAllHook.OnSelectSubscribers(subs, pk)
	subs.Shared = nil
	return subs
}

// Subscribers a hook has seen are not pooled again, whatever the hook left in
// them: a selection of one publish must not reach the next (flota patch).
func TestPublishToSubscribers_HookedSubscribersNotReused(t *testing.T) {
	s := newServer()
	require.NoError(t, s.AddHook(new(selectAndForgetHook), nil))
	var readers [2]*bufio.Reader
	for i, filter := range []string{SharePrefix + "/g/a/b", SharePrefix + "/h/x/y"} {
		r, w := net.Pipe()
		t.Cleanup(func() { _ = r.Close(); _ = w.Close() })
		require.NoError(t, r.SetReadDeadline(time.Now().Add(10*time.Second)))
		cl := newClient(w, &ops{info: new(system.Info), hooks: new(Hooks), log: logger, options: s.Options})
		cl.ID = filter
		cl.Properties.ProtocolVersion = 5
		s.Clients.Add(cl)
		require.True(t, s.Topics.Subscribe(cl.ID, packets.Subscription{Filter: filter}))
		readers[i] = bufio.NewReader(r)
	}
	topics := []string{"a/b", "x/y", "a/b", "x/y", "a/b", "x/y"}
	go func() {
		for _, topic := range topics {
			s.publishToSubscribers(packets.Packet{
				FixedHeader: packets.FixedHeader{Type: packets.Publish},
				TopicName:   topic,
				Payload:     []byte(topic),
			})
		}
	}()
	// Each client's packets are its own topic's only: a stale selection
	// would put the other topic on its pipe (and block the publisher).
	for n := 0; n < len(topics)/2; n++ {
		require.Equal(t, "a/b", readPublish(t, readers[0]).TopicName)
		require.Equal(t, "x/y", readPublish(t, readers[1]).TopicName)
	}
}
