package broker

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Defaults of the connection limits (Options). A connection is
// unauthenticated from its accept until Options.Authenticate (or the
// client certificate) accepts its CONNECT; until then it is anyone's.
const (
	// DefaultConnectTimeout bounds the time from accept to a complete
	// CONNECT (the TLS handshake included), as mosquitto and EMQX do
	// (EMQX's idle_timeout, NATS's auth_timeout); a device on a slow
	// cellular link sends its CONNECT within a few round trips.
	DefaultConnectTimeout = 10 * time.Second
	// DefaultMaxUnauthenticated bounds the connections that have not
	// authenticated yet. Each costs about 5 KB (a goroutine, the client,
	// its read buffer and what it sent of its CONNECT), so the bound is a
	// few MB; honest clients stay in this state for a round trip and an
	// authentication, so 1,000 is a reconnection storm of many thousand
	// devices a second.
	DefaultMaxUnauthenticated = 1000
	// DefaultMaxUnauthenticatedPerIP bounds, per source address (an IPv6
	// /64, the block one subscriber gets), the connections whose CONNECT
	// has not been read yet: one host cannot take more than a quarter of
	// DefaultMaxUnauthenticated with sockets that say nothing. Once read,
	// a CONNECT waits for its authentication under the total bound only.
	// A site of devices behind one NAT that reconnects at once (a rollout
	// reboots them) has sockets in this state for as long as a busy broker
	// takes to read them: 2,000 devices from one address, 256 in flight,
	// took 4.7 s instead of 3.4 s with a cap of 64 (refused, they retry),
	// and the same as with no cap at 256.
	DefaultMaxUnauthenticatedPerIP = 256
	// DefaultMaxConnectSize is the largest CONNECT accepted (its remaining
	// length, checked before the body is read). A device's CONNECT holds
	// a client ID (64 bytes at most), its user name and secret, and a will
	// of a few dozen bytes: well under 1 KiB. 8 KiB leaves room for long
	// tokens and MQTT 5 properties.
	DefaultMaxConnectSize = 8 * 1024

	// fdReserve is the least number of file descriptors a derived
	// connection cap leaves to the rest of the process (the HTTP API and
	// its clients, the store's database and journal files, firmware
	// images, logs); above 1,024 an eighth of the limit is kept.
	fdReserve = 128

	// logInterval is the least time between two log lines about refused
	// connections or a failing listener; what falls between is counted
	// and summarised in the next line.
	logInterval = 10 * time.Second
	// acceptBackoffMin and acceptBackoffMax bound the wait before Accept
	// is tried again after it failed, doubling from one to the other (as
	// net/http's Server does).
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
)

// DefaultMaxConnections derives a connection cap from an fd limit: the
// limit minus a reserve of an eighth of it, at least fdReserve, but never
// less than half of it. A limit of 0 (unknown) gives 0 (no cap).
func DefaultMaxConnections(fdLimit uint64) int {
	if fdLimit == 0 {
		return 0
	}
	n := int(min(fdLimit, 1<<30))
	return max(n-max(fdReserve, n/8), n/2)
}

// Reasons a connection is refused at accept.
const (
	refuseTotal  = "connection limit"
	refuseUnauth = "unauthenticated connection limit"
	refusePerIP  = "unauthenticated connection limit per address"
)

// gate admits the connections of every listener of a broker: it applies
// the caps at accept, arms the CONNECT deadline, counts what it refuses and
// what ends before authenticating, and keeps the listeners' health.
type gate struct {
	maxTotal, maxUnauth, maxPerIP int           // 0: no cap
	connectTimeout                time.Duration // 0: none
	log                           *slog.Logger

	// Refusals and failures, read by Stats.
	refusedTotal, refusedUnauth, refusedPerIP atomic.Int64
	connectTimeouts, connectTooLarge          atomic.Int64
	acceptErrors                              atomic.Int64

	mu      sync.Mutex                // guards the fields below
	open    int                       // admitted connections not yet ended
	unauth  int                       // of those, not yet authenticated
	byAddr  map[netip.Prefix]int      // connections per source address whose CONNECT is not read yet
	pending map[net.Conn]pendingConn  // unauthenticated connections
	failing map[string]*acceptFailure // listener ID -> its failure, while Accept fails
	logs    map[string]*logEvery      // refusal reason -> its log throttle
}

