package agent

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
)

func TestInbox_BoundedAndEmptyWhenTaken(t *testing.T) {
	b := newInbox(2)
	m1, m2, m3 := &inbound{kind: "1"}, &inbound{kind: "2"}, &inbound{kind: "3"}
	require.True(t, b.put(m1))
	require.True(t, b.put(m2))
	assert.False(t, b.put(m3), "full")
	select {
	case <-b.ready:
	default:
		t.Fatal("no ready token")
	}
	assert.Equal(t, []*inbound{m1, m2}, b.take())
	assert.Nil(t, b.q, "an empty inbox holds no array")
	assert.Empty(t, b.take())
	assert.True(t, b.put(m3))
}

// unacked is a publish whose PUBACK never comes.
type unacked struct{}

func (unacked) WaitTimeout(time.Duration) bool { return false }
func (unacked) Error() error                   { return nil }

// TestAgent_RebootHelloSaidAgainWhenNotAcknowledged: a device whose hello
// after the reboot was not acknowledged says it again later, instead of
// holding the transfer until its next connection.
func TestAgent_RebootHelloSaidAgainWhenNotAcknowledged(t *testing.T) {
	a := New(Config{ID: "dev-1", Model: "m", Version: "1", Seed: 1, RetryInterval: time.Hour, PublishTimeout: time.Millisecond})
	a.out = func(topic string, _ byte, _ []byte) waiter {
		if strings.HasSuffix(topic, "/"+protocol.KindHello) {
			return unacked{}
		}
		return doneToken{}
	}
	img := newImage(testChunk)
	a.handleDown(protocol.KindOffer, offerMsg(img, "u1", 1))
	sendChunks(a, img, 1, 0, len(img.data)) // installs, reboots and says hello
	require.NotNil(t, a.helloTimer, "hello scheduled again")
	a.helloTimer.Stop()
	s := a.Stats()
	assert.True(t, s.Holding)
	assert.Equal(t, fleet.StateRebooting, s.State)
}
