package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/flotaio/flota/internal/auth"
	"github.com/flotaio/flota/internal/fleet"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// from returns a dialer whose connections come from the loopback address
// ip (Linux routes all of 127/8 to lo), so that tests have several sources.
func from(ip string) *net.Dialer {
	return &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: waitFor}
}

// rawConn opens a TCP connection to b from ip that sends nothing; it is
// closed when the test ends.
func rawConn(t testing.TB, b *Broker, ip string) net.Conn {
	t.Helper()
	c, err := from(ip).Dial("tcp", b.Addr())
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// requireClosedByServer waits until the server has closed c: a read
// returns EOF (or a reset) instead of data or a timeout.
func requireClosedByServer(t testing.TB, c net.Conn, what string) {
	t.Helper()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(waitFor)))
	_, err := c.Read(make([]byte, 1))
	require.Error(t, err, what)
	require.False(t, errors.Is(err, os.ErrDeadlineExceeded), "%s: still open after %s", what, waitFor)
}

// waitStats waits until cond holds for the broker's stats.
func waitStats(t testing.TB, b *Broker, cond func(Stats) bool, what string) {
	t.Helper()
	require.Eventually(t, func() bool { return cond(b.Stats()) }, waitFor, tick, "%s; stats %+v", what, b.Stats())
}

// deviceFrom connects a paho device client from ip and reports its error.
func deviceFrom(t testing.TB, b *Broker, id, ip string) (paho.Client, error) {
	t.Helper()
	return tryDial(t, clientOptions(b, id).SetDialer(from(ip)))
}

// requireWorks checks that c's messages go through the broker: it gets
// what it publishes to its own up topic through an inline subscription.
func requireWorks(t testing.TB, b *Broker, c paho.Client, id string) {
	t.Helper()
	var in inbox
	topic := "flota/devices/" + id + "/up/ack"
	require.NoError(t, b.Subscribe(topic, in.inline))
	publish(t, c, topic, 1, false, "x")
	in.waitTopic(t, topic)
}

func TestBroker_IdleConnectionsAreClosedAfterConnectTimeout(t *testing.T) {
	b, _ := openBroker(t, Options{ConnectTimeout: 300 * time.Millisecond}, nil)
	dev := dial(t, b, "dev-1") // connected before: its keepalive, not the timeout, applies

	idle := rawConn(t, b, "127.0.0.1")
	partial := rawConn(t, b, "127.0.0.1")
	// A CONNECT of 20 bytes of which 5 arrive.
	_, err := partial.Write([]byte{0x10, 20, 0, 4, 'M'})
	require.NoError(t, err)

	requireClosedByServer(t, idle, "a connection that sent nothing")
	requireClosedByServer(t, partial, "a connection that sent part of a CONNECT")
	waitStats(t, b, func(s Stats) bool { return s.ConnectTimeouts == 2 && s.Unauthenticated == 0 },
		"both counted as connect timeouts")

	// The device, past the timeout, still works.
	require.True(t, dev.IsConnectionOpen())
	requireWorks(t, b, dev, "dev-1")
	assert.Equal(t, int64(2), b.Stats().ConnectTimeouts)
}

func TestBroker_UnauthenticatedConnectionsAreCappedPerAddressAndInTotal(t *testing.T) {
	b, _ := openBroker(t, Options{MaxUnauthenticated: 5, MaxUnauthenticatedPerIP: 3, ConnectTimeout: time.Hour}, nil)

	var held []net.Conn
	hold := func(ip string) {
		held = append(held, rawConn(t, b, ip))
		n := len(held)
		waitStats(t, b, func(s Stats) bool { return s.Unauthenticated == n }, "connection admitted")
	}
	for range 3 {
		hold("127.0.0.1")
	}
	requireClosedByServer(t, rawConn(t, b, "127.0.0.1"), "a 4th unauthenticated connection from one address")
	assert.Equal(t, int64(1), b.Stats().UnauthIPRefused)

	_, err := deviceFrom(t, b, "dev-same-ip", "127.0.0.1")
	require.Error(t, err, "a device behind the offender's address waits for a free slot")

	// Another address still gets in, up to the total.
	hold("127.0.0.2")
	hold("127.0.0.2")
	requireClosedByServer(t, rawConn(t, b, "127.0.0.3"), "a 6th unauthenticated connection")
	s := b.Stats()
	assert.Equal(t, int64(1), s.UnauthRefused)
	assert.Equal(t, int64(2), s.UnauthIPRefused)
	assert.Equal(t, 5, s.Connections)

	// A slot freed, a device takes it; authenticated, it leaves the count,
	// so devices from one address are not capped.
	require.NoError(t, held[0].Close())
	waitStats(t, b, func(s Stats) bool { return s.Unauthenticated == 4 }, "the closed connection released")
	for _, id := range []string{"dev-a", "dev-b", "dev-c", "dev-d", "dev-e"} {
		c, err := deviceFrom(t, b, id, "127.0.0.1")
		require.NoError(t, err, id)
		requireWorks(t, b, c, id)
	}
	s = b.Stats()
	assert.Equal(t, 4, s.Unauthenticated)
	assert.Equal(t, 9, s.Connections)
}

