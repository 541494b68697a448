package agent

import (
	"errors"
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

	// The broker drops the connection: no DISCONNECT, so it publishes the will.
	cl, ok := o.srv.Clients.Get("dev-1")
	require.True(t, ok)
	cl.Stop(errors.New("test: connection dropped"))
	assert.Equal(t, offline, recv(t, o.status, "last will"))

	// paho reconnects: online again, then hello.
	assert.Equal(t, online, recv(t, o.status, "online status after reconnecting"))
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
