package rollout_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/protocol"
)

// An external broker may publish the will of a connection it closed after
// the device's next connection said hello (a cluster node that closed it
// late). The will names its connection: the device stays online, and its
// own connection's will still takes it offline.
func TestEngine_OfflineStatusOfAnEarlierConnectionIsStale(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	dev := rawDevice(t, h.broker.Addr(), "node-hop")
	publish(t, dev, protocol.UpTopic("node-hop", protocol.KindHello), []byte(`{"v":1,"model":"m1","version":"1.0.0","conn":5}`))
	h.waitDevices(1)
	online := func() bool {
		require.NoError(t, h.store.Flush(ctx))
		d, err := h.store.Device(ctx, "node-hop")
		require.NoError(t, err)
		return d.Online
	}
	require.True(t, online())

	stale := h.engine.Stats().StaleMessages
	h.engine.DeviceStatus("node-hop", false, 4) // the will of the connection before
	eventually(t, 10*time.Second, func() bool { return h.engine.Stats().StaleMessages > stale }, "the earlier connection's will counted stale")
	require.True(t, online(), "a stale will took the device offline")

	h.engine.DeviceStatus("node-hop", false, 5) // its own connection's will
	eventually(t, 10*time.Second, func() bool { return !online() }, "the device offline after its connection's will")
}

// A device that states no connection number is taken offline by any will,
// as in protocol 1.0.
func TestEngine_OfflineStatusWithoutConnectionNumbersIsBelieved(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	dev := rawDevice(t, h.broker.Addr(), "plain")
	publish(t, dev, protocol.UpTopic("plain", protocol.KindHello), []byte(`{"v":1,"model":"m1","version":"1.0.0"}`))
	h.waitDevices(1)
	h.engine.DeviceStatus("plain", false, 4)
	eventually(t, 10*time.Second, func() bool {
		require.NoError(t, h.store.Flush(ctx))
		d, err := h.store.Device(ctx, "plain")
		require.NoError(t, err)
		return !d.Online
	}, "the device offline")
}
