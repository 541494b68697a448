package mqttclient

import (
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/mosquitto"
)

// claimant opens a client that claims the broker under epoch, with the
// default client ID shared by every orchestrator.
func claimant(t *testing.T, s *mosquitto.Server, epoch int64, fenced *atomic.Int32) (*Client, error) {
	t.Helper()
	c := New(Options{
		URL: s.URL(), Username: mosquitto.OrchestratorUser, Password: s.Password(mosquitto.OrchestratorUser),
		MaxReconnectInterval: 200 * time.Millisecond,
		Epoch:                epoch,
		OnFenced:             func(error) { fenced.Add(1) },
	})
	err := c.Open()
	t.Cleanup(func() { assert.NoError(t, c.Close()) })
	return c, err
}

func TestClient_OldOrchestratorLosesItsClientIDAndStopsInsteadOfFighting(t *testing.T) {
	s := startMosquitto(t)
	var oldFenced, newFenced atomic.Int32
	old, err := claimant(t, s, 1, &oldFenced)
	require.NoError(t, err)
	require.True(t, old.Leading())
	require.NoError(t, old.Publish("flota/devices/d1/down/x", []byte("from old"), false, 1))

	// The standby, on a copy of the database, claims a higher epoch with
	// the same client ID: the broker drops the old one's connection.
	standby, err := claimant(t, s, 2, &newFenced)
	require.NoError(t, err)

	// The old one reconnects (that takes the client ID back for a
	// moment), sees the newer claim, and stops for good.
	eventually(t, func() bool { return oldFenced.Load() == 1 }, "old orchestrator fenced")
	err = old.Publish("flota/devices/d1/down/x", []byte("from old"), false, 1)
	require.ErrorIs(t, err, ErrFenced)
	st := old.Stats()
	assert.True(t, st.Fenced)
	assert.False(t, st.Leading)
	eventually(t, func() bool { return !old.Connected() }, "old orchestrator disconnected")
	oldConnects := old.Stats().Connects

	// The standby leads again, and keeps its connection: no fight over
	// the client ID. Ten of the old one's reconnection intervals pass
	// with a message through the standby each.
	eventually(t, standby.Leading, "standby leading")
	got := make(chan string, 100)
	dev := device(t, s, "d1", nil)
	await(t, dev.Subscribe("flota/devices/d1/down/#", 1, func(_ mqtt.Client, m mqtt.Message) { got <- string(m.Payload()) }))
	lost := standby.Stats().ConnectionsLost
	for range 10 {
		eventually(t, func() bool {
			return standby.Publish("flota/devices/d1/down/x", []byte("from standby"), false, 1) == nil
		}, "standby publishes")
		select {
		case m := <-got:
			require.Equal(t, "from standby", m)
		case <-time.After(10 * time.Second):
			t.Fatal("the device got nothing from the standby")
		}
		time.Sleep(200 * time.Millisecond)
	}
	assert.Equal(t, lost, standby.Stats().ConnectionsLost, "the standby kept its connection")
	assert.Equal(t, oldConnects, old.Stats().Connects, "the old orchestrator did not reconnect")
	assert.Zero(t, newFenced.Load())
}

func TestClient_RestartedOldOrchestratorOnAStaleDatabaseIsRefusedAtOpen(t *testing.T) {
	s := startMosquitto(t)
	var fenced, restartedFenced atomic.Int32
	standby, err := claimant(t, s, 2, &fenced)
	require.NoError(t, err)

	// The old primary restarts on its own database, whose last epoch was
	// 1: it claims 2 as well, but the standby led first.
	_, err = claimant(t, s, 2, &restartedFenced)
	require.Error(t, err)
	assert.True(t, errors.Is(err, ErrFenced), "%v", err)

	eventually(t, standby.Leading, "the standby leads again")
	assert.Zero(t, fenced.Load(), "the standby was not fenced")
	require.NoError(t, standby.Publish("flota/devices/d1/down/x", []byte("x"), false, 1))
}