// TestBroker_PerAddressCapReleasesAConnectionOnceItsConnectIsRead: devices
// behind one address that reconnect at once, each waiting for a slow
// authentication, are not refused by the per-address cap (it counts sockets
// that have not said who they are), only bounded by the total.
func TestBroker_PerAddressCapReleasesAConnectionOnceItsConnectIsRead(t *testing.T) {
	release := make(chan struct{})
	var waiting atomic.Int32
	authenticate := func(ctx context.Context, _ auth.Connect) (fleet.Role, error) {
		waiting.Add(1)
		select {
		case <-release:
			return fleet.RoleDevice, nil
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
	b, _ := openBroker(t, Options{MaxUnauthenticatedPerIP: 2, Authenticate: authenticate}, nil)

	// One after another, so that no more than the cap of them are ever
	// between their accept and their CONNECT; all wait in authentication.
	const n = 5
	errs := make(chan error, n)
	for i := range n {
		go func() {
			c, err := deviceFrom(t, b, fmt.Sprintf("dev-%d", i), "127.0.0.1")
			if err == nil {
				c.Disconnect(0)
			}
			errs <- err
		}()
		require.Eventually(t, func() bool { return waiting.Load() == int32(i+1) }, waitFor, tick,
			"CONNECT %d reaches authentication; stats %+v", i, b.Stats())
	}
	assert.Equal(t, n, b.Stats().Unauthenticated)
	assert.Zero(t, b.Stats().UnauthIPRefused)
	close(release)
	for range n {
		require.NoError(t, <-errs)
	}

	// A socket that says nothing still counts against its address.
	held := []net.Conn{rawConn(t, b, "127.0.0.1"), rawConn(t, b, "127.0.0.1")}
	waitStats(t, b, func(s Stats) bool { return s.Unauthenticated == len(held) }, "idle sockets admitted")
	requireClosedByServer(t, rawConn(t, b, "127.0.0.1"), "a 3rd silent socket from one address")
	assert.Equal(t, int64(1), b.Stats().UnauthIPRefused)
}

func TestBroker_ConnectionCapRefusesNewConnectionsAndReportsDegraded(t *testing.T) {
	b, logs := openBroker(t, Options{MaxConnections: 3}, nil)
	dial(t, b, "dev-1")
	dial(t, b, "dev-2")
	assert.Empty(t, b.Degraded())
	idle := rawConn(t, b, "127.0.0.1")
	waitStats(t, b, func(s Stats) bool { return s.Connections == 3 }, "three connections")
	assert.Contains(t, b.Degraded(), "connection limit reached (3)")

	for i := range 5 {
		_, err := tryDial(t, clientOptions(b, "dev-3"))
		require.Error(t, err, "attempt %d over the cap", i)
	}
	assert.Equal(t, int64(5), b.Stats().ConnRefused)
	// One line for the first refusal; the others fall within logInterval.
	assert.Equal(t, 1, logs.count("mqtt connection refused: connection limit"), logs.dump())

	require.NoError(t, idle.Close())
	waitStats(t, b, func(s Stats) bool { return s.Connections == 2 }, "the idle connection released")
	assert.Empty(t, b.Degraded())
	c := dial(t, b, "dev-3")
	requireWorks(t, b, c, "dev-3")
}

func TestDefaultMaxConnections_LeavesFilesToTheRestOfTheProcess(t *testing.T) {
	for limit, want := range map[uint64]int{0: 0, 100: 50, 256: 128, 1024: 896, 20000: 17500, 1 << 20: 917504} {
		assert.Equal(t, want, DefaultMaxConnections(limit), "limit %d", limit)
	}
	b := New(Options{})
	assert.Equal(t, DefaultMaxConnections(fdLimit()), b.gate.maxTotal)
	assert.Positive(t, b.gate.maxTotal, "a cap from this process's limit")
}

// connectHeader is the fixed header of a CONNECT announcing n bytes.
func connectHeader(n int) []byte {
	h := []byte{0x10}
	for {
		d := byte(n % 128)
		n /= 128
		if n > 0 {
			d |= 0x80
		}
		h = append(h, d)
		if n == 0 {
			return h
		}
	}
}

// heapInUse returns the live heap after a collection.
// attack opens n connections from 127.0.0.1 that each send the fixed header
// of a CONNECT announcing size bytes and nothing more, and waits until the
// broker has read every header.
func attack(t *testing.T, b *Broker, n, size int) []net.Conn {
	t.Helper()
	before := atomic.LoadInt64(&b.srv.Info.BytesReceived)
	hdr := connectHeader(size)
	conns := make([]net.Conn, n)
	for i := range conns {
		conns[i] = rawConn(t, b, "127.0.0.1")
		_, err := conns[i].Write(hdr)
		require.NoError(t, err)
	}
	require.Eventually(t, func() bool {
		return atomic.LoadInt64(&b.srv.Info.BytesReceived)-before >= int64(n*len(hdr))
	}, waitFor, tick, "the broker read every header")
	return conns
}

func TestBroker_ConnectHeadersAnnouncingLargeBodiesHoldLittleMemory(t *testing.T) {
	const attackers = 1000
	b, _ := openBroker(t, Options{MaxUnauthenticated: -1, MaxUnauthenticatedPerIP: -1, ConnectTimeout: time.Hour}, nil)
	base := heapInUse()

	// 131,000 bytes: under the packet size limit, over the CONNECT limit.
	attack(t, b, attackers, 131000)
	grown := int64(heapInUse()) - int64(base)
	t.Logf("heap: %.1f MB before, %+.1f MB with %d connections announcing 131,000 bytes", float64(base)/1e6, float64(grown)/1e6, attackers)
	assert.Less(t, grown, int64(20<<20))
	waitStats(t, b, func(s Stats) bool { return s.ConnectTooLarge == attackers }, "every oversized CONNECT refused")

	// At the CONNECT limit, held open: each holds what it sent, not what it
	// announced, so they cost about what as many idle connections cost.
	base = heapInUse()
	for range attackers {
		rawConn(t, b, "127.0.0.1")
	}
	waitStats(t, b, func(s Stats) bool { return s.Unauthenticated == attackers }, "every idle connection held")
	idle := int64(heapInUse()) - int64(base)
	base = heapInUse()
	attack(t, b, attackers, DefaultMaxConnectSize)
	waitStats(t, b, func(s Stats) bool { return s.Unauthenticated == 2*attackers }, "every connection held")
	grown = int64(heapInUse()) - int64(base)
	t.Logf("heap: %+.1f MB with %d idle connections, %+.1f MB with as many announcing %d bytes",
		float64(idle)/1e6, attackers, float64(grown)/1e6, DefaultMaxConnectSize)
	assert.Less(t, grown-idle, int64(attackers*2048), "more than 2 KiB a connection beyond an idle one's")
}

func TestBroker_DeviceConnectsAndWorksWhileAttackersHoldConnections(t *testing.T) {
	b, _ := openBroker(t, Options{}, nil) // the defaults
	before := dial(t, b, "dev-before")

	// One source: idle connections beyond its cap, and oversized CONNECTs.
	var wg sync.WaitGroup
	for i := range 2 * DefaultMaxUnauthenticatedPerIP {
		c := rawConn(t, b, "127.0.0.9")
		if i%4 == 0 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _ = c.Write(connectHeader(131000))
			}()
		}
	}
	wg.Wait()
	waitStats(t, b, func(s Stats) bool { return s.UnauthIPRefused > 0 }, "the attacker met its cap")

	for i, id := range []string{"dev-x", "dev-y", "dev-z"} {
		c, err := deviceFrom(t, b, id, "127.0.0."+string(rune('2'+i)))
		require.NoError(t, err, id)
		requireWorks(t, b, c, id)
	}
	requireWorks(t, b, before, "dev-before")
	s := b.Stats()
	assert.LessOrEqual(t, s.Unauthenticated, DefaultMaxUnauthenticatedPerIP)
	assert.Empty(t, b.Degraded())
	t.Logf("stats: %+v", s)
}

