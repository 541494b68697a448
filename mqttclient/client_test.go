package mqttclient

import (
	"bufio"
	"log/slog"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/mosquitto"
	"github.com/flotaio/flota/internal/protocol"
)

// startMosquitto runs a real mosquitto with the repository's configuration.
func startMosquitto(t *testing.T) *mosquitto.Server {
	t.Helper()
	s := &mosquitto.Server{Dir: t.TempDir(), ConfigDir: "../testdata/mosquitto"}
	require.NoError(t, s.Start())
	t.Cleanup(func() {
		assert.NoError(t, s.Stop())
		if t.Failed() {
			t.Logf("mosquitto log:\n%s", s.Log())
		}
	})
	return s
}

// openClient opens a Client as the orchestrator's user.
func openClient(t *testing.T, s *mosquitto.Server, opts Options) *Client {
	t.Helper()
	opts.URL = s.URL()
	opts.Username = mosquitto.OrchestratorUser
	opts.Password = s.Password(mosquitto.OrchestratorUser)
	opts.MaxReconnectInterval = 500 * time.Millisecond
	c := New(opts)
	require.NoError(t, c.Open())
	t.Cleanup(func() { assert.NoError(t, c.Close()) })
	return c
}

// device connects a plain paho client as device id (anonymous, as the
// mosquitto configuration allows).
func device(t *testing.T, s *mosquitto.Server, id string, configure func(*mqtt.ClientOptions)) mqtt.Client {
	t.Helper()
	o := mqtt.NewClientOptions().AddBroker(s.URL()).SetClientID(id).SetAutoReconnect(false)
	if configure != nil {
		configure(o)
	}
	c := mqtt.NewClient(o)
	tok := c.Connect()
	require.True(t, tok.WaitTimeout(10*time.Second))
	require.NoError(t, tok.Error())
	t.Cleanup(func() { c.Disconnect(0) })
	return c
}

func await(t *testing.T, tok mqtt.Token) {
	t.Helper()
	require.True(t, tok.WaitTimeout(10*time.Second), "no answer from the broker")
	require.NoError(t, tok.Error())
}

func eventually(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// recorder collects messages handed to a handler.
type recorder struct {
	mu   sync.Mutex // guards msgs
	msgs []string   // "topic payload"
}

func (r *recorder) handle(topic string, payload []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, topic+" "+string(payload))
}

func (r *recorder) has(msg string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range r.msgs {
		if m == msg {
			return true
		}
	}
	return false
}

func (r *recorder) count(msg string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, m := range r.msgs {
		if m == msg {
			n++
		}
	}
	return n
}

func TestClient_PublishAndSubscribeThroughMosquitto(t *testing.T) {
	s := startMosquitto(t)
	c := openClient(t, s, Options{})
	var up recorder
	require.NoError(t, c.Subscribe(protocol.UpFilter, up.handle))

	got := make(chan string, 1)
	d := device(t, s, "dev-1", nil)
	await(t, d.Subscribe(protocol.DownFilter("dev-1"), 1, func(_ mqtt.Client, m mqtt.Message) {
		got <- m.Topic() + " " + string(m.Payload())
	}))

	buf := []byte("offer-1")
	require.NoError(t, c.Publish(protocol.DownTopic("dev-1", protocol.KindOffer), buf, false, 1))
	copy(buf, "XXXXXXX") // Publish must not keep the caller's buffer
	select {
	case m := <-got:
		assert.Equal(t, "flota/devices/dev-1/down/offer offer-1", m)
	case <-time.After(10 * time.Second):
		t.Fatal("device got no offer")
	}

	await(t, d.Publish(protocol.UpTopic("dev-1", protocol.KindHello), 1, false, "hello-1"))
	eventually(t, func() bool { return up.has("flota/devices/dev-1/up/hello hello-1") }, "hello received")
	eventually(t, func() bool { return c.Stats().InFlight == 0 }, "publish slot released")
	st := c.Stats()
	assert.True(t, st.Connected)
	assert.EqualValues(t, 1, st.Published)
	assert.Zero(t, st.PublishErrors+st.AckTimeouts+st.Busy)
}