// acceptFailure is the state of a listener whose Accept fails.
type acceptFailure struct {
	since  time.Time
	last   error
	errors int64
	log    logEvery
}

func newGate(opts Options, log *slog.Logger) *gate {
	return &gate{
		maxTotal:       max(opts.MaxConnections, 0),
		maxUnauth:      max(opts.MaxUnauthenticated, 0),
		maxPerIP:       max(opts.MaxUnauthenticatedPerIP, 0),
		connectTimeout: max(opts.ConnectTimeout, 0),
		log:            log,
		byAddr:         make(map[netip.Prefix]int),
		pending:        make(map[net.Conn]pendingConn),
		failing:        make(map[string]*acceptFailure),
		logs:           make(map[string]*logEvery),
	}
}

// sourceOf returns the address block that the per-address cap counts
// conn under: its IPv4 address, or the /64 of its IPv6 address.
func sourceOf(conn net.Conn) netip.Prefix {
	ap, err := netip.ParseAddrPort(conn.RemoteAddr().String())
	if err != nil {
		return netip.Prefix{} // not IP: all such connections share one slot count
	}
	a := ap.Addr().Unmap()
	if a.Is4() {
		return netip.PrefixFrom(a, 32)
	}
	p, _ := a.Prefix(64)
	return p
}

// admit applies the caps to a connection just accepted: it reports false
// (the caller closes it) over a cap, else counts it as open and
// unauthenticated and arms its CONNECT deadline.
func (g *gate) admit(conn net.Conn) bool {
	src := sourceOf(conn)
	g.mu.Lock()
	var refused string
	switch {
	case g.maxTotal > 0 && g.open >= g.maxTotal:
		refused = refuseTotal
		g.refusedTotal.Add(1)
	case g.maxUnauth > 0 && g.unauth >= g.maxUnauth:
		refused = refuseUnauth
		g.refusedUnauth.Add(1)
	case g.maxPerIP > 0 && g.byAddr[src] >= g.maxPerIP:
		refused = refusePerIP
		g.refusedPerIP.Add(1)
	default:
		g.open++
		g.unauth++
		g.byAddr[src]++
		g.pending[conn] = pendingConn{src: src, perAddr: true}
	}
	var throttle *logEvery
	if refused != "" {
		if throttle = g.logs[refused]; throttle == nil {
			throttle = &logEvery{}
			g.logs[refused] = throttle
		}
	}
	g.mu.Unlock()
	if refused != "" {
		if held, ok := throttle.allow(time.Now()); ok {
			g.log.Warn("mqtt connection refused: "+refused, "remote", conn.RemoteAddr().String(),
				"refused_since_last_line", held)
		}
		return false
	}
	if g.connectTimeout > 0 {
		// mochi sets the connection's deadline from the keepalive once the
		// CONNECT is read; until then this one holds.
		_ = conn.SetDeadline(time.Now().Add(g.connectTimeout))
	}
	return true
}

// pendingConn is an unauthenticated connection: its source address, and
// whether it still counts against that address's cap.
type pendingConn struct {
	src     netip.Prefix
	perAddr bool
}

// connectRead marks that conn's CONNECT has been read: it no longer counts
// against its address's cap, only against the total of unauthenticated
// connections, until its authentication ends. The per-address cap is for
// sockets that hold the broker without saying who they are; a site of
// devices behind one address reconnecting at once (after a reboot) waits
// for its authentications without being refused. Called by the hook.
func (g *gate) connectRead(conn net.Conn) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if p, ok := g.pending[conn]; ok && p.perAddr {
		g.releaseAddr(p.src)
		p.perAddr = false
		g.pending[conn] = p
	}
}

// authenticated marks conn authenticated: it leaves the unauthenticated
// counts. It is called by the hook, before the CONNACK.
func (g *gate) authenticated(conn net.Conn) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.leaveUnauthenticated(conn)
}

