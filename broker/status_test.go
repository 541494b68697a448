package broker

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/auth"
	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
	"github.com/flotaio/flota/internal/testtool"
)

// manyStatuses is more device statuses than a client's outbound queue (256
// packets) and its inflight limit (4096) hold: what mochi's own retained
// delivery would drop most of.
const manyStatuses = 20000

// deviceID names the i-th test device.
func deviceID(i int) string { return fmt.Sprintf("dev-%05d", i) }

// statusPayload is a device status as the engine would publish it, padded
// with pad bytes.
func statusPayload(i int, state string, pad int) []byte {
	return fmt.Appendf(nil, `{"device":%q,"state":%q,"pad":%q}`, deviceID(i), state, strings.Repeat("x", pad))
}

// storeStatuses publishes n device statuses through b, each twice (the
// first one replaced), and returns the latest payload of each topic.
func storeStatuses(t testing.TB, b *Broker, n, pad int) map[string]string {
	t.Helper()
	want := make(map[string]string, n)
	buf := make([]byte, 0, 256+pad)
	for i := range n {
		topic := protocol.DeviceStatusTopic(deviceID(i))
		// The same buffer for every call: the store must copy.
		buf = append(buf[:0], statusPayload(i, "downloading", pad)...)
		require.NoError(t, b.Publish(topic, buf, true, 1))
		buf = append(buf[:0], statusPayload(i, "succeeded", pad)...)
		require.NoError(t, b.Publish(topic, buf, true, 1))
		want[topic] = string(buf)
	}
	return want
}

// monitorAuth makes a client that logs in as "monitor" a monitor, and any
// other a device.
func monitorAuth(_ context.Context, c auth.Connect) (fleet.Role, error) {
	if c.Username == "monitor" {
		return fleet.RoleMonitor, nil
	}
	return fleet.RoleDevice, nil
}

// waitUntil waits until cond holds and, if it never does, fails with what
// state returns then (testify's messages are made before the wait).
func waitUntil(t testing.TB, d time.Duration, cond func() bool, state func() any) {
	t.Helper()
	if !assert.Eventually(t, cond, d, tick) {
		t.Fatalf("state at the end: %v", state())
	}
}

// waitDeliveries waits until b has no delivery of stored statuses running.
func waitDeliveries(t testing.TB, b *Broker) {
	t.Helper()
	require.Eventually(t, func() bool { return b.feedCount.Load() == 0 }, waitFor, tick, "deliveries still running")
}

// serverClient returns the broker's side of the connection of clientID.
func serverClient(t testing.TB, b *Broker, clientID string) *mqtt.Client {
	t.Helper()
	var cl *mqtt.Client
	require.Eventually(t, func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		cl = b.conns[clientID]
		return cl != nil
	}, waitFor, tick)
	return cl
}

// deliveryWaitsForAcks reports whether a QoS 1 delivery to cl waits for
// acknowledgements: it runs, its writer has written everything granted, and
// the client's inflight store holds a window.
func deliveryWaitsForAcks(b *Broker, cl *mqtt.Client) bool {
	b.feedsMu.Lock()
	defer b.feedsMu.Unlock()
	f := b.feeds[cl]
	if f == nil {
		return false
	}
	for _, d := range f.running {
		if d.qos == 1 && len(d.out) == 0 && cl.State.Inflight.Len() >= b.statusWindow(cl) {
			return true
		}
	}
	return false
}

func TestBroker_DeviceStatusKeptOutOfMochi(t *testing.T) {
	b, _ := openBroker(t, Options{}, nil)
	// Published before the subscription: mochi may deliver a retained
	// message published just after a SUBACK twice.
	update := protocol.UpdateStatusTopic("u1")
	require.NoError(t, b.Publish(update, []byte(`{"state":"running"}`), true, 1))
	var live inbox
	m := dial(t, b, "monitor-1")
	require.EqualValues(t, 1, subscribe(t, m, protocol.StatusFilter, 1, live.paho))
	live.waitTopic(t, update)

	want := storeStatuses(t, b, 3, 0)
	dev0 := protocol.DeviceStatusTopic(deviceID(0))
	devices := func() []message {
		var ms []message
		for _, msg := range live.all() {
			if strings.HasPrefix(msg.topic, deviceStatusPrefix) {
				ms = append(ms, msg)
			}
		}
		return ms
	}
	require.Eventually(t, func() bool { return len(devices()) == 2*3 }, waitFor, tick)
	for _, msg := range devices() {
		assert.False(t, msg.retain, "a live message has no retain flag (%s)", msg.topic)
	}
	var retained []string
	for topic := range b.srv.Topics.Retained.GetAll() {
		if !strings.HasPrefix(topic, "$SYS/") {
			retained = append(retained, topic)
		}
	}
	assert.Equal(t, []string{update}, retained, "update summaries stay in mochi, device statuses do not")
	assert.Equal(t, 3, b.statuses.len())
	got, ok := b.statuses.get(dev0)
	assert.True(t, ok)
	assert.Equal(t, want[dev0], got, "the later status replaced the first")

	require.NoError(t, b.Publish(dev0, nil, true, 1))
	assert.Equal(t, 2, b.statuses.len(), "an empty payload removes the status")
	require.Eventually(t, func() bool { return len(devices()) == 2*3+1 }, waitFor, tick)
	last := devices()[2*3]
	assert.Equal(t, message{topic: dev0}, last, "current subscribers see the removal")

	require.NoError(t, b.Publish(protocol.DeviceStatusTopic("dev-x"), []byte("not kept"), false, 1))
	assert.Equal(t, 2, b.statuses.len(), "a message without retain is not kept")
}

