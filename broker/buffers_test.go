package broker

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/protocol"
)

func TestBroker_PacketsLargerThanReadBufferArriveWhole(t *testing.T) {
	b, _ := openBroker(t, Options{}, nil)
	require.Equal(t, ClientReadBuffer, b.srv.Options.ClientNetReadBufferSize)
	var up inbox
	require.NoError(t, b.Subscribe(protocol.UpFilter, up.inline))
	a := dial(t, b, "dev-A")

	big := strings.Repeat("0123456789abcdef", 3*ClientReadBuffer/16+5) // three buffers and a bit
	publish(t, a, protocol.UpTopic("dev-A", protocol.KindReport), 1, false, big)
	publish(t, a, protocol.UpTopic("dev-A", protocol.KindAck), 1, false, "small after big")

	assert.Equal(t, big, up.waitTopic(t, protocol.UpTopic("dev-A", protocol.KindReport)).payload)
	assert.Equal(t, "small after big", up.waitTopic(t, protocol.UpTopic("dev-A", protocol.KindAck)).payload)
}
