package agent

import (
	"bytes"
	"sync"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
)

// subscribeHook records the QoS of every subscription the broker granted.
type subscribeHook struct {
	mqtt.HookBase
	mu  sync.Mutex // guards qos
	qos map[string][]byte
}

func (h *subscribeHook) ID() string { return "record-subscriptions" }
func (h *subscribeHook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnSubscribed}, []byte{b})
}

func (h *subscribeHook) OnSubscribed(_ *mqtt.Client, pk packets.Packet, _ []byte) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, f := range pk.Filters {
		h.qos[f.Filter] = append(h.qos[f.Filter], f.Qos)
	}
}

func (h *subscribeHook) granted(filter string) []byte {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]byte(nil), h.qos[filter]...)
}

func TestAgent_SubscribeQoS0SubscribesDownTopicsAtQoS0AndUpdates(t *testing.T) {
	for _, tc := range []struct {
		qos0 bool
		want byte
	}{{false, 1}, {true, 0}} {
		o := startOrch(t)
		hook := &subscribeHook{qos: map[string][]byte{}}
		require.NoError(t, o.srv.AddHook(hook, nil))
		a := startAgent(t, o, func(c *Config) { c.SubscribeQoS0 = tc.qos0 })
		assert.Equal(t, []byte{tc.want}, hook.granted(protocol.DownFilter("dev-1")), "SubscribeQoS0 %v", tc.qos0)

		// Offers and chunks still arrive, at QoS 0.
		img := newImage(4*testChunk + 10)
		o.offer("dev-1", img.offer("u1", 3, "2.0.0", "m1"))
		o.expectReport(fleet.StateAccepted)
		o.push("dev-1", 3, img.data, 0)
		for _, st := range []fleet.DeviceState{fleet.StateDownloaded, fleet.StateVerified, fleet.StateInstalling, fleet.StateRebooting} {
			o.expectReport(st)
		}
		recv(t, o.hello, "hello after the reboot")
		assert.True(t, a.Stats().Updated)
		// The subscription after the reboot's reconnection too.
		assert.Equal(t, []byte{tc.want, tc.want}, hook.granted(protocol.DownFilter("dev-1")))
	}
}

func TestAgent_ResubscribeAfterSubscribesAgainAtDoublingIntervals(t *testing.T) {
	o := startOrch(t)
	hook := &subscribeHook{qos: map[string][]byte{}}
	require.NoError(t, o.srv.AddHook(hook, nil))
	t0 := time.Now()
	startAgent(t, o, func(c *Config) {
		c.SubscribeQoS0 = true
		c.ResubscribeAfter = 100 * time.Millisecond
	})
	// Again after 100-150 ms, then 200-300 ms later, then 400-600 ms later.
	eventually(t, func() bool { return len(hook.granted(protocol.DownFilter("dev-1"))) >= 4 }, "three more subscriptions")
	assert.GreaterOrEqual(t, time.Since(t0), 700*time.Millisecond, "the intervals double")
	assert.Equal(t, []byte{0, 0, 0, 0}, hook.granted(protocol.DownFilter("dev-1"))[:4])
	// With each, the device says hello again.
	for i := 0; i < 3; i++ {
		recv(t, o.hello, "hello said again")
	}
}
