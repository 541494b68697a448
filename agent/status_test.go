package agent

import (
	"encoding/json"
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

// status decodes m, which must be retained and carry a connection number.
func (m statusMsg) status(t *testing.T) (online bool, conn uint32) {
	t.Helper()
	var s struct {
		V      int    `json:"v"`
		Online bool   `json:"online"`
		Conn   uint32 `json:"conn"`
	}
	require.NoError(t, json.Unmarshal([]byte(m.payload), &s), m.payload)
	require.Equal(t, 1, s.V, m.payload)
	require.True(t, m.retain, "status %s retained", m.payload)
	require.NotZero(t, s.Conn, "status %s names its connection", m.payload)
	return s.Online, s.Conn
}

func TestAgent_StatusOnlineBeforeHelloOfflineBeforeDisconnect(t *testing.T) {
	o := startOrch(t)
	a := startAgent(t, o, nil) // it consumed the first hello
	on, conn := recv(t, o.status, "online status").status(t)
	assert.True(t, on)

	require.NoError(t, a.Close())
	on, offConn := recv(t, o.status, "offline status before DISCONNECT").status(t)
	assert.False(t, on)
	assert.Equal(t, conn, offConn, "the offline status names the connection that said online")
}

func TestAgent_LastWillNamesItsConnectionAndEachConnectionHasItsOwn(t *testing.T) {
	o := startOrch(t)
	startAgent(t, o, nil)
	on, conn := recv(t, o.status, "online status").status(t)
	require.True(t, on)

	// The connection breaks under the broker: no DISCONNECT, so it publishes
	// the will. (Not cl.Stop: mochi's read loop returns without an error, and
	// without the will, when it sees the client stopped between packets.)
	cl, ok := o.srv.Clients.Get("dev-1")
	require.True(t, ok)
	will := cl.Properties.Will
	assert.EqualValues(t, 1, will.Flag, "the agent connects with a last will")
	assert.Equal(t, protocol.UpTopic("dev-1", protocol.KindStatus), will.TopicName)
	on, willConn := statusMsg{string(will.Payload), will.Retain}.status(t)
	assert.False(t, on)
	assert.Equal(t, conn, willConn, "the will names the connection that said online")
	require.NoError(t, cl.Net.Conn.Close())

	// paho reconnects at once. Usually the broker publishes the will first,
	// then the new connection says online. When the new connection wins the
	// race, it takes the old session over and mochi drops the old will.
	on, next := recv(t, o.status, "last will or online").status(t)
	if !on {
		assert.Equal(t, conn, next, "the will published")
		on, next = recv(t, o.status, "online status after reconnecting").status(t)
		require.True(t, on)
	}
	assert.NotEqual(t, conn, next, "a new connection draws a new number")
	h := recv(t, o.hello, "hello after reconnecting")
	assert.Nil(t, h.Transfer)
	assert.Equal(t, next, h.Conn, "the hello names the connection its status did")
	cl, ok = o.srv.Clients.Get("dev-1")
	require.True(t, ok)
	_, willConn = statusMsg{string(cl.Properties.Will.Payload), cl.Properties.Will.Retain}.status(t)
	assert.Equal(t, next, willConn, "the new connection's will names it")
}

func TestAgent_StatusTopic(t *testing.T) {
	a := New(Config{ID: "dev-9"})
	assert.Equal(t, "flota/devices/dev-9/up/status", a.statusTopic())
	id, kind, ok := protocol.ParseUpTopic(a.statusTopic())
	require.True(t, ok)
	assert.Equal(t, "dev-9", id)
	assert.Equal(t, protocol.KindStatus, kind)
}