// TestBroker_MosquittoSubGetsEveryDeviceStatus is the monitor's view: on a
// fleet larger than a client's queue and inflight limit, mosquitto_sub
// receives every device's latest status as a retained message, and nothing
// else.
func TestBroker_MosquittoSubGetsEveryDeviceStatus(t *testing.T) {
	bin := testtool.Path(t, "mosquitto_sub")
	b, _ := openBroker(t, Options{Authenticate: monitorAuth}, nil)
	caps := b.srv.Options.Capabilities
	require.Greater(t, manyStatuses, int(caps.MaximumClientWritesPending))
	require.Greater(t, manyStatuses, int(caps.MaximumInflight))

	want := storeStatuses(t, b, manyStatuses, 0)
	for _, i := range []int{7, 8000, manyStatuses - 1} {
		topic := protocol.DeviceStatusTopic(deviceID(i))
		require.NoError(t, b.Publish(topic, nil, true, 1)) // removed
		delete(want, topic)
	}
	update := protocol.UpdateStatusTopic("u1")
	require.NoError(t, b.Publish(update, []byte(`{"state":"running"}`), true, 1))
	want[update] = `{"state":"running"}`

	host, port, ok := strings.Cut(b.Addr(), ":")
	require.True(t, ok)
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"qos0", []string{"-q", "0"}},
		{"qos1", []string{"-q", "1"}},
		{"mqtt5 qos1", []string{"-q", "1", "-V", "mqttv5"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			args := append([]string{"-h", host, "-p", port, "-i", "mosq-monitor", "-u", "monitor",
				"-t", protocol.StatusFilter, "-F", "%r %t %p", "-C", fmt.Sprint(len(want)), "-W", "30"}, tc.args...)
			var out, errOut bytes.Buffer
			cmd := exec.CommandContext(ctx, bin, args...)
			cmd.Stdout, cmd.Stderr = &out, &errOut
			err := cmd.Run()

			got := make(map[string]string, len(want))
			var notRetained []string
			for line := range strings.Lines(out.String()) {
				flag, rest, _ := strings.Cut(strings.TrimSuffix(line, "\n"), " ")
				topic, payload, _ := strings.Cut(rest, " ")
				if _, dup := got[topic]; dup {
					t.Errorf("%s delivered twice", topic)
				}
				got[topic] = payload
				if flag != "1" {
					notRetained = append(notRetained, topic)
				}
			}
			require.NoError(t, err, "mosquitto_sub (%d of %d messages): %s", len(got), len(want), errOut.String())
			assert.Equal(t, len(want), len(got))
			for topic, payload := range want {
				if got[topic] != payload {
					t.Errorf("%s: got %q, want %q", topic, got[topic], payload)
					break
				}
			}
			assert.Empty(t, notRetained, "every message carries the retain flag")
			assert.Zero(t, b.Stats().MessagesDropped)
			waitDeliveries(t, b)
		})
	}
}

func TestBroker_DeviceStatusFilters(t *testing.T) {
	b, _ := openBroker(t, Options{}, nil)
	want := storeStatuses(t, b, 5, 0)
	require.NoError(t, b.Publish(protocol.UpdateStatusTopic("u1"), []byte(`{"state":"running"}`), true, 1))
	dev := func(i int) string { return protocol.DeviceStatusTopic(deviceID(i)) }
	all := []string{dev(0), dev(1), dev(2), dev(3), dev(4)}

	for i, tc := range []struct {
		filter string
		want   []string
	}{
		{"flota/status/devices/+", all},
		{"flota/status/devices/#", all},
		{"flota/status/+/+", append([]string{protocol.UpdateStatusTopic("u1")}, all...)},
		{"flota/status/+/" + deviceID(1), []string{dev(1)}},
		{dev(2), []string{dev(2)}},
		{"flota/status/devices/" + deviceID(9), nil},
		{"flota/status/devices", nil},
		{"flota/status/devices/+/x", nil},
		{"flota/events/#", nil},
	} {
		t.Run(tc.filter, func(t *testing.T) {
			var in inbox
			c := dial(t, b, fmt.Sprintf("sub-%d", i))
			marker := protocol.UpdateEventsTopic(fmt.Sprintf("marker-%d", i))
			require.EqualValues(t, 0, subscribe(t, c, marker, 0, in.paho))
			require.EqualValues(t, 1, subscribe(t, c, tc.filter, 1, in.paho))
			waitUntil(t, waitFor, func() bool { return len(in.all()) >= len(tc.want) }, func() any { return in.topics() })
			// Once the deliveries end, a live message comes after
			// anything they sent.
			waitDeliveries(t, b)
			require.NoError(t, b.Publish(marker, []byte("marker"), false, 0))
			in.waitTopic(t, marker)

			var got []string
			for _, m := range in.all() {
				if m.topic == marker {
					break
				}
				got = append(got, m.topic)
				assert.True(t, m.retain, m.topic)
				if p, ok := want[m.topic]; ok {
					assert.Equal(t, p, m.payload)
				}
			}
			assert.ElementsMatch(t, tc.want, got)
		})
	}
}