// flakyListener fails Accept with EMFILE while fail is set.
type flakyListener struct {
	net.Listener
	fail  atomic.Bool
	tries atomic.Int64
}

func (l *flakyListener) Accept() (net.Conn, error) {
	if l.fail.Load() {
		l.tries.Add(1)
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	return l.Listener.Accept()
}

func TestListener_RetriesFailedAcceptsAndReportsThem(t *testing.T) {
	logs := &logStore{}
	opts := Options{}
	connLimitDefaults(&opts)
	g := newGate(opts, slog.New(logHandler{store: logs}))
	l := newListener("tcp", "127.0.0.1:0", nil, g)
	require.NoError(t, l.Init(nil))
	flaky := &flakyListener{Listener: l.ln}
	flaky.fail.Store(true)
	l.ln = flaky

	accepted := make(chan net.Conn, 1)
	served := make(chan struct{})
	go func() {
		defer close(served)
		l.Serve(func(_ string, c net.Conn) error {
			accepted <- c
			return c.Close()
		})
	}()
	t.Cleanup(func() {
		l.Close(func(string) {})
		<-served
	})

	require.Eventually(t, func() bool { return flaky.tries.Load() >= 6 }, waitFor, tick)
	assert.Contains(t, g.degraded(), "mqtt listener tcp cannot accept connections")
	assert.Contains(t, g.degraded(), "too many open files")
	assert.GreaterOrEqual(t, g.acceptErrors.Load(), int64(6))
	assert.Equal(t, 1, logs.count("mqtt listener cannot accept connections"), "one line per interval:\n%s", logs.dump())

	c, err := net.Dial("tcp", l.Address())
	require.NoError(t, err)
	defer c.Close()
	flaky.fail.Store(false)
	select {
	case <-accepted:
	case <-time.After(waitFor):
		t.Fatal("the connection waiting in the queue was not accepted once Accept worked again")
	}
	assert.Empty(t, g.degraded())
	assert.Equal(t, 1, logs.count("mqtt listener accepts connections again"))
}
