package broker

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	pahopackets "github.com/eclipse/paho.mqtt.golang/packets"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/auth"
	"github.com/flotaio/flota/internal/fleet"
)

// waitOnline waits until the broker has established id's session: a
// client has its CONNACK a moment before.
func waitOnline(t *testing.T, b *Broker, id string) {
	t.Helper()
	require.Eventually(t, func() bool { return b.Online(id) }, waitFor, tick, "%s online", id)
}

// hangUp disconnects c once its session is established and waits until
// the broker has seen the connection end.
func hangUp(t *testing.T, b *Broker, id string, c interface{ Disconnect(uint) }) {
	t.Helper()
	waitOnline(t, b, id)
	c.Disconnect(50)
	require.Eventually(t, func() bool { return !b.Online(id) }, waitFor, tick, "%s offline", id)
}

func TestBroker_ReconnectingDoesNotResetThePublishRateLimit(t *testing.T) {
	const rate, burst = 1.0, 20
	b, logs := openBroker(t, Options{RateLimit: rate, RateBurst: burst, ConnectRate: -1}, nil)
	var routed atomic.Int64
	require.NoError(t, b.Subscribe("flota/devices/+/up/#", func(string, []byte) { routed.Add(1) }))

	const conns, perConn = 5, 2 * burst
	start := time.Now()
	for i := 0; i < conns; i++ {
		c := dial(t, b, "dev-a")
		for j := 0; j < perConn; j++ {
			publish(t, c, "flota/devices/dev-a/up/ack", 1, false, "{}")
		}
		hangUp(t, b, "dev-a", c)
	}
	elapsed := time.Since(start)

	// mochi sends a PUBACK before it routes the message: wait until every
	// one is routed or counted.
	require.Eventually(t, func() bool { return routed.Load()+b.Stats().RateLimited == int64(conns*perConn) }, waitFor, tick,
		"every message routed or counted")
	got := routed.Load()
	bound := int64(burst + elapsed.Seconds()*rate + 1)
	assert.LessOrEqual(t, got, bound, "%d of %d routed over %d connections in %s", got, conns*perConn, conns, elapsed)
	assert.Positive(t, got)
	assert.Equal(t, 1, logs.count("client over its publish rate limit"), "logged once per client ID, not per connection")

	// Another client ID has its own bucket.
	c := dial(t, b, "dev-b")
	publish(t, c, "flota/devices/dev-b/up/ack", 1, false, "{}")
	require.Eventually(t, func() bool { return routed.Load() == got+1 }, waitFor, tick, "dev-b's message routed")
}

// rawConnect sends an MQTT CONNECT for id over a new TCP connection at the
// given protocol level (4: 3.1.1, 5: 5.0) and returns the CONNACK's return
// (3.1.1) or reason (5) code.
func rawConnect(t *testing.T, addr, id string, level byte) byte {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer conn.Close()
	body := []byte{0, 4, 'M', 'Q', 'T', 'T', level, 0x02, 0, 30}
	if level == 5 {
		body = append(body, 0) // no properties
	}
	body = binary.BigEndian.AppendUint16(body, uint16(len(id)))
	body = append(body, id...)
	_, err = conn.Write(append([]byte{0x10, byte(len(body))}, body...))
	require.NoError(t, err)
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(waitFor)))
	head := make([]byte, 2)
	_, err = io.ReadFull(conn, head)
	require.NoError(t, err)
	require.Equal(t, byte(0x20), head[0], "CONNACK")
	ack := make([]byte, head[1])
	_, err = io.ReadFull(conn, ack)
	require.NoError(t, err)
	return ack[1]
}

func TestBroker_ReconnectLimitRefusesAFlappingClientIDOnly(t *testing.T) {
	const limit = 3
	b, logs := openBroker(t, Options{ConnectRate: limit, ConnectBan: time.Hour, Authenticate: func(_ context.Context, c auth.Connect) (fleet.Role, error) {
		if string(c.Password) == "wrong" {
			return "", errors.New("bad password")
		}
		return fleet.RoleDevice, nil
	}}, nil)

	for i := 0; i < limit; i++ {
		hangUp(t, b, "flappy", dial(t, b, "flappy"))
	}
	_, err := tryDial(t, clientOptions(b, "flappy"))
	require.ErrorIs(t, err, pahopackets.ErrorRefusedServerUnavailable, "CONNACK 0x03 to an MQTT 3.1.1 client")
	assert.Equal(t, byte(0x9F), rawConnect(t, b.Addr(), "flappy", 5), "connection rate exceeded, to an MQTT 5 client")
	for i := 0; i < 5; i++ {
		assert.Equal(t, byte(0x03), rawConnect(t, b.Addr(), "flappy", 4))
	}
	st := b.Stats()
	assert.EqualValues(t, 7, st.ConnectRateLimited)
	assert.Zero(t, st.AuthRefused, "refused before authentication")
	assert.Equal(t, 1, logs.count("client ID connects too often: banned"))
	assert.Zero(t, logs.count("client ID banned for connecting too often"), "refusals in the ban's first minute are counted, not logged")

	// Another client ID is not affected.
	for i := 0; i < limit; i++ {
		hangUp(t, b, "steady", dial(t, b, "steady"))
	}

	// Whoever lacks the credentials cannot get a client ID banned: only
	// established connections count.
	for i := 0; i < 2*limit; i++ {
		_, err := tryDial(t, clientOptions(b, "victim").SetUsername("victim").SetPassword("wrong"))
		require.Error(t, err)
	}
	dial(t, b, "victim")
	waitOnline(t, b, "victim")
	assert.EqualValues(t, 7, b.Stats().ConnectRateLimited)
	assert.Positive(t, b.Stats().Identities)
}

func TestBroker_IdleIdentitiesAreForgotten(t *testing.T) {
	b, _ := openBroker(t, Options{}, nil)
	hangUp(t, b, "dev-a", dial(t, b, "dev-a"))
	assert.Equal(t, 1, b.Stats().Identities)
	// A connection sweeps at most every identitySweepInterval; a sweep
	// after the connection bucket has refilled forgets dev-a.
	b.ids.mu.Lock()
	b.sweepIdentities(time.Now().Add(time.Minute + time.Second))
	b.ids.mu.Unlock()
	assert.Zero(t, b.Stats().Identities)

	// A connected one is kept however long it is idle.
	dial(t, b, "dev-b")
	waitOnline(t, b, "dev-b")
	b.ids.mu.Lock()
	b.sweepIdentities(time.Now().Add(time.Hour))
	b.ids.mu.Unlock()
	assert.Equal(t, 1, b.Stats().Identities)
}
