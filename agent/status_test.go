package agent

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/protocol"
)

// statusMsg is a status message as the scripted orchestrator saw it.
type statusMsg struct {
	payload string
	retain  bool
}

var (
	online  = statusMsg{`{"v":1,"online":true}`, true}
	offline = statusMsg{`{"v":1,"online":false}`, true}
)

func TestAgent_StatusOnlineBeforeHelloOfflineBeforeDisconnect(t *testing.T) {
	o := startOrch(t)
	a := startAgent(t, o, nil) // it consumed the first hello
	assert.Equal(t, online, recv(t, o.status, "online status"))

	require.NoError(t, a.Close())
	assert.Equal(t, offline, recv(t, o.status, "offline status before DISCONNECT"))
}

func TestAgent_LastWillSaysOffline(t *testing.T) {
	o := startOrch(t)
	startAgent(t, o, nil)
	require.Equal(t, online, recv(t, o.status, "online status"))

	// The connection breaks under the broker: no DISCONNECT, so it publishes
	// the will. (Not cl.Stop: mochi's read loop returns without an error, and
	// without the will, when it sees the client stopped between packets.)
	cl, ok := o.srv.Clients.Get("dev-1")
	require.True(t, ok)
	will := cl.Properties.Will
	assert.EqualValues(t, 1, will.Flag, "the agent connects with a last will")
	assert.Equal(t, protocol.UpTopic("dev-1", protocol.KindStatus), will.TopicName)
	assert.Equal(t, offline, statusMsg{string(will.Payload), will.Retain})
	require.NoError(t, cl.Net.Conn.Close())

	// paho reconnects at once. Usually the broker publishes the will first,
	// then the new connection says online. When the new connection wins the
	// race, it takes the old session over and mochi drops the old will: a
	// stale offline after the device is back would be wrong anyway.
	first := recv(t, o.status, "last will or online")
	if first == offline {
		assert.Equal(t, online, recv(t, o.status, "online status after reconnecting"))
	} else {
		assert.Equal(t, online, first)
	}
	h := recv(t, o.hello, "hello after reconnecting")
	assert.Nil(t, h.Transfer)
}

func TestAgent_StatusTopic(t *testing.T) {
	a := New(Config{ID: "dev-9"})
	assert.Equal(t, "flota/devices/dev-9/up/status", a.statusTopic())
	id, kind, ok := protocol.ParseUpTopic(a.statusTopic())
	require.True(t, ok)
	assert.Equal(t, "dev-9", id)
	assert.Equal(t, protocol.KindStatus, kind)
}