// leaveUnauthenticated drops conn from the unauthenticated counts, if it is
// there, and reports whether it was. g.mu must be held.
func (g *gate) leaveUnauthenticated(conn net.Conn) bool {
	p, ok := g.pending[conn]
	if !ok {
		return false
	}
	delete(g.pending, conn)
	g.unauth--
	if p.perAddr {
		g.releaseAddr(p.src)
	}
	return true
}

// releaseAddr takes one connection off src's count. g.mu must be held.
func (g *gate) releaseAddr(src netip.Prefix) {
	if g.byAddr[src]--; g.byAddr[src] <= 0 {
		delete(g.byAddr, src)
	}
}

// ended releases an admitted connection once mochi is done with it; err is
// what ended it. A connection that ends before authenticating because its
// CONNECT did not arrive in time, or was too large, is counted.
func (g *gate) ended(conn net.Conn, err error) {
	g.mu.Lock()
	g.open--
	unauth := g.leaveUnauthenticated(conn)
	g.mu.Unlock()
	if !unauth || err == nil {
		return
	}
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		g.connectTimeouts.Add(1)
		g.log.Debug("mqtt connection closed: no CONNECT in time", "remote", conn.RemoteAddr().String(), "timeout", g.connectTimeout)
	case errors.Is(err, packets.ErrPacketTooLarge):
		g.connectTooLarge.Add(1)
		g.log.Debug("mqtt connection closed: CONNECT too large", "remote", conn.RemoteAddr().String())
	}
}

// acceptFailed records a failed Accept on listener id and logs it, the
// first at once and then once per logInterval.
func (g *gate) acceptFailed(id string, err error, retry time.Duration) {
	g.acceptErrors.Add(1)
	now := time.Now()
	g.mu.Lock()
	f := g.failing[id]
	if f == nil {
		f = &acceptFailure{since: now}
		g.failing[id] = f
	}
	f.last = err
	f.errors++
	n, since := f.errors, f.since
	g.mu.Unlock()
	if _, ok := f.log.allow(now); ok {
		g.log.Warn("mqtt listener cannot accept connections; retrying", "listener", id, "error", err,
			"errors", n, "failing_for", now.Sub(since).Round(time.Millisecond), "retry_in", retry)
	}
}

// acceptOK records a successful Accept on listener id, which ends its
// failure if it had one.
func (g *gate) acceptOK(id string) {
	g.mu.Lock()
	f := g.failing[id]
	if f != nil {
		delete(g.failing, id)
	}
	g.mu.Unlock()
	if f != nil {
		g.log.Warn("mqtt listener accepts connections again", "listener", id, "errors", f.errors,
			"failed_for", time.Since(f.since).Round(time.Millisecond))
	}
}

// degraded returns why the broker cannot take new connections, or "".
func (g *gate) degraded() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	var reason string
	for id, f := range g.failing {
		if reason != "" {
			reason += "; "
		}
		reason += fmt.Sprintf("mqtt listener %s cannot accept connections since %s (%d errors): %v",
			id, f.since.UTC().Format(time.RFC3339), f.errors, f.last)
	}
	if g.maxTotal > 0 && g.open >= g.maxTotal {
		if reason != "" {
			reason += "; "
		}
		reason += fmt.Sprintf("mqtt connection limit reached (%d): new connections are refused", g.maxTotal)
	}
	return reason
}

// counts returns the open and the unauthenticated connections.
func (g *gate) counts() (open, unauth int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.open, g.unauth
}

// logEvery lets a log line through at most once per logInterval and counts
// the ones it held back.
type logEvery struct {
	mu   sync.Mutex // guards next and held
	next time.Time
	held int64
}

// allow reports whether a line may be logged at now and, if so, how many
// were held back since the last one.
func (e *logEvery) allow(now time.Time) (held int64, ok bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if now.Before(e.next) {
		e.held++
		return 0, false
	}
	held, e.held = e.held, 0
	e.next = now.Add(logInterval)
	return held, true
}

// listener is the broker's TCP (or TLS) listener for mochi. Unlike
// mochi's listeners.TCP, whose accept loop returns on the first error (a
// full fd table, EMFILE, then stops the broker taking connections for
// good), it retries a failed Accept after a backoff and reports the failure
// through the gate, which also admits every connection it accepts.
type listener struct {
	id   string
	addr string
	tls  *tls.Config // nil: plain TCP
	gate *gate

	ln   net.Listener  // set by Init
	end  atomic.Bool   // set by Close
	done chan struct{} // closed by Close: ends a backoff wait
	once sync.Once     // closes done
}