// A filter whose "#" follows a "+" matches the parent level too (MQTT
// 4.7.1.2), for live statuses as for stored ones: mochi's index used to
// deliver the stored ones only.
func TestBroker_LiveDeviceStatusMatchesPlusThenHash(t *testing.T) {
	b, _ := openBroker(t, Options{}, nil)
	var in inbox
	c := dial(t, b, "sub-plus-hash")
	require.EqualValues(t, 1, subscribe(t, c, "flota/status/devices/+/#", 1, in.paho))
	waitDeliveries(t, b)

	topic := protocol.DeviceStatusTopic(deviceID(7))
	require.NoError(t, b.Publish(topic, []byte(`{"online":true}`), true, 1))
	in.waitTopic(t, topic)
}

// rawClient is a minimal MQTT client made of mochi's packet codec, for what
// paho cannot do: MQTT 5 subscription options, and withholding PUBACKs.
type rawClient struct {
	t       testing.TB
	conn    net.Conn
	version byte

	wmu sync.Mutex // guards writes to conn

	autoAck atomic.Bool // PUBACK every QoS 1 PUBLISH as it arrives

	mu   sync.Mutex       // guards pkts and err
	pkts []packets.Packet // every packet received after the CONNACK
	err  error            // why reading ended
	done chan struct{}    // closed when reading ends
}

// dialRaw connects a rawClient speaking MQTT version (4: 3.1.1, or 5) and
// starts reading.
func dialRaw(t testing.TB, b *Broker, id string, version byte) *rawClient {
	t.Helper()
	c, r := connectRaw(t, b, id, version)
	t.Cleanup(func() { _ = c.conn.Close(); <-c.done })
	go c.readLoop(r)
	return c
}

// connectRaw connects a rawClient and reads the CONNACK; what follows is for
// the caller to read from the returned reader.
func connectRaw(t testing.TB, b *Broker, id string, version byte) (*rawClient, *bufio.Reader) {
	t.Helper()
	return connectRawWith(t, b, packets.ConnectParams{Clean: true, ClientIdentifier: id}, version)
}

// connectRawWith is connectRaw with the CONNECT's parameters (protocol name
// and keepalive filled in).
func connectRawWith(t testing.TB, b *Broker, params packets.ConnectParams, version byte) (*rawClient, *bufio.Reader) {
	t.Helper()
	conn, err := net.Dial("tcp", b.Addr())
	require.NoError(t, err)
	c := &rawClient{t: t, conn: conn, version: version, done: make(chan struct{})}
	t.Cleanup(func() { _ = conn.Close() })
	params.ProtocolName, params.Keepalive = []byte("MQTT"), 60
	c.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, Connect: params})
	r := bufio.NewReader(conn)
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(waitFor)))
	ack, err := c.read(r)
	require.NoError(t, err)
	require.Equal(t, packets.Connack, ack.FixedHeader.Type)
	require.Zero(t, ack.ReasonCode, "connack")
	require.NoError(t, conn.SetReadDeadline(time.Time{}))
	return c, r
}

func (c *rawClient) send(pk packets.Packet) {
	c.t.Helper()
	pk.ProtocolVersion = c.version
	var buf bytes.Buffer
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectEncode(&buf)
	case packets.Subscribe:
		pk.FixedHeader.Qos = 1 // the fixed header flags of SUBSCRIBE and UNSUBSCRIBE
		err = pk.SubscribeEncode(&buf)
	case packets.Unsubscribe:
		pk.FixedHeader.Qos = 1
		err = pk.UnsubscribeEncode(&buf)
	case packets.Puback:
		err = pk.PubackEncode(&buf)
	case packets.Publish:
		err = pk.PublishEncode(&buf)
	}
	require.NoError(c.t, err)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_, err = c.conn.Write(buf.Bytes())
	require.NoError(c.t, err)
}

