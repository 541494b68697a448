package broker

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	pahopackets "github.com/eclipse/paho.mqtt.golang/packets"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/auth"
	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
	"github.com/flotaio/flota/internal/testtool"
)

const subackFailure = 0x80

func TestBroker_OpenReportsBoundAddress(t *testing.T) {
	b, _ := openBroker(t, Options{}, nil)
	assert.NotEqual(t, "127.0.0.1:0", b.Addr())
	assert.True(t, strings.HasPrefix(b.Addr(), "127.0.0.1:"))
	assert.Equal(t, 256, int(b.srv.Options.Capabilities.MaximumClientWritesPending))
	assert.Zero(t, b.srv.Options.Capabilities.MaximumMessageExpiryInterval)

	require.NoError(t, b.Close())
	require.NoError(t, b.Close(), "Close is idempotent")
	assert.ErrorIs(t, b.Publish("flota/events/x", nil, false, 0), fleet.ErrClosed)
	assert.ErrorIs(t, b.Open(), fleet.ErrClosed)
}

func TestBroker_OpenFailsOnBusyAddress(t *testing.T) {
	b1, _ := openBroker(t, Options{}, nil)
	b2 := New(Options{Addr: b1.Addr()})
	require.Error(t, b2.Open())
	require.NoError(t, b2.Close())
}

func TestBroker_QueueSizedToWindow(t *testing.T) {
	for _, tc := range []struct{ window, want int }{
		{0, 256}, {8, 256}, {64, 320}, {100000, 65535},
	} {
		b := New(Options{Window: tc.window})
		assert.Equal(t, tc.want, int(b.srv.Options.Capabilities.MaximumClientWritesPending), "window %d", tc.window)
		assert.Equal(t, max(tc.want, minInflight), int(b.srv.Options.Capabilities.MaximumInflight), "window %d", tc.window)
	}
}

func TestBroker_DeviceReceivesOnlyItsOwnDownTopic(t *testing.T) {
	b, _ := openBroker(t, Options{}, nil)
	var inA, inB inbox
	a := dial(t, b, "dev-A")
	bb := dial(t, b, "dev-B")
	require.EqualValues(t, 1, subscribe(t, a, protocol.DownFilter("dev-A"), 1, inA.paho))
	require.EqualValues(t, 1, subscribe(t, bb, protocol.DownFilter("dev-B"), 1, inB.paho))
	assert.EqualValues(t, subackFailure, subscribe(t, a, protocol.DownFilter("dev-B"), 1, inA.paho),
		"a device may not subscribe to another device's down topic")

	// B's message is queued before A's: had A been given it, it would arrive first.
	require.NoError(t, b.Publish(protocol.DownTopic("dev-B", protocol.KindOffer), []byte("for B"), false, 1))
	require.NoError(t, b.Publish(protocol.DownTopic("dev-A", protocol.KindOffer), []byte("for A"), false, 1))

	got := inA.waitTopic(t, protocol.DownTopic("dev-A", protocol.KindOffer))
	assert.Equal(t, "for A", got.payload)
	inB.waitTopic(t, protocol.DownTopic("dev-B", protocol.KindOffer))
	assert.Len(t, inA.all(), 1)
	assert.Len(t, inB.all(), 1)
}

func TestBroker_DevicePublishConfinedToOwnUpTopic(t *testing.T) {
	b, _ := openBroker(t, Options{}, nil)
	var up inbox
	require.NoError(t, b.Subscribe(protocol.UpFilter, up.inline))
	a := dial(t, b, "dev-A")

	// Processed in order on A's connection: the forged report comes first.
	publish(t, a, protocol.UpTopic("dev-B", protocol.KindReport), 0, false, "forged")
	publish(t, a, "flota/devices/dev-A/up", 0, false, "no kind level")
	publish(t, a, protocol.UpTopic("dev-A", protocol.KindReport), 0, false, "mine")

	got := up.waitTopic(t, protocol.UpTopic("dev-A", protocol.KindReport))
	assert.Equal(t, "mine", got.payload)
	assert.Equal(t, []string{protocol.UpTopic("dev-A", protocol.KindReport)}, up.topics())
	assert.EqualValues(t, 2, b.Stats().ACLDenied)

	t.Run("QoS1 to a foreign topic disconnects an MQTT 3.1.1 client", func(t *testing.T) {
		a.Publish(protocol.UpTopic("dev-B", protocol.KindReport), 1, false, "forged")
		require.Eventually(t, func() bool { return !b.Online("dev-A") }, waitFor, tick)
		assert.Equal(t, []string{protocol.UpTopic("dev-A", protocol.KindReport)}, up.topics())
	})
}