var _ listeners.Listener = (*listener)(nil)

func newListener(id, addr string, tlsConfig *tls.Config, g *gate) *listener {
	return &listener{id: id, addr: addr, tls: tlsConfig, gate: g, done: make(chan struct{})}
}

// ID returns the listener's ID.
func (l *listener) ID() string { return l.id }

// Protocol returns "tcp", as mochi's TCP listener does for TLS too.
func (l *listener) Protocol() string { return "tcp" }

// Address returns the bound address once Init has run.
func (l *listener) Address() string {
	if l.ln != nil {
		return l.ln.Addr().String()
	}
	return l.addr
}

// Init binds the address.
func (l *listener) Init(*slog.Logger) error {
	ln, err := net.Listen("tcp", l.addr)
	if err != nil {
		return err
	}
	if l.tls != nil {
		ln = tls.NewListener(ln, l.tls)
	}
	l.ln = ln
	return nil
}

// Serve accepts connections until Close and hands each one the gate admits
// to establish on a goroutine of its own. A failed Accept is tried again
// after a backoff doubling from acceptBackoffMin to acceptBackoffMax; the
// connection that failed stays in the kernel's queue meanwhile.
func (l *listener) Serve(establish listeners.EstablishFn) {
	var backoff time.Duration
	for !l.end.Load() {
		conn, err := l.ln.Accept()
		if err != nil {
			if l.end.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			backoff = min(max(2*backoff, acceptBackoffMin), acceptBackoffMax)
			l.gate.acceptFailed(l.id, err, backoff)
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-l.done:
				t.Stop()
				return
			}
			continue
		}
		if backoff > 0 {
			backoff = 0
			l.gate.acceptOK(l.id)
		}
		if l.end.Load() || !l.gate.admit(conn) {
			_ = conn.Close()
			continue
		}
		go func() {
			err := establish(l.id, conn) // closes conn before it returns
			l.gate.ended(conn, err)
		}()
	}
}

// Close stops accepting and has closeClients close the listener's clients.
func (l *listener) Close(closeClients listeners.CloseFn) {
	if l.end.CompareAndSwap(false, true) {
		l.once.Do(func() { close(l.done) })
		closeClients(l.id)
	}
	if l.ln != nil {
		_ = l.ln.Close()
	}
}

// connLimitDefaults fills the connection limits of opts left at zero with
// their defaults and turns the negative ones (no limit) into zero.
func connLimitDefaults(opts *Options) {
	orDefault := func(v *int, def int) {
		switch {
		case *v == 0:
			*v = def
		case *v < 0:
			*v = 0
		}
	}
	orDefault(&opts.MaxConnections, DefaultMaxConnections(fdLimit()))
	orDefault(&opts.MaxUnauthenticated, DefaultMaxUnauthenticated)
	orDefault(&opts.MaxUnauthenticatedPerIP, DefaultMaxUnauthenticatedPerIP)
	switch {
	case opts.ConnectTimeout == 0:
		opts.ConnectTimeout = DefaultConnectTimeout
	case opts.ConnectTimeout < 0:
		opts.ConnectTimeout = 0
	}
	if opts.MaxConnectSize == 0 {
		opts.MaxConnectSize = DefaultMaxConnectSize
	}
}

// stats adds the gate's counts to s.
func (g *gate) stats(s *Stats) {
	s.Connections, s.Unauthenticated = g.counts()
	s.ConnRefused = g.refusedTotal.Load()
	s.UnauthRefused = g.refusedUnauth.Load()
	s.UnauthIPRefused = g.refusedPerIP.Load()
	s.ConnectTimeouts = g.connectTimeouts.Load()
	s.ConnectTooLarge = g.connectTooLarge.Load()
	s.AcceptErrors = g.acceptErrors.Load()
}

// Degraded returns why the broker cannot take new connections (a listener
// whose Accept fails, such as for want of file descriptors, or the
// connection limit reached), or "" when it can. It is a health check for
// the HTTP API.
func (b *Broker) Degraded() string {
	return b.gate.degraded()
}
