package broker

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/protocol"
)

// TestBroker_PresenceIsDeliveredButNotRetained checks that a device's
// retained presence message and its retained will reach subscribers but are
// not kept as retained messages, while the orchestrator's retained update
// summaries are (device statuses are kept outside mochi: status_test.go).
func TestBroker_PresenceIsDeliveredButNotRetained(t *testing.T) {
	b, _ := openBroker(t, Options{}, nil)
	var in inbox
	require.NoError(t, b.Subscribe("flota/devices/+/up/#", in.inline))
	presence := protocol.UpTopic("dev-1", protocol.KindStatus)

	c := dial(t, b, "dev-0") // a device without a will
	publish(t, c, protocol.UpTopic("dev-0", protocol.KindStatus), 1, true, `{"v":1,"online":true}`)
	in.waitTopic(t, protocol.UpTopic("dev-0", protocol.KindStatus))

	_, err := tryDial(t, clientOptions(b, "dev-1").SetWill(presence, `{"v":1,"online":false}`, 1, true))
	require.NoError(t, err)
	cl, ok := b.srv.Clients.Get("dev-1")
	require.True(t, ok)
	require.NoError(t, cl.Net.Conn.Close()) // an unclean end sends the will
	assert.Equal(t, `{"v":1,"online":false}`, in.waitTopic(t, presence).payload)

	require.NoError(t, b.Publish(protocol.UpdateStatusTopic("u1"), []byte(`{"state":"running"}`), true, 1))
	require.NoError(t, b.Publish(protocol.UpTopic("dev-1", "report"), []byte(`{}`), true, 1))

	retained := b.srv.Topics.Retained.GetAll()
	assert.Contains(t, retained, protocol.UpdateStatusTopic("u1"), "the orchestrator's update summary stays retained")
	assert.Contains(t, retained, protocol.UpTopic("dev-1", "report"), "only presence loses the flag")
	assert.NotContains(t, retained, presence)
	assert.NotContains(t, retained, protocol.UpTopic("dev-0", protocol.KindStatus))
}

func TestPresenceTopic(t *testing.T) {
	for topic, want := range map[string]bool{
		"flota/devices/dev-1/up/status":   true,
		"flota/devices/dev-1/up/report":   false,
		"flota/devices/dev-1/down/status": false,
		"flota/status/devices/dev-1":      false,
		"flota/devices/bad id/up/status":  false,
		"flota/devices/dev-1/up/status/x": false,
		"x/flota/devices/dev-1/up/status": false,
	} {
		assert.Equal(t, want, presenceTopic(topic), topic)
	}
}