func TestClient_PresenceFromRetainedStatusAndLastWill(t *testing.T) {
	s := startMosquitto(t)

	// A device that went online before the orchestrator connected: its
	// retained status tells the orchestrator when it subscribes.
	early := device(t, s, "dev-early", nil)
	await(t, early.Publish(protocol.UpTopic("dev-early", protocol.KindStatus), 1, true, `{"v":1,"online":true,"conn":3}`))

	type change struct {
		id     string
		online bool
		conn   uint32
	}
	var mu sync.Mutex // guards changes
	var changes []change
	seen := func(ch change) bool {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range changes {
			if c == ch {
				return true
			}
		}
		return false
	}
	c := New(Options{URL: s.URL(), Username: mosquitto.OrchestratorUser, Password: s.Password(mosquitto.OrchestratorUser)})
	c.OnPresence(func(id string, online bool, conn uint32) {
		mu.Lock()
		changes = append(changes, change{id, online, conn})
		mu.Unlock()
	})
	require.NoError(t, c.Open())
	t.Cleanup(func() { assert.NoError(t, c.Close()) })
	// The engine's broader subscription replaces the status one at the
	// broker; every message still arrives once.
	var up recorder
	require.NoError(t, c.Subscribe(protocol.UpFilter, up.handle))
	eventually(t, func() bool { return seen(change{"dev-early", true, 3}) }, "retained online status")

	// A device that dies without DISCONNECT: the broker publishes its will,
	// which names the connection (protocol 1.1).
	bin, err := exec.LookPath("mosquitto_sub")
	require.NoError(t, err, "mosquitto_sub must be installed (.ci/run installs it)")
	sub := exec.Command(bin, "-h", "127.0.0.1", "-p", strconv.Itoa(s.Port), "-i", "dev-will", "-q", "1",
		"-t", protocol.DownFilter("dev-will"),
		"--will-topic", protocol.UpTopic("dev-will", protocol.KindStatus),
		"--will-payload", `{"v":1,"online":false,"conn":7}`, "--will-qos", "1", "--will-retain")
	out, err := sub.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, sub.Start())
	t.Cleanup(func() { _ = sub.Process.Kill(); _ = sub.Wait() })
	printed := make(chan struct{}, 1)
	go func() { // ends when mosquitto_sub dies and its stdout closes
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			select {
			case printed <- struct{}{}:
			default:
			}
		}
	}()
	// mosquitto_sub prints what reaches it: once a probe does, it is
	// connected and subscribed, and its will is armed.
	deadline := time.Now().Add(20 * time.Second)
	for ready := false; !ready; {
		require.True(t, time.Now().Before(deadline), "mosquitto_sub never got a probe")
		require.NoError(t, c.Publish(protocol.DownTopic("dev-will", "probe"), []byte("probe"), false, 1))
		select {
		case <-printed:
			ready = true
		case <-time.After(100 * time.Millisecond):
		}
	}
	require.NoError(t, sub.Process.Signal(syscall.SIGKILL))
	eventually(t, func() bool { return seen(change{"dev-will", false, 7}) }, "last will: offline")

	// Garbage on a status topic is counted, not passed on.
	await(t, early.Publish(protocol.UpTopic("dev-early", protocol.KindStatus), 1, false, `{"online":1}`))
	eventually(t, func() bool { return c.Stats().BadStatus == 1 }, "bad status counted")
	assert.Equal(t, 1, up.count(`flota/devices/dev-early/up/status {"online":1}`), "one delivery per message")
}