func TestClient_OrchestratorsWithDistinctClientIDsDoNotFenceEachOther(t *testing.T) {
	s := startMosquitto(t)
	var fenced atomic.Int32
	open := func(id string, epoch int64) *Client {
		c := New(Options{URL: s.URL(), Username: mosquitto.OrchestratorUser, Password: s.Password(mosquitto.OrchestratorUser),
			ClientID: id, Epoch: epoch, OnFenced: func(error) { fenced.Add(1) }})
		require.NoError(t, c.Open())
		t.Cleanup(func() { assert.NoError(t, c.Close()) })
		return c
	}
	a, b := open("flota-orchestrator-a", 5), open("flota-orchestrator-b", 1)
	assert.True(t, a.Leading())
	assert.True(t, b.Leading())
	assert.Zero(t, fenced.Load())
}

func TestClient_MalformedClaimsAreCountedAndIgnored(t *testing.T) {
	s := startMosquitto(t)
	var fenced atomic.Int32
	c, err := claimant(t, s, 1, &fenced)
	require.NoError(t, err)
	pub := device(t, s, "publisher", func(o *mqtt.ClientOptions) {
		o.SetUsername(mosquitto.OrchestratorUser).SetPassword(s.Password(mosquitto.OrchestratorUser))
	})
	topic := ClaimTopic(DefaultClientID)
	for _, p := range []string{"not json", `{"v":1,"epoch":99}`, `{"v":2,"epoch":99,"instance":"x"}`,
		`{"v":1,"epoch":99,"instance":"` + strings.Repeat("x", 600) + `"}`} {
		await(t, pub.Publish(topic, 1, false, p))
	}
	eventually(t, func() bool { return c.Stats().BadClaims == 4 }, "four bad claims counted")
	assert.True(t, c.Leading())
	require.NoError(t, c.Publish("flota/devices/d1/down/x", []byte("x"), false, 1))
	assert.Zero(t, fenced.Load())
}

func TestClient_WithoutAnEpochClaimsNothing(t *testing.T) {
	s := startMosquitto(t)
	c := openClient(t, s, Options{})
	assert.True(t, c.Leading())
	assert.Nil(t, c.Fenced())
	got := make(chan struct{}, 1)
	dev := device(t, s, "watcher", nil)
	await(t, dev.Subscribe(ClaimRoot+"#", 1, func(mqtt.Client, mqtt.Message) { got <- struct{}{} }))
	require.NoError(t, c.Publish("flota/devices/d1/down/x", []byte("x"), false, 1))
	select {
	case <-got:
		t.Fatal("a client without an epoch published a claim")
	case <-time.After(300 * time.Millisecond):
	}
}

// TestYieldAtEqualEpoch_TheFirstToLeadWins: a stale primary restarted at
// the standby's epoch may lead while the standby reconnects; when they
// meet, the one that led later yields, whatever their instance names.
func TestYieldAtEqualEpoch_TheFirstToLeadWins(t *testing.T) {
	standby := claim{Instance: "a", Led: true, LedAt: 100}
	// The stale primary ("z" would win on the instance order) led later.
	assert.True(t, yieldAtEqualEpoch(standby, true, 200, "z"), "the later leader yields")
	assert.False(t, yieldAtEqualEpoch(claim{Instance: "z", Led: true, LedAt: 200}, true, 100, "a"), "the first leader stays")
	assert.True(t, yieldAtEqualEpoch(standby, false, 0, "z"), "one that never led yields to one that led")
	assert.False(t, yieldAtEqualEpoch(claim{Instance: "z"}, true, 100, "a"), "one that led stays")
	assert.True(t, yieldAtEqualEpoch(claim{Instance: "z"}, false, 0, "a"), "never led, either: the instance orders")
	assert.False(t, yieldAtEqualEpoch(claim{Instance: "a"}, false, 0, "z"))
	// A claim of an older version says led without a time: led decides,
	// then the instance.
	assert.True(t, yieldAtEqualEpoch(claim{Instance: "z", Led: true}, true, 100, "a"))
}