func (c *rawClient) read(r *bufio.Reader) (packets.Packet, error) {
	hb, err := r.ReadByte()
	if err != nil {
		return packets.Packet{}, err
	}
	pk := packets.Packet{ProtocolVersion: c.version}
	if err := pk.FixedHeader.Decode(hb); err != nil {
		return pk, err
	}
	n, _, err := packets.DecodeLength(r)
	if err != nil {
		return pk, err
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return pk, err
	}
	switch pk.FixedHeader.Type {
	case packets.Connack:
		err = pk.ConnackDecode(body)
	case packets.Publish:
		err = pk.PublishDecode(body)
	case packets.Suback:
		err = pk.SubackDecode(body)
	case packets.Unsuback:
		err = pk.UnsubackDecode(body)
	}
	return pk, err
}

func (c *rawClient) readLoop(r *bufio.Reader) {
	defer close(c.done)
	for {
		pk, err := c.read(r)
		if err != nil {
			c.mu.Lock()
			c.err = err
			c.mu.Unlock()
			return
		}
		if pk.FixedHeader.Type == packets.Publish && pk.FixedHeader.Qos == 1 && c.autoAck.Load() {
			c.puback(pk.PacketID)
		}
		c.mu.Lock()
		c.pkts = append(c.pkts, pk)
		c.mu.Unlock()
	}
}

// puback acknowledges a QoS 1 PUBLISH; it may run on the read goroutine.
func (c *rawClient) puback(id uint16) {
	var buf bytes.Buffer
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: id, ProtocolVersion: c.version}
	_ = pk.PubackEncode(&buf)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_, _ = c.conn.Write(buf.Bytes()) // fails only once the test closed the connection
}

func (c *rawClient) received() []packets.Packet {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]packets.Packet(nil), c.pkts...)
}

// publishes returns the PUBLISH packets received.
func (c *rawClient) publishes() []packets.Packet {
	var out []packets.Packet
	for _, pk := range c.received() {
		if pk.FixedHeader.Type == packets.Publish {
			out = append(out, pk)
		}
	}
	return out
}

// subscribe sends a SUBSCRIBE with packet ID id and waits for its SUBACK;
// it returns the reason codes.
func (c *rawClient) subscribe(id uint16, props packets.Properties, subs ...packets.Subscription) []byte {
	c.t.Helper()
	c.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe}, PacketID: id, Filters: subs, Properties: props})
	return c.waitAck(packets.Suback, id).ReasonCodes
}

// waitAck waits for the SUBACK or UNSUBACK with packet ID id.
func (c *rawClient) waitAck(typ byte, id uint16) packets.Packet {
	c.t.Helper()
	var ack packets.Packet
	require.Eventually(c.t, func() bool {
		for _, pk := range c.received() {
			if pk.FixedHeader.Type == typ && pk.PacketID == id {
				ack = pk
				return true
			}
		}
		return false
	}, waitFor, tick, "no ack %d for packet %d", typ, id)
	return ack
}

// stalledDelivery stores manyStatuses statuses, subscribes a client that
// acknowledges nothing to them at QoS 1, and waits until the delivery has
// sent a window and waits for acknowledgements. It returns the stored
// statuses, the client, its connection in the broker and the window.
func stalledDelivery(t *testing.T, b *Broker) (map[string]string, *rawClient, *mqtt.Client, int) {
	t.Helper()
	want := storeStatuses(t, b, manyStatuses, 0)
	c := dialRaw(t, b, "mon-raw", 4)
	cl := serverClient(t, b, "mon-raw")
	window := b.statusWindow(cl)
	require.Less(t, window, manyStatuses)

	codes := c.subscribe(1, packets.Properties{}, packets.Subscription{Filter: protocol.StatusFilter, Qos: 1})
	require.Equal(t, []byte{1}, codes)
	assert.Equal(t, packets.Suback, c.received()[0].FixedHeader.Type, "the SUBACK comes before the statuses")
	waitUntil(t, waitFor, func() bool { return deliveryWaitsForAcks(b, cl) && len(c.publishes()) == window },
		func() any { return fmt.Sprintf("%d received, window %d", len(c.publishes()), window) })
	return want, c, cl, window
}

// TestBroker_StoredStatusesWaitForAcks checks that a QoS 1 delivery keeps
// at most its window of statuses unacknowledged and waits for PUBACKs
// instead of dropping, and that every status arrives once acked.
func TestBroker_StoredStatusesWaitForAcks(t *testing.T) {
	b, _ := openBroker(t, Options{}, nil)
	want, c, cl, window := stalledDelivery(t, b)
	assert.Equal(t, window, cl.State.Inflight.Len())

	c.autoAck.Store(true)
	for _, pk := range c.publishes() {
		c.puback(pk.PacketID)
	}
	waitUntil(t, 4*waitFor, func() bool { return len(c.publishes()) == manyStatuses },
		func() any { return fmt.Sprintf("%d of %d received", len(c.publishes()), manyStatuses) })
	got := make(map[string]string, manyStatuses)
	for _, pk := range c.publishes() {
		assert.True(t, pk.FixedHeader.Retain)
		assert.EqualValues(t, 1, pk.FixedHeader.Qos)
		got[pk.TopicName] = string(pk.Payload)
	}
	assert.Equal(t, want, got)
	waitDeliveries(t, b)
	require.Eventually(t, func() bool { return cl.State.Inflight.Len() == 0 }, waitFor, tick)
	assert.Zero(t, b.Stats().MessagesDropped)
}