// logBuffer is an io.Writer for a test's logger.
type logBuffer struct {
	mu sync.Mutex // guards b
	b  strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestClient_ResubscribesAfterBrokerRestart(t *testing.T) {
	s := startMosquitto(t)
	var logs logBuffer
	c := openClient(t, s, Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	var up recorder
	require.NoError(t, c.Subscribe(protocol.UpFilter, up.handle))

	require.NoError(t, s.Kill())
	eventually(t, func() bool { return !c.Connected() }, "connection lost")
	err := c.Publish(protocol.DownTopic("dev-1", protocol.KindOffer), []byte("x"), false, 1)
	require.ErrorIs(t, err, ErrNotConnected)

	require.NoError(t, s.Start()) // same port, no state: the session is gone
	eventually(t, func() bool { return c.Connected() && c.Stats().Connects >= 2 }, "reconnected")
	d := device(t, s, "dev-1", nil)
	// The subscription comes back shortly after the connection: repeat
	// the report until it arrives.
	eventually(t, func() bool {
		await(t, d.Publish(protocol.UpTopic("dev-1", protocol.KindAck), 1, false, "ack-1"))
		return up.has("flota/devices/dev-1/up/ack ack-1")
	}, "report received after the restart")
	assert.GreaterOrEqual(t, c.Stats().ConnectionsLost, int64(1))
	// The log says where it reconnected and after how long.
	assert.Regexp(t, `msg="reconnected to the broker" .*node=`+regexp.QuoteMeta(s.URL())+` down_for=[1-9][0-9.]*m?s`, logs.String())
}

func TestClient_BoundsPublishesAwaitingAck(t *testing.T) {
	s := startMosquitto(t)
	c := openClient(t, s, Options{MaxInFlight: 2, PublishWait: 50 * time.Millisecond})
	topic := protocol.DownTopic("dev-1", protocol.KindOffer)

	require.NoError(t, s.Pause()) // the broker stops acknowledging
	require.NoError(t, c.Publish(topic, []byte("1"), false, 1))
	require.NoError(t, c.Publish(topic, []byte("2"), false, 1))
	require.ErrorIs(t, c.Publish(topic, []byte("3"), false, 1), ErrBusy)
	assert.Equal(t, 2, c.Stats().InFlight)
	assert.EqualValues(t, 1, c.Stats().Busy)
	// QoS 0 takes no slot.
	require.NoError(t, c.Publish(topic, []byte("chunk"), false, 0))

	require.NoError(t, s.Continue())
	eventually(t, func() bool { return c.Stats().InFlight == 0 }, "slots released by PUBACKs")
	require.NoError(t, c.Publish(topic, []byte("4"), false, 1))
}

func TestClient_OpenFails(t *testing.T) {
	s := startMosquitto(t)
	for name, opts := range map[string]Options{
		"wrong password":    {URL: s.URL(), Username: mosquitto.OrchestratorUser, Password: "wrong"},
		"bad scheme":        {URL: "http://" + s.Addr()},
		"no host":           {URL: "tcp://"},
		"tls files for tcp": {URL: s.URL(), CAFile: "ca.pem"},
		"missing CA file":   {URL: "ssl://" + s.Addr(), CAFile: "does-not-exist.pem"},
		"cert without key":  {URL: "ssl://" + s.Addr(), CertFile: "cert.pem"},
	} {
		t.Run(name, func(t *testing.T) {
			opts.ConnectTimeout = 5 * time.Second
			c := New(opts)
			require.Error(t, c.Open())
			require.NoError(t, c.Close())
			require.ErrorIs(t, c.Publish("flota/x", nil, false, 1), fleet.ErrClosed)
		})
	}
}

func TestClient_CloseIsIdempotent(t *testing.T) {
	s := startMosquitto(t)
	c := New(Options{URL: s.URL(), Username: mosquitto.OrchestratorUser, Password: s.Password(mosquitto.OrchestratorUser)})
	require.NoError(t, c.Close()) // before Open
	c = New(Options{URL: s.URL(), Username: mosquitto.OrchestratorUser, Password: s.Password(mosquitto.OrchestratorUser)})
	require.NoError(t, c.Open())
	require.NoError(t, c.Close())
	require.NoError(t, c.Close())
	require.ErrorIs(t, c.Subscribe("flota/#", func(string, []byte) {}), fleet.ErrClosed)
}
