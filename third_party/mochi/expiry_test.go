package mqtt

import (
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mochi-mqtt/server/v2/packets"
)

// expiryHook runs fn from the hooks of the expiry passes, which may call
// into the server's client map.
type expiryHook struct {
	HookBase
	fn func(cl *Client)
}

func (h *expiryHook) ID() string { return "expiry" }

func (h *expiryHook) Provides(b byte) bool { return b == OnClientExpired || b == OnQosDropped }

func (h *expiryHook) OnClientExpired(cl *Client) { h.fn(cl) }

func (h *expiryHook) OnQosDropped(cl *Client, _ packets.Packet) { h.fn(cl) }

func TestServerClearExpiredClients_KeepsAClientThatTookTheIDOver(t *testing.T) {
	s := newServer()
	n := time.Now().Unix()
	old := s.NewClient(nil, "t", "dev", false)
	old.Properties.ProtocolVersion = 5
	old.Properties.Props.SessionExpiryInterval = 5
	old.Properties.Props.SessionExpiryIntervalFlag = true
	old.Stop(nil)
	old.State.disconnected = n - 10
	s.Clients.Add(old)

	// The device connects again as its old session expires: its new client
	// replaces the old one in the map (an Add from the hook, which would
	// also wait forever if the hook ran under the map's read lock).
	taker := s.NewClient(nil, "t", "dev", false)
	var expired []*Client
	require.NoError(t, s.AddHook(&expiryHook{fn: func(cl *Client) {
		expired = append(expired, cl)
		s.Clients.Add(taker)
	}}, nil))

	s.clearExpiredClients(n)
	require.Equal(t, []*Client{old}, expired)
	got, ok := s.Clients.Get("dev")
	require.True(t, ok, "the client that took the id over stays")
	require.Same(t, taker, got)

	// Once it has expired itself, it goes.
	taker.Stop(nil)
	taker.State.disconnected = n - 2*int64(s.Options.Capabilities.MaximumSessionExpiryInterval)
	s.clearExpiredClients(n)
	_, ok = s.Clients.Get("dev")
	require.False(t, ok)
}

func TestServerClearExpiredInflights_HooksMayUseTheClientMap(t *testing.T) {
	s := newServer()
	s.Options.Capabilities.MaximumMessageExpiryInterval = 4
	n := time.Now().Unix()
	for i := 0; i < 3; i++ {
		cl := s.NewClient(nil, "t", "dev-"+strconv.Itoa(i), false)
		if i > 0 { // dev-0 has nothing expired
			cl.State.Inflight.Set(packets.Packet{PacketID: 1, Created: n - 5})
		}
		cl.State.Inflight.Set(packets.Packet{PacketID: 2, Created: n})
		s.Clients.Add(cl)
	}
	dropped := map[string]int{}
	require.NoError(t, s.AddHook(&expiryHook{fn: func(cl *Client) {
		dropped[cl.ID]++
		s.Clients.Add(s.NewClient(nil, "t", "new-"+cl.ID, false)) // waits forever under the read lock
	}}, nil))

	s.clearExpiredInflights(n)
	// Twice each: from Client.ClearExpiredInflights and from the server, as upstream.
	require.Equal(t, map[string]int{"dev-1": 2, "dev-2": 2}, dropped)
	for i := 0; i < 3; i++ {
		cl, ok := s.Clients.Get("dev-" + strconv.Itoa(i))
		require.True(t, ok)
		_, ok = cl.State.Inflight.Get(1)
		require.False(t, ok)
		_, ok = cl.State.Inflight.Get(2)
		require.True(t, ok, "not expired")
	}
}

func TestServerClearExpired_AllocatesNothingWhenNothingExpires(t *testing.T) {
	// Each pass copied the client map, and the inflight pass each client's
	// inflight store, every second (flota patch).
	s := newServer()
	n := time.Now().Unix()
	for i := 0; i < 100; i++ {
		cl := s.NewClient(nil, "t", "dev-"+strconv.Itoa(i), false)
		cl.State.Inflight.Set(packets.Packet{PacketID: 1, Created: n})
		s.Clients.Add(cl)
	}
	allocs := testing.AllocsPerRun(10, func() {
		s.clearExpiredClients(n)
		s.clearExpiredInflights(n)
	})
	require.Zero(t, allocs)
	require.Equal(t, 100, s.Clients.Len())
}

// BenchmarkServer_ClearExpired10k measures one tick of each of the event
// loop's two passes over the clients (clearExpiredClients and
// clearExpiredInflights, once a second each) with 10,000 connected clients
// and nothing to expire, the common case during a rollout: the inflight
// pass with no message in flight, and with a QoS 1 message in flight to
// every client.
func BenchmarkServer_ClearExpired10k(b *testing.B) {
	const clients = 10000
	s := newServer()
	now := time.Now().Unix()
	for i := 0; i < clients; i++ {
		cl := s.NewClient(nil, "t", "dev-"+strconv.Itoa(i), false)
		cl.Properties.ProtocolVersion = 4
		s.Clients.Add(cl)
	}
	b.Run("clients", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			s.clearExpiredClients(now)
		}
	})
	b.Run("inflights-none", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			s.clearExpiredInflights(now)
		}
	})
	for _, cl := range s.Clients.GetAll() {
		cl.State.Inflight.Set(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
			PacketID: 1, TopicName: "flota/devices/d/down/offer", Payload: []byte("offer"), Created: now})
	}
	b.Run("inflights-one", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			s.clearExpiredInflights(now)
		}
	})
	if s.Clients.Len() != clients {
		b.Fatalf("%d clients left, want %d", s.Clients.Len(), clients)
	}
}
