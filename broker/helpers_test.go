package broker

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/stretchr/testify/require"
)

const (
	// waitFor bounds every wait for what must happen. A wait returns as
	// soon as it holds, so the bound only decides when a test gives up: on
	// a loaded machine under the race detector, delivering 20,000 stored
	// statuses takes longer than 5 s.
	waitFor = 30 * time.Second
	tick    = 5 * time.Millisecond
)

// logStore keeps every log record so tests can wait for one and print them
// when they fail. It never writes to testing.T, since mochi may log after a
// test returns.
type logStore struct {
	mu   sync.Mutex // guards recs
	recs []string
}

func (s *logStore) has(msg string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range s.recs {
		if strings.HasPrefix(r, msg) {
			return true
		}
	}
	return false
}

func (s *logStore) dump() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Join(s.recs, "\n")
}

// count returns how many records start with msg.
func (s *logStore) count(msg string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, r := range s.recs {
		if strings.HasPrefix(r, msg) {
			n++
		}
	}
	return n
}

// logHandler is a slog.Handler feeding a logStore.
type logHandler struct {
	store *logStore
	attrs string
}

func (h logHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h logHandler) Handle(_ context.Context, r slog.Record) error {
	var sb strings.Builder
	sb.WriteString(r.Message)
	sb.WriteString(h.attrs)
	r.Attrs(func(a slog.Attr) bool {
		sb.WriteString(" " + a.String())
		return true
	})
	h.store.mu.Lock()
	h.store.recs = append(h.store.recs, sb.String())
	h.store.mu.Unlock()
	return nil
}

func (h logHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	for _, a := range attrs {
		h.attrs += " " + a.String()
	}
	return h
}

func (h logHandler) WithGroup(string) slog.Handler { return h }

// openBroker starts a broker on a free loopback port; it closes when the test ends.
func openBroker(t testing.TB, opts Options, presence func(string, bool)) (*Broker, *logStore) {
	t.Helper()
	logs := &logStore{}
	opts.Addr = "127.0.0.1:0"
	opts.Logger = slog.New(logHandler{store: logs})
	b := New(opts)
	if presence != nil {
		b.OnPresence(presence)
	}
	require.NoError(t, b.Open())
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("broker log:\n%s", logs.dump())
		}
	})
	t.Cleanup(func() { require.NoError(t, b.Close()) })
	return b, logs
}

// clientOptions are the options of a paho test client of b.
func clientOptions(b *Broker, id string) *paho.ClientOptions {
	return paho.NewClientOptions().
		AddBroker("tcp://" + b.Addr()).
		SetClientID(id).
		SetProtocolVersion(4). // no fallback to 3.1 after a refusal
		SetCleanSession(true).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetConnectTimeout(waitFor).
		SetKeepAlive(30 * time.Second)
}

// tryDial connects a paho client and returns the connect error.
func tryDial(t testing.TB, o *paho.ClientOptions) (paho.Client, error) {
	t.Helper()
	c := paho.NewClient(o)
	tok := c.Connect()
	require.True(t, tok.WaitTimeout(waitFor), "connect timed out")
	if err := tok.Error(); err != nil {
		return nil, err
	}
	t.Cleanup(func() {
		if c.IsConnectionOpen() {
			c.Disconnect(50)
		}
	})
	return c, nil
}

// dial connects a paho client that must be accepted.
func dial(t testing.TB, b *Broker, id string) paho.Client {
	t.Helper()
	c, err := tryDial(t, clientOptions(b, id))
	require.NoError(t, err)
	return c
}

// subscribe subscribes c to filter and returns the SUBACK return code.
func subscribe(t testing.TB, c paho.Client, filter string, qos byte, handler paho.MessageHandler) byte {
	t.Helper()
	tok := c.Subscribe(filter, qos, handler)
	require.True(t, tok.WaitTimeout(waitFor), "subscribe timed out")
	require.NoError(t, tok.Error())
	code, ok := tok.(*paho.SubscribeToken).Result()[filter]
	require.True(t, ok, "no SUBACK code for %s", filter)
	return code
}

// publish publishes from c and waits for paho to hand the message over.
func publish(t testing.TB, c paho.Client, topic string, qos byte, retain bool, payload string) {
	t.Helper()
	tok := c.Publish(topic, qos, retain, payload)
	require.True(t, tok.WaitTimeout(waitFor), "publish timed out")
	require.NoError(t, tok.Error())
}

// message is one received message.
type message struct {
	topic   string
	payload string
	retain  bool
}

// inbox collects received messages; its handlers never block.
type inbox struct {
	mu   sync.Mutex // guards msgs
	msgs []message
}

func (in *inbox) add(topic string, payload []byte, retain bool) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.msgs = append(in.msgs, message{topic: topic, payload: string(payload), retain: retain})
}

// paho is a paho message handler.
func (in *inbox) paho(_ paho.Client, m paho.Message) { in.add(m.Topic(), m.Payload(), m.Retained()) }

// inline is a Broker.Subscribe handler.
func (in *inbox) inline(topic string, payload []byte) { in.add(topic, payload, false) }

func (in *inbox) all() []message {
	in.mu.Lock()
	defer in.mu.Unlock()
	return append([]message(nil), in.msgs...)
}

func (in *inbox) topics() []string {
	var ts []string
	for _, m := range in.all() {
		ts = append(ts, m.topic)
	}
	return ts
}

// waitTopic waits until a message on topic has arrived.
func (in *inbox) waitTopic(t testing.TB, topic string) message {
	t.Helper()
	var got message
	require.Eventually(t, func() bool {
		for _, m := range in.all() {
			if m.topic == topic {
				got = m
				return true
			}
		}
		return false
	}, waitFor, tick, "no message on %s; got %v", topic, in.topics())
	return got
}

// presenceLog records presence callbacks.
type presenceLog struct {
	mu     sync.Mutex // guards events
	events []string
}

func (p *presenceLog) record(id string, online bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	state := "offline"
	if online {
		state = "online"
	}
	p.events = append(p.events, id+" "+state)
}

func (p *presenceLog) all() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.events...)
}

func (p *presenceLog) last() string {
	ev := p.all()
	if len(ev) == 0 {
		return ""
	}
	return ev[len(ev)-1]
}