func TestBroker_SubscriptionFiltersConfined(t *testing.T) {
	b, _ := openBroker(t, Options{}, nil)
	c := dial(t, b, "dev-A")
	var in inbox
	for _, tc := range []struct {
		filter  string
		allowed bool
	}{
		{"flota/devices/dev-A/down/#", true},
		{"flota/devices/dev-A/down/+", true},
		{"flota/events/#", true},
		{"flota/status/#", true},
		{"flota/events/updates/+", true},
		{"flota/status/devices/dev-A", true},
		{"flota/devices/+/down/#", false},
		{"flota/devices/dev-B/down/#", false},
		{"flota/devices/dev-A/up/#", false},
		{"flota/devices/+/up/#", false},
		{"flota/devices/#", false},
		{"flota/+/updates/x", false},
		{"flota/#", false},
		{"#", false},
		{"+/#", false},
		{"$SYS/#", false},
	} {
		code := subscribe(t, c, tc.filter, 1, in.paho)
		if tc.allowed {
			assert.EqualValues(t, 1, code, "filter %s", tc.filter)
		} else {
			assert.EqualValues(t, subackFailure, code, "filter %s", tc.filter)
		}
	}
	assert.True(t, b.Online("dev-A"), "a refused subscription does not disconnect")
}

func TestBroker_InvalidClientIDRefused(t *testing.T) {
	b, _ := openBroker(t, Options{}, nil)
	for _, id := range []string{"inline", "a b", strings.Repeat("x", 65), "dev/1", "dev+", "dév"} {
		_, err := tryDial(t, clientOptions(b, id))
		assert.ErrorIs(t, err, pahopackets.ErrorRefusedIDRejected, "client ID %q", id)
	}
	assert.EqualValues(t, 6, b.Stats().AuthRefused)
	assert.Zero(t, b.Connected())

	_, err := tryDial(t, clientOptions(b, strings.Repeat("x", 64)))
	assert.NoError(t, err, "64 characters is the limit")
}

func TestBroker_AuthenticatorConsulted(t *testing.T) {
	b, _ := openBroker(t, Options{Authenticate: func(_ context.Context, c auth.Connect) (fleet.Role, error) {
		if c.Username == "dev" && string(c.Password) == "secret-"+c.ClientID {
			return fleet.RoleDevice, nil
		}
		return "", auth.ErrBadSecret
	}}, nil)

	_, err := tryDial(t, clientOptions(b, "dev-1").SetUsername("dev").SetPassword("secret-dev-1"))
	require.NoError(t, err)
	_, err = tryDial(t, clientOptions(b, "dev-2").SetUsername("dev").SetPassword("secret-dev-1"))
	assert.ErrorIs(t, err, pahopackets.ErrorRefusedNotAuthorised)
	assert.EqualValues(t, 1, b.Stats().AuthRefused)
}

func TestBroker_WillTopicConfined(t *testing.T) {
	b, _ := openBroker(t, Options{}, nil)
	_, err := tryDial(t, clientOptions(b, "dev-1").SetWill(protocol.DeviceStatusTopic("dev-1"), "forged", 1, true))
	assert.ErrorIs(t, err, pahopackets.ErrorRefusedNotAuthorised)

	_, err = tryDial(t, clientOptions(b, "dev-1").SetWill(protocol.UpTopic("dev-1", "gone"), "bye", 1, false))
	assert.ErrorIs(t, err, pahopackets.ErrorRefusedNotAuthorised, "a kind the protocol does not have")

	_, err = tryDial(t, clientOptions(b, "dev-1").SetWill(protocol.UpTopic("dev-1", protocol.KindStatus), `{"v":1,"online":false}`, 1, true))
	assert.NoError(t, err)
	assert.EqualValues(t, 2, b.Stats().AuthRefused)
}

func TestBroker_Presence(t *testing.T) {
	var p presenceLog
	b, _ := openBroker(t, Options{}, p.record)

	c := dial(t, b, "dev-1")
	require.Eventually(t, func() bool { return p.last() == "dev-1 online" }, waitFor, tick)
	assert.True(t, b.Online("dev-1"))
	assert.Equal(t, 1, b.Connected())
	assert.Equal(t, 1, b.Stats().Clients)

	c.Disconnect(50)
	require.Eventually(t, func() bool { return p.last() == "dev-1 offline" }, waitFor, tick)
	assert.False(t, b.Online("dev-1"))
	assert.Zero(t, b.Connected())
	assert.Equal(t, []string{"dev-1 online", "dev-1 offline"}, p.all())
}