// TestBroker_StoredStatusChangesDuringDelivery changes statuses while a QoS
// 1 delivery waits for acknowledgements: one already sent, one removed after
// it was sent, one not sent yet. The client must end with every current
// status and never get a replaced one after its replacement.
func TestBroker_StoredStatusChangesDuringDelivery(t *testing.T) {
	b, _ := openBroker(t, Options{}, nil)
	want, c, _, window := stalledDelivery(t, b)

	sent, removed, later := protocol.DeviceStatusTopic(deviceID(5)), protocol.DeviceStatusTopic(deviceID(6)),
		protocol.DeviceStatusTopic(deviceID(manyStatuses-5))
	require.NoError(t, b.Publish(sent, []byte("replaced after it was sent"), true, 1))
	require.NoError(t, b.Publish(removed, nil, true, 1))
	require.NoError(t, b.Publish(later, []byte("replaced before its turn"), true, 1))
	want[sent], want[later] = "replaced after it was sent", "replaced before its turn"
	delete(want, removed)
	require.Eventually(t, func() bool { return len(c.publishes()) == window+3 }, waitFor, tick, "the live copies")

	c.autoAck.Store(true)
	for _, pk := range c.publishes() {
		c.puback(pk.PacketID)
	}
	waitDeliveries(t, b)

	byTopic := map[string][]packets.Packet{}
	for _, pk := range c.publishes() {
		byTopic[pk.TopicName] = append(byTopic[pk.TopicName], pk)
	}
	for topic, payload := range want {
		got := byTopic[topic]
		require.NotEmpty(t, got, topic)
		assert.Equal(t, payload, string(got[len(got)-1].Payload), "%s: the last message is the current status", topic)
	}
	require.NotEmpty(t, byTopic[removed])
	assert.Empty(t, byTopic[removed][len(byTopic[removed])-1].Payload, "the last message of a removed status removes it")

	assert.Len(t, byTopic[later], 1, "a status replaced before its turn comes once, live")
	assert.False(t, byTopic[later][0].FixedHeader.Retain)
	last := byTopic[sent][len(byTopic[sent])-1]
	assert.True(t, last.FixedHeader.Retain, "a status replaced after it was sent is sent again once acknowledged")
	assert.Len(t, byTopic[sent], 3, "the old one, the live one, the stored one again")
}

// TestBroker_StoredStatusDeliveryEnds checks that a delivery ends, and its
// goroutine with it, when the client unsubscribes or disconnects while the
// delivery waits for acknowledgements or for the socket.
func TestBroker_StoredStatusDeliveryEnds(t *testing.T) {
	b, _ := openBroker(t, Options{}, nil)
	storeStatuses(t, b, manyStatuses, 1024) // 20 MB: more than the socket buffers hold
	sub := packets.Subscription{Filter: protocol.StatusFilter, Qos: 1}

	t.Run("unsubscribed while waiting for acks", func(t *testing.T) {
		c := dialRaw(t, b, "mon-unsub", 4)
		cl := serverClient(t, b, "mon-unsub")
		c.subscribe(1, packets.Properties{}, sub)
		require.Eventually(t, func() bool { return deliveryWaitsForAcks(b, cl) }, waitFor, tick)
		c.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Unsubscribe}, PacketID: 2,
			Filters: packets.Subscriptions{{Filter: sub.Filter}}})
		c.waitAck(packets.Unsuback, 2)
		waitDeliveries(t, b)
	})

	for _, tc := range []struct {
		name string
		qos  byte // 1: waits for acks; 0: the client reads nothing, the socket fills
	}{{"disconnected while waiting for acks", 1}, {"disconnected while the socket is full", 0}} {
		t.Run(tc.name, func(t *testing.T) {
			require.Eventually(t, func() bool { return b.Connected() == 0 }, waitFor, tick)
			before := runtime.NumGoroutine()
			c := dialRaw(t, b, "mon-gone", 4)
			cl := serverClient(t, b, "mon-gone")
			if tc.qos == 0 {
				// Stop reading (the read loop ends) with the connection open.
				require.NoError(t, c.conn.SetReadDeadline(time.Now().Add(waitFor)))
				c.subscribe(1, packets.Properties{}, packets.Subscription{Filter: sub.Filter})
				require.NoError(t, c.conn.SetReadDeadline(time.Now()))
				<-c.done
				require.Eventually(t, func() bool { return atomic.LoadInt64(&b.srv.Info.BytesSent) > 1<<20 },
					waitFor, tick, "the delivery never started writing")
			} else {
				c.subscribe(1, packets.Properties{}, sub)
				require.Eventually(t, func() bool { return deliveryWaitsForAcks(b, cl) }, waitFor, tick)
			}
			require.EqualValues(t, 1, b.feedCount.Load(), "the delivery is still running")
			require.NoError(t, c.conn.Close())
			waitDeliveries(t, b)
			// Polled here: require.Eventually runs its condition on a
			// goroutine of its own.
			for deadline := time.Now().Add(waitFor); runtime.NumGoroutine() > before && time.Now().Before(deadline); {
				time.Sleep(tick)
			}
			require.LessOrEqual(t, runtime.NumGoroutine(), before, "goroutines left behind")
		})
	}
}

