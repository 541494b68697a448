package broker

import (
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/protocol"
)

// TestBroker_QoS1MonitorReceivesEveryEventOfABurst publishes a burst of
// events many times a client's queue in a tight loop, as the engine does
// when the store commits a batch: a monitor subscribed at QoS 1 gets all.
func TestBroker_QoS1MonitorReceivesEveryEventOfABurst(t *testing.T) {
	const burst = 5000
	b, _ := openBroker(t, Options{Authenticate: monitorAuth}, nil)
	var mu sync.Mutex // guards got
	got := map[string]bool{}
	mon := paho.NewClient(clientOptions(b, "mon-1").SetUsername("monitor"))
	tok := mon.Connect()
	require.True(t, tok.WaitTimeout(waitFor) && tok.Error() == nil, "monitor connects: %v", tok.Error())
	t.Cleanup(func() { mon.Disconnect(0) })
	subscribe(t, mon, protocol.EventsRoot+"#", 1, func(_ paho.Client, m paho.Message) {
		mu.Lock()
		got[string(m.Payload())] = true
		mu.Unlock()
	})

	topic := protocol.UpdateEventsTopic("u-1")
	for i := range burst {
		require.NoError(t, b.Publish(topic, fmt.Appendf(nil, `{"seq":%d}`, i+1), false, 1))
	}
	waitUntil(t, waitFor, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) == burst
	}, func() any {
		mu.Lock()
		defer mu.Unlock()
		return fmt.Sprintf("%d of %d events, %+v", len(got), burst, b.Stats())
	})
	require.Zero(t, b.Stats().MessagesDropped)
	require.Zero(t, b.Stats().SlowMonitors)
}

// TestBroker_MonitorThatStopsReadingIsDisconnectedNotWaitedFor subscribes a
// monitor at QoS 1 that never reads: publishing goes on after its stall
// budget, and the monitor is disconnected and counted, so that it knows it
// missed events.
func TestBroker_MonitorThatStopsReadingIsDisconnectedNotWaitedFor(t *testing.T) {
	b, logs := openBroker(t, Options{Authenticate: monitorAuth, MonitorStall: 100 * time.Millisecond}, nil)
	c, r := connectRawWith(t, b, packets.ConnectParams{Clean: true, ClientIdentifier: "mon-stuck",
		UsernameFlag: true, Username: []byte("monitor")}, 4)
	c.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: protocol.EventsRoot + "#", Qos: 1}}})
	ack, err := c.read(r)
	require.NoError(t, err)
	require.Equal(t, []byte{1}, ack.ReasonCodes, "suback")

	// Enough to fill the socket buffers, the queue and then some; every
	// Publish returns.
	payload := make([]byte, 4096)
	topic := protocol.UpdateEventsTopic("u-1")
	for range 20000 {
		require.NoError(t, b.Publish(topic, payload, false, 1))
		if b.Stats().SlowMonitors > 0 {
			break
		}
	}
	waitUntil(t, waitFor, func() bool { return b.Stats().SlowMonitors == 1 }, func() any { return b.Stats() })
	require.Eventually(t, func() bool {
		return logs.has("monitor disconnected: too slow for its QoS 1 events; it catches up from the event log")
	}, waitFor, tick, "the disconnection is logged")
	// The connection ends: what was written before is read, then EOF.
	_, err = io.Copy(io.Discard, r)
	require.NoError(t, err)
	close(c.done)
}
