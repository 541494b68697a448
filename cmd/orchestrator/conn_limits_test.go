package main

// The embedded broker's connection limits against a real orchestrator
// process run with a low file descriptor limit.

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/httpapi"
	"github.com/flotaio/flota/internal/protocol"
)

// healthOf asks GET /api/v1/health through client.
func (s *server) healthOf(client *http.Client) httpapi.Health {
	s.t.Helper()
	resp, err := client.Get(s.url + "/api/v1/health")
	require.NoError(s.t, err)
	defer resp.Body.Close()
	var h httpapi.Health
	body, err := io.ReadAll(resp.Body)
	require.NoError(s.t, err)
	require.NoError(s.t, json.Unmarshal(body, &h), "%s", body)
	return h
}

// deviceConnects reports whether a device can connect to the server's
// broker and publish at QoS 1 (anonymous mode).
func (s *server) deviceConnects(id string) bool {
	s.t.Helper()
	host, port, _ := strings.Cut(s.mqttAddr, ":")
	_, ok := runTool(s.t, requireTool(s.t, "mosquitto_pub"), "-h", host, "-p", port, "-i", id,
		"-q", "1", "-t", "flota/devices/"+id+"/up/ack", "-m", "x")
	return ok
}

// dialFrom opens a TCP connection to addr from the loopback address ip.
func dialFrom(ip, addr string) (net.Conn, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
	return d.Dial("tcp", addr)
}

func closeAll(conns []net.Conn) {
	for _, c := range conns {
		_ = c.Close()
	}
}

func TestE2E_BrokerSurvivesFileDescriptorExhaustion(t *testing.T) {
	prlimit := requireTool(t, "prlimit")
	// No connection limits: the attackers take every descriptor.
	s := startServerUnder(t, []string{prlimit, "--nofile=128:128", "--"}, "--allow-anonymous",
		"--mqtt-max-connections", "-1", "--mqtt-max-unauthenticated", "-1",
		"--mqtt-max-unauthenticated-per-ip", "-1", "--mqtt-connect-timeout", "10m")
	require.True(t, s.deviceConnects("dev-before"))

	// A connection to the API opened before the descriptors run out, kept
	// alive for every health request: a new one could not be accepted.
	api := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}, Timeout: 30 * time.Second}
	require.Equal(t, "ok", s.healthOf(api).Status)

	var attackers []net.Conn
	t.Cleanup(func() { closeAll(attackers) })
	var h httpapi.Health
	poll(t, time.Minute, func() bool {
		for range 16 {
			c, err := net.DialTimeout("tcp", s.mqttAddr, 5*time.Second)
			if err != nil {
				break // the kernel's queue of connections not accepted is full
			}
			attackers = append(attackers, c)
		}
		h = s.healthOf(api)
		return h.Status == "degraded"
	}, "health degraded")
	t.Logf("degraded after %d idle connections: %v", len(attackers), h.Reasons)
	require.Len(t, h.Reasons, 1)
	assert.Contains(t, h.Reasons[0], "mqtt listener tcp cannot accept connections")
	assert.Contains(t, h.Reasons[0], "too many open files")

	// The attackers leave; the broker accepts again by itself.
	closeAll(attackers)
	left := time.Now()
	poll(t, time.Minute, func() bool { return s.deviceConnects("dev-after") }, "a device connects after the attack")
	t.Logf("a device connected %s after the attackers left", time.Since(left).Round(time.Millisecond))
	poll(t, time.Minute, func() bool { return s.healthOf(api).Status == "ok" }, "health ok again")

	log := s.logString()
	assert.Contains(t, log, "mqtt listener accepts connections again")
	// The failure is logged once per 10 s, not once per failed accept.
	failures := strings.Count(log, "mqtt listener cannot accept connections")
	assert.GreaterOrEqual(t, failures, 1)
	assert.LessOrEqual(t, failures, 1+int(time.Since(left)/(10*time.Second))+6, log)
}

func TestE2E_DefaultConnectionLimitKeepsFilesForTheAPI(t *testing.T) {
	prlimit := requireTool(t, "prlimit")
	// Defaults: 256 descriptors leave 128 connections (the rest for the
	// API and the store), 256 unauthenticated ones per address.
	s := startServerUnder(t, []string{prlimit, "--nofile=256:256", "--"}, "--allow-anonymous", "--mqtt-connect-timeout", "10m")

	var attackers []net.Conn
	t.Cleanup(func() { closeAll(attackers) })
	for i := range 200 {
		c, err := dialFrom("127.0.0."+strconv.Itoa(10+i%4), s.mqttAddr)
		require.NoError(t, err)
		attackers = append(attackers, c)
	}
	// A new connection to the API is still accepted, and says why devices
	// cannot connect.
	var h httpapi.Health
	poll(t, time.Minute, func() bool {
		h = s.healthOf(&http.Client{Timeout: 30 * time.Second})
		return h.Status == "degraded"
	}, "health degraded")
	t.Logf("health with %d idle connections: %v", len(attackers), h.Reasons)
	assert.Contains(t, strings.Join(h.Reasons, "; "), "mqtt connection limit reached (128)")
	assert.False(t, s.deviceConnects("dev-during"), "over the connection limit")

	closeAll(attackers)
	left := time.Now()
	poll(t, time.Minute, func() bool { return s.deviceConnects("dev-after") }, "a device connects after the attack")
	t.Logf("a device connected %s after the attackers left", time.Since(left).Round(time.Millisecond))
	assert.Equal(t, "ok", s.healthOf(&http.Client{Timeout: 30 * time.Second}).Status)
	assert.Contains(t, s.logString(), "mqtt connection refused: connection limit")
}

func TestMQTTTLS_StalledHandshakeIsClosedAfterConnectTimeout(t *testing.T) {
	ca := newTestCA(t, "flota-test-ca")
	cert, key := ca.issue("broker", true)
	m, r := secureMain(t, func(c *Config) {
		c.MQTTTLSAddr, c.TLSCert, c.TLSKey = "127.0.0.1:0", cert, key
		c.Conns.ConnectTimeout = 300 * time.Millisecond
	})
	silent, err := net.Dial("tcp", m.MQTTTLSAddr())
	require.NoError(t, err)
	defer silent.Close()
	partial, err := net.Dial("tcp", m.MQTTTLSAddr())
	require.NoError(t, err)
	defer partial.Close()
	_, err = partial.Write([]byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01}) // the start of a ClientHello
	require.NoError(t, err)

	for _, c := range []net.Conn{silent, partial} {
		require.NoError(t, c.SetReadDeadline(time.Now().Add(waitFor)))
		_, err := io.ReadAll(c)
		require.NoError(t, err, "closed by the broker, not by the read deadline")
	}
	require.Eventually(t, func() bool { return m.Broker.Stats().ConnectTimeouts == 2 }, waitFor, 10*time.Millisecond)

	// A client that completes its handshake and CONNECT in time is served.
	secret := account(t, m, fleet.RoleDevice, "dev-a")
	topic := protocol.UpTopic("dev-a", protocol.KindAck)
	out, ok := tlsPub(t, m, "--cafile", ca.file, "-i", "dev-a", "-u", "dev-a", "-P", secret, "-t", topic)
	require.True(t, ok, "TLS publish refused: %s", out)
	routedOnce(t, r, topic)
}
