package mqttclient

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/mosquitto"
	"github.com/flotaio/flota/internal/protocol"
)

func TestSplitAndRotateURLs(t *testing.T) {
	urls := SplitURLs(" tcp://a:1, ,tcp://b:2,tcp://c:3,")
	require.Equal(t, []string{"tcp://a:1", "tcp://b:2", "tcp://c:3"}, urls)
	assert.Equal(t, []string{"tcp://b:2", "tcp://c:3", "tcp://a:1"}, RotateURLs(urls, 1))
	assert.Equal(t, urls, RotateURLs(urls, 0))
	// The devices of one node fail over to the others in turn.
	assert.Equal(t, []string{"tcp://a:1", "tcp://c:3", "tcp://b:2"}, RotateURLs(urls, 3))
	assert.Equal(t, []string{"tcp://b:2", "tcp://a:1", "tcp://c:3"}, RotateURLs(urls, 4))
	assert.Equal(t, urls, RotateURLs(urls, 6))
	assert.Equal(t, []string{"tcp://b:2", "tcp://a:1"}, RotateURLs(urls[:2], 3))
	assert.Nil(t, RotateURLs(nil, 3))
	assert.Equal(t, "tcp://u:xxxxx@a:1,tcp://b:2", redact("tcp://u:pw@a:1,tcp://b:2"))

	for name, list := range map[string]string{
		"empty":       " , ",
		"mixed TLS":   "tcp://a:1,ssl://b:2",
		"bad scheme":  "tcp://a:1,http://b:2",
		"second host": "tcp://a:1,tcp://",
	} {
		_, _, err := parseURLs(list)
		assert.Error(t, err, name)
	}
}

// A client given the nodes of a cluster connects to the first that answers,
// and fails over to another when its node dies.
func TestClient_FailsOverBetweenBrokerURLs(t *testing.T) {
	a, b := startMosquitto(t), startMosquitto(t)
	require.NoError(t, a.Kill())
	c := New(Options{
		URL:      a.URL() + "," + b.URL(),
		Username: mosquitto.OrchestratorUser, Password: b.Password(mosquitto.OrchestratorUser),
		MaxReconnectInterval: 200e6,
	})
	require.NoError(t, c.Open(), "the first URL is down: the second serves")
	t.Cleanup(func() { assert.NoError(t, c.Close()) })
	var up recorder
	require.NoError(t, c.Subscribe(protocol.UpFilter, up.handle))

	require.NoError(t, a.Start())
	require.NoError(t, b.Kill())
	eventually(t, func() bool { return c.Connected() && c.Stats().Connects >= 2 }, "reconnected to the first URL")
	d := device(t, a, "dev-1", nil)
	eventually(t, func() bool {
		await(t, d.Publish(protocol.UpTopic("dev-1", protocol.KindAck), 1, false, "ack-1"))
		return up.has("flota/devices/dev-1/up/ack ack-1")
	}, "report received through the other broker")
}