// TestBroker_StoredStatusRetainHandling speaks MQTT 5 to check retain
// handling 0, 1 and 2 and subscription identifiers.
func TestBroker_StoredStatusRetainHandling(t *testing.T) {
	b, _ := openBroker(t, Options{}, nil)
	want := storeStatuses(t, b, 3, 0)
	c := dialRaw(t, b, "mon-v5", 5)
	c.autoAck.Store(true)
	marker := protocol.UpdateEventsTopic("marker")
	require.Equal(t, []byte{0}, c.subscribe(1, packets.Properties{}, packets.Subscription{Filter: marker}))

	// retainedSince returns the topics of the retained messages received
	// after the n-th packet; a live marker ends them.
	retainedSince := func(n int, subID int) []string {
		t.Helper()
		waitDeliveries(t, b)
		require.NoError(t, b.Publish(marker, []byte("m"), false, 0))
		var topics []string
		require.Eventually(t, func() bool {
			topics = nil
			for _, pk := range c.received()[n:] {
				if pk.FixedHeader.Type != packets.Publish {
					continue
				}
				if pk.TopicName == marker {
					return true
				}
				assert.True(t, pk.FixedHeader.Retain)
				assert.Equal(t, want[pk.TopicName], string(pk.Payload))
				assert.Equal(t, []int{subID}, pk.Properties.SubscriptionIdentifier)
				topics = append(topics, pk.TopicName)
			}
			return false
		}, waitFor, tick)
		return topics
	}
	all := []string{protocol.DeviceStatusTopic(deviceID(0)), protocol.DeviceStatusTopic(deviceID(1)), protocol.DeviceStatusTopic(deviceID(2))}

	for i, tc := range []struct {
		name     string
		filter   string
		handling byte
		want     []string
	}{
		{"0 sends", "flota/status/devices/+", 0, all},
		{"0 sends again", "flota/status/devices/+", 0, all},
		{"1 sends to a new subscription", "flota/status/devices/#", 1, all},
		{"1 does not send to an existing one", "flota/status/devices/#", 1, nil},
		{"2 never sends", "flota/status/#", 2, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := len(c.received())
			id := uint16(10 + i)
			codes := c.subscribe(id, packets.Properties{SubscriptionIdentifier: []int{int(id)}},
				packets.Subscription{Filter: tc.filter, Qos: 1, RetainHandling: tc.handling})
			require.Equal(t, []byte{1}, codes)
			assert.Equal(t, tc.want, retainedSince(n, int(id)))
		})
	}
}

// TestBroker_StoredStatusesFollowTheACL checks that a refused subscription
// gets no stored status, and that each delivery asks the ACL.
func TestBroker_StoredStatusesFollowTheACL(t *testing.T) {
	b, _ := openBroker(t, Options{Authenticate: monitorAuth}, nil)
	storeStatuses(t, b, 3, 0)

	var in inbox
	d := dial(t, b, "dev-A")
	require.EqualValues(t, subackFailure, subscribe(t, d, "flota/+/devices/#", 1, in.paho),
		"a filter outside the read trees is refused, even if it matches statuses")
	assert.Zero(t, b.feedCount.Load(), "no delivery for a refused subscription")

	// Every role may read the whole status tree; what the ACL refuses a
	// delivery must not send: here another device's down topic.
	srvSide, cliSide := net.Pipe()
	defer srvSide.Close()
	defer cliSide.Close()
	cl := b.srv.NewClient(srvSide, listenerID, "dev-B", false)
	b.clients.set(cl, &clientState{role: fleet.RoleDevice})
	f := &feed{cl: cl, gone: make(chan struct{})}
	dl := &delivery{stop: make(chan struct{})} // QoS 0
	read := make(chan packets.Packet, 2)
	go func() {
		c := &rawClient{version: 4}
		r := bufio.NewReader(cliSide)
		for {
			pk, err := c.read(r)
			if err != nil {
				return
			}
			read <- pk
		}
	}()
	denied := b.Stats().ACLDenied
	require.NoError(t, b.writeStatus(f, dl, protocol.DownTopic("dev-A", protocol.KindOffer), []byte("x"), true))
	require.NoError(t, b.writeStatus(f, dl, protocol.DeviceStatusTopic("dev-A"), []byte("s"), true))
	pk := <-read // the first packet written
	assert.Equal(t, protocol.DeviceStatusTopic("dev-A"), pk.TopicName)
	assert.Equal(t, denied+1, b.Stats().ACLDenied)
}

