package httpapi

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
)

func TestOpenAPI_DescribesEveryRouteAndNothingElse(t *testing.T) {
	s := &Server{}
	base := newTestAPI(t, s)
	var doc struct {
		OpenAPI string                                `json:"openapi"`
		Paths   map[string]map[string]json.RawMessage `json:"paths"`
	}
	resp := call(t, "GET", base+"/api/v1/openapi.json", nil, &doc)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.True(t, strings.HasPrefix(doc.OpenAPI, "3."), doc.OpenAPI)

	registered := map[string]bool{}
	for _, r := range s.routes() {
		key := strings.ToLower(r.method) + " " + r.pattern
		registered[key] = true
		_, ok := doc.Paths[r.pattern][strings.ToLower(r.method)]
		assert.True(t, ok, "route %s %s is not in openapi.json", r.method, r.pattern)

		// The route is really served: the mux knows the method and path.
		path := strings.ReplaceAll(r.pattern, "{id}", "x")
		req, err := http.NewRequest(r.method, base+path, nil)
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+testAdminToken)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		resp, err := http.DefaultClient.Do(req.WithContext(ctx))
		require.NoError(t, err)
		resp.Body.Close()
		cancel()
		assert.NotEqual(t, http.StatusMethodNotAllowed, resp.StatusCode, "%s %s", r.method, path)
		switch r.pattern {
		case "/api/v1/events/stream":
		case "/api/v1/backup":
			assert.Equal(t, "application/x-tar", resp.Header.Get("Content-Type"), "%s %s answers a tar archive", r.method, path)
		default:
			assert.Equal(t, "application/json", resp.Header.Get("Content-Type"), "%s %s answers JSON", r.method, path)
		}
	}
	for p, ops := range doc.Paths {
		for method := range ops {
			assert.True(t, registered[method+" "+p], "openapi.json documents %s %s, which is not a route", method, p)
		}
	}

	// Every $ref resolves.
	var raw map[string]any
	require.NoError(t, json.Unmarshal(openAPIDoc, &raw))
	for _, m := range regexp.MustCompile(`"\$ref": *"#/([^"]+)"`).FindAllStringSubmatch(string(openAPIDoc), -1) {
		var node any = raw
		for _, part := range strings.Split(m[1], "/") {
			obj, ok := node.(map[string]any)
			require.True(t, ok, "$ref %s", m[1])
			node, ok = obj[part]
			require.True(t, ok, "$ref %s does not resolve", m[1])
		}
	}
}

func TestServer_UnknownAPIPathIsJSONAndRootIsDashboard(t *testing.T) {
	base := newTestAPI(t, &Server{})
	callError(t, "GET", base+"/api/v1/nope", nil, http.StatusNotFound, CodeNotFound)

	// Names an fs.FS refuses are no file, not a server error (found by
	// FuzzServer_Handler).
	for _, path := range []string{"/%DD", "/a/%ff%fe.js", "/nope.js"} {
		resp, err := http.Get(base + path)
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, http.StatusNotFound, resp.StatusCode, path)
	}

	for path, want := range map[string]string{"/": "<title>flota</title>", "/app.js": "EventSource", "/app.css": ".progress"} {
		resp, err := http.Get(base + path)
		require.NoError(t, err)
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.NoError(t, err)
		assert.Equal(t, http.StatusOK, resp.StatusCode, path)
		assert.Contains(t, string(body), want, path)
		// The page holds an API token: no framing, no foreign script, no
		// Referer.
		assert.Contains(t, resp.Header.Get("Content-Security-Policy"), "frame-ancestors 'none'", path)
		assert.Contains(t, resp.Header.Get("Content-Security-Policy"), "default-src 'self'", path)
		assert.Equal(t, "DENY", resp.Header.Get("X-Frame-Options"), path)
		assert.Equal(t, "no-referrer", resp.Header.Get("Referrer-Policy"), path)
	}
}

