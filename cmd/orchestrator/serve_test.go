package main

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/protocol"
)

func newTestMain(t *testing.T) *Main {
	t.Helper()
	m := NewMain()
	m.Config.DataDir = t.TempDir()
	m.Config.MQTTAddr = "127.0.0.1:0"
	m.Config.HTTPAddr = "127.0.0.1:0"
	m.Logger = slog.New(slog.DiscardHandler)
	m.Config.APITokenFile = writeTestTokens(t)
	m.Config.Fetch.Allow = "127.0.0.1/32" // the tests' artifact stores are httptest servers
	return m
}

func TestMain_RunServesAndCloses(t *testing.T) {
	m := newTestMain(t)
	require.NoError(t, m.Run(context.Background()))
	t.Cleanup(func() { assert.NoError(t, m.Close()) })

	require.True(t, strings.HasPrefix(m.HTTPURL(), "http://127.0.0.1:"), m.HTTPURL())
	h, err := NewClient(m.HTTPURL()).Health(context.Background())
	require.NoError(t, err)
	assert.Equal(t, "ok", h.Status)
	assert.Equal(t, version, h.Version)

	conn, err := net.Dial("tcp", m.MQTTAddr())
	require.NoError(t, err, "the broker listens")
	require.NoError(t, conn.Close())

	url := m.HTTPURL()
	require.NoError(t, m.Close())
	require.NoError(t, m.Close(), "Close is idempotent")
	_, err = NewClient(url).Health(context.Background())
	assert.Error(t, err, "the API is down after Close")
	assert.Error(t, m.Run(context.Background()), "a closed Main does not run again")
}

func TestMain_RunFailureClosesWhatOpened(t *testing.T) {
	// Take a port so that the HTTP listener fails after the others opened.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })

	m := newTestMain(t)
	m.Config.HTTPAddr = ln.Addr().String()
	err = m.Run(context.Background())
	require.Error(t, err)
	assert.Contains(t, err.Error(), "open http")

	// The store was closed: a new one opens the same directory.
	m2 := newTestMain(t)
	m2.Config.DataDir = m.Config.DataDir
	require.NoError(t, m2.Run(context.Background()))
	require.NoError(t, m2.Close())
	assert.NoError(t, m.Close())
}

func TestMain_BadLogLevel(t *testing.T) {
	m := newTestMain(t)
	m.Logger = nil
	m.Config.LogLevel = "loud"
	assert.Error(t, m.Run(context.Background()))
	assert.NoError(t, m.Close())
}

// A device that says hello the moment the broker accepts its connection, as
// devices do when they reconnect after a restart, reaches the engine: the
// engine subscribes before the broker listens.
func TestMain_HelloAsSoonAsTheBrokerListensReachesTheEngine(t *testing.T) {
	m := newTestMain(t)
	m.Config.AllowAnonymous = true
	m.afterBrokerOpen = func(addr string) { // inside Run, before the HTTP API opens
		c := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + addr).SetClientID("early-1"))
		tok := c.Connect()
		require.True(t, tok.WaitTimeout(10*time.Second))
		require.NoError(t, tok.Error())
		defer c.Disconnect(0)
		hello := protocol.Encode(protocol.Hello{V: protocol.Version, Model: "m1", Version: "4.2.0"})
		tok = c.Publish(protocol.UpTopic("early-1", protocol.KindHello), 1, false, hello)
		require.True(t, tok.WaitTimeout(10*time.Second))
		require.NoError(t, tok.Error(), "the broker acknowledged the hello")
	}
	require.NoError(t, m.Run(context.Background()))
	t.Cleanup(func() { assert.NoError(t, m.Close()) })

	c := adminClient(m)
	poll(t, 10*time.Second, func() bool {
		d, err := c.Device(context.Background(), "early-1")
		return err == nil && d.Version == "4.2.0"
	}, "the device registered by its hello")
}