func TestBroker_InlineSubscriberGetsStoredStatuses(t *testing.T) {
	b, _ := openBroker(t, Options{}, nil)
	want := storeStatuses(t, b, 3, 0)
	require.NoError(t, b.Publish(protocol.UpdateStatusTopic("u1"), []byte(`{"state":"running"}`), true, 1))
	want[protocol.UpdateStatusTopic("u1")] = `{"state":"running"}`

	var in inbox
	require.NoError(t, b.Subscribe(protocol.StatusFilter, in.inline))
	got := map[string]string{}
	for _, m := range in.all() {
		got[m.topic] = m.payload
	}
	assert.Equal(t, want, got, "at once, before Subscribe returns")

	var one inbox
	require.NoError(t, b.Subscribe(protocol.DeviceStatusTopic(deviceID(1)), one.inline))
	assert.Equal(t, []string{protocol.DeviceStatusTopic(deviceID(1))}, one.topics())
}

func TestStatusStore_Replay(t *testing.T) {
	const a, c = "flota/status/devices/a", "flota/status/devices/c"
	type sent struct {
		topic, payload string
		retained       bool
	}
	for _, tc := range []struct {
		name   string
		during func(s *statusStore, n int) // runs inside the n-th send
		want   []sent
	}{
		{"current", nil, []sent{{a, "a1", true}, {c, "c1", true}}},
		{"replaced while sent", func(s *statusStore, n int) {
			if n == 0 {
				s.put(a, []byte("a2"))
			}
		}, []sent{{a, "a1", true}, {a, "a2", true}, {c, "c1", true}}},
		{"removed while sent", func(s *statusStore, n int) {
			if n == 0 {
				s.put(a, nil)
			}
		}, []sent{{a, "a1", true}, {a, "", false}, {c, "c1", true}}},
		{"replaced before its turn", func(s *statusStore, n int) {
			if n == 0 {
				s.put(c, []byte("c2"))
			}
		}, []sent{{a, "a1", true}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var s statusStore
			s.put(a, []byte("a1"))
			s.put(c, []byte("c1"))
			entries := s.match("flota/status/devices/+")
			sortStatuses(entries)
			var got []sent
			err := s.replay(entries, func(topic string, payload []byte, retained bool) error {
				if tc.during != nil {
					tc.during(&s, len(got))
				}
				got = append(got, sent{topic, string(payload), retained})
				return nil
			})
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestStatusStore_PayloadCopied(t *testing.T) {
	var s statusStore
	p := []byte("first")
	s.put("flota/status/devices/a", p)
	copy(p, "XXXXX")
	got, _ := s.get("flota/status/devices/a")
	assert.Equal(t, "first", got)
}

func TestStatusStore_ChangeAllocatesOnlyThePayload(t *testing.T) {
	var s statusStore
	topic := protocol.DeviceStatusTopic("dev-000042")
	s.put(topic, []byte("first"))
	before := s.match(topic)

	payload := []byte(`{"device":"dev-000042","state":"downloading","offset":262144}`)
	allocs := testing.AllocsPerRun(100, func() { s.put(topic, payload) })
	assert.Equal(t, 1.0, allocs)

	// A snapshot taken before the change still holds what it saw.
	require.Len(t, before, 1)
	assert.Equal(t, storedStatus{topic, "first"}, before[0])
	got, ok := s.get(topic)
	assert.True(t, ok)
	assert.Equal(t, string(payload), got)
	assert.Equal(t, []storedStatus{{topic, string(payload)}}, s.match("flota/status/devices/+"))
	assert.Equal(t, 1, s.len())
}

func TestWantsStoredStatuses(t *testing.T) {
	for _, tc := range []struct {
		sub  packets.Subscription
		want bool
	}{
		{packets.Subscription{Filter: "flota/status/#"}, true},
		{packets.Subscription{Filter: "flota/status/devices/a", RetainHandling: 1}, true},
		{packets.Subscription{Filter: "flota/status/#", RetainHandling: 2}, false},
		{packets.Subscription{Filter: "$share/g/flota/status/#"}, false},
		{packets.Subscription{Filter: "flota/status/updates/#"}, false},
		{packets.Subscription{Filter: "flota/status/devices"}, false},
		{packets.Subscription{Filter: "flota/events/#"}, false},
		{packets.Subscription{Filter: "#"}, true},
		{packets.Subscription{Filter: "+/+/+/+"}, true},
		{packets.Subscription{Filter: "+/+/+"}, false},
	} {
		assert.Equal(t, tc.want, wantsStoredStatuses(tc.sub), "%+v", tc.sub)
	}
}

// FuzzMatchTopic compares protocol.MatchTopic, which selects the stored
// statuses a subscription gets, with mochi's own topic index, and checks that
// mayMatchDeviceStatus never misses a filter that matches a status topic.
func FuzzMatchTopic(f *testing.F) {
	for _, s := range [][2]string{
		{"flota/status/#", "flota/status/devices/a"},
		{"flota/+/devices/+", "flota/status/devices/a"},
		{"#", "$SYS/x"},
		{"a/+/#", "a/b"},
		{"+/+", "a/"},
		{"a/#", "a"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, filter, topic string) {
		if topic == "" || !mqtt.IsValidFilter(filter, false) || !mqtt.IsValidFilter(topic, true) || mqtt.IsSharedFilter(filter) {
			return
		}
		idx := mqtt.NewTopicsIndex()
		idx.Subscribe("c", packets.Subscription{Filter: filter})
		_, mochi := idx.Subscribers(topic).Subscriptions["c"]
		got := protocol.MatchTopic(filter, topic)
		if got != mochi {
			t.Fatalf("MatchTopic(%q, %q) = %v, mochi says %v", filter, topic, got, mochi)
		}
		if got && strings.HasPrefix(topic, deviceStatusPrefix) && !mayMatchDeviceStatus(filter) {
			t.Fatalf("mayMatchDeviceStatus(%q) = false, but it matches %q", filter, topic)
		}
	})
}

// BenchmarkStatusStore_Put measures storing a device's status in a store
// holding 10,000 (the engine's 178-byte payload), the topic already there:
// what every status change of a rollout costs the store.
func BenchmarkStatusStore_Put(b *testing.B) {
	const devices = 10000
	var s statusStore
	topics := make([]string, devices)
	for i := range topics {
		topics[i] = protocol.DeviceStatusTopic(fmt.Sprintf("dev-%06d", i))
	}
	payload := fmt.Appendf(nil, `{"device":"dev-000000","update":"upd-3f9a1c0b7e21","state":"downloading",`+
		`"offset":262144,"size":262144,"attempt":1,"target_version":"1.5.0","time":%q}`,
		time.Date(2025, 3, 1, 12, 0, 5, 123456789, time.UTC).Format(time.RFC3339Nano))
	for _, topic := range topics {
		s.put(topic, payload)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s.put(topics[i%devices], payload)
	}
	b.StopTimer()
	b.ReportMetric(float64(len(payload)), "payload-B")
}

// BenchmarkDeviceStatusStore_100k measures the live heap that 100,000
// retained device statuses cost (each device's status published twice, as
// a rollout would): in the broker's own store (Broker.Publish), and in
// mochi's retained store (server.Publish with retain, which is what
// Broker.Publish did before), with the bytes mochi allocates each second to
// copy its retained map (clearExpiredRetainedMessages). Each publish builds
// its topic, as the engine does, so that a store keeping the caller's topic
// string has it counted. Run it with -benchtime 1x.
func BenchmarkDeviceStatusStore_100k(b *testing.B) {
	const devices = 100000
	for _, tc := range []struct {
		name    string
		publish func(br *Broker, topic string, payload []byte) error
	}{
		{"broker", func(br *Broker, topic string, payload []byte) error { return br.Publish(topic, payload, true, 1) }},
		{"mochi", func(br *Broker, topic string, payload []byte) error { return br.srv.Publish(topic, payload, true, 1) }},
	} {
		b.Run(tc.name, func(b *testing.B) {
			for range b.N {
				br := New(Options{Addr: "127.0.0.1:0"})
				require.NoError(b, br.Open())
				ids := make([]string, devices)
				for i := range ids {
					ids[i] = fmt.Sprintf("dev-%06d", i)
				}
				var m0, m1 runtime.MemStats
				runtime.GC()
				runtime.ReadMemStats(&m0)
				var buf []byte
				for _, state := range []string{"downloading", "succeeded"} {
					for i, id := range ids {
						topic := protocol.DeviceStatusTopic(id)
						buf = fmt.Appendf(buf[:0], `{"device":"dev-%06d","update":"upd-3f9a1c0b7e21","state":%q,`+
							`"offset":262144,"size":262144,"attempt":1,"target_version":"1.5.0","time":%q}`,
							i, state, time.Date(2025, 3, 1, 12, 0, 5, 123456789, time.UTC).Format(time.RFC3339Nano))
						if err := tc.publish(br, topic, buf); err != nil {
							b.Fatal(err)
						}
					}
				}
				runtime.GC()
				runtime.ReadMemStats(&m1)
				b.ReportMetric(float64(int64(m1.HeapAlloc)-int64(m0.HeapAlloc))/devices, "heap-B/device")
				b.ReportMetric(float64(len(buf)), "payload-B")

				// What mochi allocates every second to look for expired
				// retained messages.
				runtime.ReadMemStats(&m0)
				copied := br.srv.Topics.Retained.GetAll()
				runtime.ReadMemStats(&m1)
				b.ReportMetric(float64(m1.TotalAlloc-m0.TotalAlloc), "retained-copy-B/s")
				runtime.KeepAlive(copied)
				runtime.KeepAlive(ids)
				require.NoError(b, br.Close())
			}
		})
	}
}