func TestServer_FleetSummary(t *testing.T) {
	s := &Server{}
	base := newTestAPI(t, s)
	seedDevices(t, s.Store,
		fleet.Device{ID: "a", Model: "m1", Version: "1.0", Online: true},
		fleet.Device{ID: "b", Model: "m1", Version: "1.0"},
		fleet.Device{ID: "c", Model: "m1", Version: "2.0", Online: true},
		fleet.Device{ID: "d", Model: "m2", Version: "1.0"},
	)
	var out struct {
		Total, Online, Offline int
		Versions               []struct {
			Model, Version  string
			Devices, Online int
		}
	}
	call(t, "GET", base+"/api/v1/fleet/summary", nil, &out)
	assert.Equal(t, 4, out.Total)
	assert.Equal(t, 2, out.Online)
	assert.Equal(t, 2, out.Offline)
	require.Len(t, out.Versions, 3)
	assert.Equal(t, "m1", out.Versions[0].Model)
	assert.Equal(t, "1.0", out.Versions[0].Version)
	assert.Equal(t, 2, out.Versions[0].Devices)
	assert.Equal(t, 1, out.Versions[0].Online)
	assert.Equal(t, "m2", out.Versions[2].Model)
}

func TestServer_RetryFailedNeedsEngine(t *testing.T) {
	base := newTestAPI(t, &Server{})
	callError(t, "POST", base+"/api/v1/updates/upd-1/retry-failed", nil, http.StatusServiceUnavailable, CodeUnavailable)
}

// fakeBroker records the stream's subscriptions and publishes to them.
type fakeBroker struct {
	mu       sync.Mutex // guards handlers
	handlers map[string]func(string, []byte)
}

func (b *fakeBroker) Subscribe(filter string, h func(string, []byte)) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.handlers == nil {
		b.handlers = map[string]func(string, []byte){}
	}
	b.handlers[filter] = h
	return nil
}

func (b *fakeBroker) publish(topic string, payload []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for f, h := range b.handlers {
		if strings.HasPrefix(topic, strings.TrimSuffix(f, "#")) {
			h(topic, payload)
		}
	}
}

// sseMsg is one parsed Server-Sent Event.
type sseMsg struct{ id, event, data string }

// openStream connects to the event stream and returns its messages.
func openStream(t *testing.T, url string, header http.Header) <-chan sseMsg {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	require.NoError(t, err)
	for k, v := range header {
		req.Header[k] = v
	}
	if req.Header.Get("Authorization") == "" && req.URL.Query().Get(AccessTokenParam) == "" {
		req.Header.Set("Authorization", "Bearer "+testReadToken)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "text/event-stream", resp.Header.Get("Content-Type"))
	out := make(chan sseMsg, 10000)
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); resp.Body.Close(); <-done })
	go func() {
		defer close(done)
		defer close(out)
		sc := bufio.NewScanner(resp.Body)
		var m sseMsg
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if m.event != "" {
					out <- m
				}
				m = sseMsg{}
			case strings.HasPrefix(line, "id: "):
				m.id = strings.TrimPrefix(line, "id: ")
			case strings.HasPrefix(line, "event: "):
				m.event = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "data: "):
				m.data = strings.TrimPrefix(line, "data: ")
			}
		}
	}()
	return out
}

func next(t *testing.T, ch <-chan sseMsg) sseMsg {
	t.Helper()
	select {
	case m, ok := <-ch:
		require.True(t, ok, "stream ended")
		return m
	case <-time.After(10 * time.Second):
		t.Fatal("no stream message within 10s")
		return sseMsg{}
	}
}