func TestBroker_PresenceSurvivesTakeOver(t *testing.T) {
	var p presenceLog
	b, logs := openBroker(t, Options{}, p.record)

	first := dial(t, b, "dev-1")
	require.Eventually(t, func() bool { return p.last() == "dev-1 online" }, waitFor, tick)

	second := dial(t, b, "dev-1")
	require.Eventually(t, func() bool { return !first.IsConnectionOpen() }, waitFor, tick)
	// The first connection's end is processed either after the second
	// session is established (nothing reported) or, rarely, before it
	// (offline, then online): the device ends up online either way.
	require.Eventually(t, func() bool {
		ended := logs.has("taken-over connection ended") || len(p.all()) >= 3
		return ended && p.last() == "dev-1 online"
	}, waitFor, tick, "events %v", p.all())
	assert.True(t, b.Online("dev-1"))
	assert.Equal(t, 1, b.Connected())

	second.Disconnect(50)
	require.Eventually(t, func() bool { return p.last() == "dev-1 offline" }, waitFor, tick)
	assert.False(t, b.Online("dev-1"))
	assert.Zero(t, b.Connected())
}

func TestBroker_PresenceReportedOfflineOnClose(t *testing.T) {
	var p presenceLog
	b, _ := openBroker(t, Options{}, p.record)
	dial(t, b, "dev-1")
	require.Eventually(t, func() bool { return b.Online("dev-1") }, waitFor, tick)

	require.NoError(t, b.Close())
	assert.Equal(t, []string{"dev-1 online", "dev-1 offline"}, p.all(), "Close waits for the connections to end")
}

func TestBroker_MonitorIsReadOnly(t *testing.T) {
	b, _ := openBroker(t, Options{}, nil)
	var seen, mon inbox
	require.NoError(t, b.Subscribe(protocol.EventsFilter, seen.inline))
	require.NoError(t, b.Subscribe(protocol.UpFilter, seen.inline))

	m := dial(t, b, "monitor-1")
	require.EqualValues(t, 1, subscribe(t, m, protocol.EventsFilter, 1, mon.paho))

	event := protocol.UpdateEventsTopic("u1")
	require.NoError(t, b.Publish(event, []byte(`{"v":1}`), false, 1))
	assert.Equal(t, `{"v":1}`, mon.waitTopic(t, event).payload)

	// In order on the monitor's connection: the forged event, then a marker.
	publish(t, m, "flota/events/x", 0, false, "forged")
	publish(t, m, protocol.UpTopic("monitor-1", protocol.KindHello), 0, false, "marker")
	seen.waitTopic(t, protocol.UpTopic("monitor-1", protocol.KindHello))
	assert.Equal(t, []string{event, protocol.UpTopic("monitor-1", protocol.KindHello)}, seen.topics())
	assert.Equal(t, []string{event}, mon.topics())
	assert.EqualValues(t, 1, b.Stats().ACLDenied)
}

func TestBroker_RetainedStatusToLateSubscriber(t *testing.T) {
	b, _ := openBroker(t, Options{}, nil)
	status := protocol.UpdateStatusTopic("u1")
	require.NoError(t, b.Publish(status, []byte(`{"state":"running"}`), true, 1))

	var mon inbox
	m := dial(t, b, "monitor-1")
	require.EqualValues(t, 1, subscribe(t, m, protocol.StatusFilter, 1, mon.paho))
	got := mon.waitTopic(t, status)
	assert.Equal(t, `{"state":"running"}`, got.payload)
	assert.True(t, got.retain)

	var inline inbox
	require.NoError(t, b.Subscribe(protocol.StatusFilter, inline.inline))
	assert.Equal(t, []string{status}, inline.topics(), "an inline subscriber gets retained messages at once")
}

func TestBroker_SubscribeGivesEachCallItsOwnSubscription(t *testing.T) {
	b, _ := openBroker(t, Options{}, nil)
	var one, two inbox
	require.NoError(t, b.Subscribe(protocol.EventsFilter, one.inline))
	require.NoError(t, b.Subscribe(protocol.EventsFilter, two.inline))
	require.NoError(t, b.Publish("flota/events/x", []byte("e"), false, 0))
	assert.Len(t, one.all(), 1)
	assert.Len(t, two.all(), 1)

	require.Error(t, b.Subscribe("flota/#/x", one.inline), "invalid filter")
	require.Error(t, b.Subscribe(protocol.EventsFilter, nil))
}