// streamFixture is a server with a fake broker and an update upd-1.
func streamFixture(t *testing.T, buffer int) (*Server, *fakeBroker, string, func(seq int64)) {
	t.Helper()
	fb := &fakeBroker{}
	s := &Server{Subscribe: fb.Subscribe, StreamBuffer: buffer}
	base := newTestAPI(t, s)
	t.Cleanup(func() { assert.NoError(t, s.Close()) })
	ctx := context.Background()
	fw, err := s.Store.AddFirmware(ctx, fleet.Firmware{Version: "2.0"}, strings.NewReader("image"))
	require.NoError(t, err)
	require.NoError(t, s.Store.CreateUpdate(ctx, fleet.Update{ID: "upd-1", FirmwareID: fw.ID,
		Policy: fleet.Policy{}.WithDefaults(), State: fleet.UpdateRunning}, nil))
	// emit does what the engine does: append to the store, then publish.
	emit := func(seq int64) {
		ev := fleet.Event{Seq: seq, Time: time.Now().UTC(), Type: fleet.EventDevice, UpdateID: "upd-1",
			DeviceID: fmt.Sprintf("d%d", seq), State: string(fleet.StateOffered)}
		require.NoError(t, s.Store.AppendEvent(ev))
		fb.publish(protocol.UpdateEventsTopic("upd-1"), protocol.Encode(ev))
	}
	return s, fb, base, emit
}

func TestEventStream_CatchUpThenLiveWithoutDuplicates(t *testing.T) {
	_, fb, base, emit := streamFixture(t, 0)
	for seq := int64(1); seq <= 3; seq++ {
		emit(seq)
	}
	stream := openStream(t, base+"/api/v1/events/stream?update=upd-1&after=1", nil)
	for _, want := range []string{"2", "3"} {
		m := next(t, stream)
		assert.Equal(t, "event", m.event)
		assert.Equal(t, want, m.id, "stored events after ?after= first")
	}
	// A live duplicate of an event already sent is skipped.
	fb.publish(protocol.UpdateEventsTopic("upd-1"), protocol.Encode(fleet.Event{Seq: 3, UpdateID: "upd-1"}))
	fb.publish(protocol.UpdateEventsTopic("upd-other"), protocol.Encode(fleet.Event{Seq: 4, UpdateID: "upd-other"}))
	fb.publish(protocol.UpdateStatusTopic("upd-1"), []byte(`{"id":"upd-1","total":3}`))
	m := next(t, stream)
	assert.Equal(t, sseMsg{event: "summary", data: `{"id":"upd-1","total":3}`}, m)
	emit(5)
	m = next(t, stream)
	assert.Equal(t, "5", m.id)
	var ev fleet.Event
	require.NoError(t, json.Unmarshal([]byte(m.data), &ev))
	assert.Equal(t, "d5", ev.DeviceID)

	t.Run("reconnect with Last-Event-ID", func(t *testing.T) {
		again := openStream(t, base+"/api/v1/events/stream?update=upd-1", http.Header{"Last-Event-Id": {"2"}})
		assert.Equal(t, "3", next(t, again).id)
		assert.Equal(t, "5", next(t, again).id)
	})
	t.Run("errors", func(t *testing.T) {
		callError(t, "GET", base+"/api/v1/events/stream?update=nope", nil, http.StatusNotFound, "update_not_found")
		callError(t, "GET", base+"/api/v1/events/stream?after=x", nil, http.StatusBadRequest, CodeInvalidInput)
	})
}

func TestEventStream_SlowClientCatchesUpFromStore(t *testing.T) {
	s, _, base, emit := streamFixture(t, 1)
	stream := openStream(t, base+"/api/v1/events/stream", nil)
	const n = 2000
	for seq := int64(1); seq <= n; seq++ {
		emit(seq)
	}
	for want := 1; want <= n; want++ {
		m := next(t, stream)
		require.Equal(t, "event", m.event)
		require.Equal(t, fmt.Sprint(want), m.id, "every event once, in order")
	}
	assert.Positive(t, s.hub.dropped.Load(), "a one-message buffer overflowed: the catch-up path ran")
}

func TestEventStream_CloseEndsStreams(t *testing.T) {
	s, _, base, _ := streamFixture(t, 0)
	stream := openStream(t, base+"/api/v1/events/stream", nil)
	poll := time.Now().Add(5 * time.Second)
	for s.hub.count() == 0 && time.Now().Before(poll) {
		time.Sleep(10 * time.Millisecond)
	}
	require.Equal(t, 1, s.hub.count())
	require.NoError(t, s.Close())
	select {
	case _, ok := <-stream:
		assert.False(t, ok, "the stream ends on Close")
	case <-time.After(10 * time.Second):
		t.Fatal("stream still open after Close")
	}
}