func TestBroker_SubscribeBeforeOpen(t *testing.T) {
	b := New(Options{Addr: "127.0.0.1:0", Logger: slog.New(slog.DiscardHandler)})
	var up inbox
	require.NoError(t, b.Subscribe(protocol.UpFilter, up.inline))
	require.NoError(t, b.Open())
	t.Cleanup(func() { require.NoError(t, b.Close()) })

	c := dial(t, b, "dev-1")
	publish(t, c, protocol.UpTopic("dev-1", protocol.KindHello), 1, false, "hi")
	assert.Equal(t, "hi", up.waitTopic(t, protocol.UpTopic("dev-1", protocol.KindHello)).payload)
}

func TestBroker_MosquittoSubReceivesEvents(t *testing.T) {
	bin := testtool.Path(t, "mosquitto_sub")
	b, _ := openBroker(t, Options{}, nil)
	host, port, ok := strings.Cut(b.Addr(), ":")
	require.True(t, ok)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out, errOut bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, "-h", host, "-p", port, "-i", "mosq-monitor",
		"-q", "1", "-t", protocol.EventsFilter, "-C", "1", "-v")
	cmd.Stdout, cmd.Stderr = &out, &errOut
	require.NoError(t, cmd.Start())
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() { cancel(); <-done })

	event := protocol.UpdateEventsTopic("u1")
	subscribed := func() bool { return len(b.srv.Topics.Subscribers(event).Subscriptions) > 0 }
	require.Eventually(t, subscribed, waitFor, tick, "mosquitto_sub never subscribed")
	require.NoError(t, b.Publish(event, []byte(`{"v":1,"kind":"started"}`), false, 1))

	// The buffers are read only once the process has exited.
	err := <-done
	done <- err // for the cleanup
	require.NoError(t, err, "mosquitto_sub: %s", errOut.String())
	assert.Equal(t, event+` {"v":1,"kind":"started"}`, strings.TrimSpace(out.String()))
}

// BenchmarkBroker_PublishToDevice measures inline publishes of 16 KiB chunks
// to one paho device at QoS 1, with a window of fleet.DefaultWindow chunks in
// flight as the engine keeps it.
func BenchmarkBroker_PublishToDevice(b *testing.B) {
	const size = fleet.DefaultChunkSize
	br, _ := openBroker(b, Options{}, nil)
	window := make(chan struct{}, fleet.DefaultWindow)
	var received atomic.Int64
	c := dial(b, br, "dev-bench")
	code := subscribe(b, c, protocol.DownFilter("dev-bench"), 1, func(paho.Client, paho.Message) {
		received.Add(1)
		<-window // a slot is always held for a received chunk: never blocks
	})
	require.EqualValues(b, 1, code)

	topic := protocol.DownTopic("dev-bench", protocol.KindChunk)
	payload := bytes.Repeat([]byte{0xA5}, size)
	b.SetBytes(size)
	b.ResetTimer()
	publishThroughWindow(b, br, window, topic, payload, 1)
	b.StopTimer()
	require.EqualValues(b, b.N, received.Load())
	b.ReportMetric(float64(br.Stats().MessagesDropped), "drops")
}

func TestBroker_MonitorThatAcksLateLosesNoEvents(t *testing.T) {
	b, _ := openBroker(t, Options{}, nil)
	var mon inbox
	// A monitor at QoS 1 that never acknowledges: every event stays in its
	// inflight store, well past the client queue's 256.
	c, err := tryDial(t, clientOptions(b, "monitor-1").SetAutoAckDisabled(true))
	require.NoError(t, err)
	require.EqualValues(t, 1, subscribe(t, c, protocol.EventsFilter, 1, mon.paho))

	const batches, batch = 10, 100
	for i := range batches {
		for j := range batch {
			require.NoError(t, b.Publish(protocol.UpdateEventsTopic("u1"), fmt.Appendf(nil, `{"seq":%d}`, i*batch+j), false, 1))
		}
		// One batch on the wire before the next, so that the queue never fills.
		want := (i + 1) * batch
		require.Eventually(t, func() bool { return len(mon.topics()) >= want }, waitFor, 5*time.Millisecond,
			"batch %d: %d of %d events arrived", i, len(mon.topics()), want)
	}
	assert.Len(t, mon.topics(), batches*batch)
	assert.Zero(t, b.Stats().MessagesDropped)
}
