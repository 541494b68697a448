package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"mime"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
)

// openAPIRun calls routes of a real server and checks every answer against
// the schema openapi.json declares for its status and media type.
type openAPIRun struct {
	t    *testing.T
	base string
	doc  *schemaDoc
	// called counts the 2xx answers of each "METHOD /path/{template}".
	called map[string]int
}

// call sends method path with body (JSON unless ctype says otherwise),
// requires status, checks the answer against the document and returns the
// decoded JSON body (nil if not JSON).
func (r *openAPIRun) call(method, template, path string, body []byte, ctype string, status int) any {
	t := r.t
	t.Helper()
	op, ok := r.doc.operation(method, template)
	require.True(t, ok, "%s %s is not in openapi.json", method, template)
	if body != nil && ctype == "application/json" {
		var in any
		require.NoError(t, json.Unmarshal(body, &in))
		if s := r.doc.requestSchema(op); s != nil {
			assert.Empty(t, r.doc.validate("request "+method+" "+path, s, in), "the test's request must be valid")
		}
	}
	req, err := http.NewRequest(method, r.base+path, bytes.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+testAdminToken)
	if body != nil {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, status, resp.StatusCode, "%s %s: %s", method, path, data)
	if resp.StatusCode/100 == 2 {
		r.called[method+" "+template]++
	}
	if resp.StatusCode == http.StatusNoContent {
		_, declared := asMap(op["responses"])["204"]
		assert.True(t, declared, "%s %s: 204 is declared", method, path)
		assert.Empty(t, data)
		return nil
	}
	media, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	require.NoError(t, err, "%s %s: Content-Type", method, path)
	schema, err := r.doc.responseSchema(op, resp.StatusCode, media)
	require.NoError(t, err, "%s %s", method, path)
	if media != "application/json" {
		return nil
	}
	var out any
	require.NoError(t, json.Unmarshal(data, &out), "%s %s", method, path)
	if schema != nil {
		assert.Empty(t, r.doc.validate(method+" "+path, schema, out), "%s %s answers what openapi.json declares: %s", method, path, data)
	}
	return out
}

// jsonBody marshals v.
func jsonBody(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return b
}

// illegalDevice connects a device over MQTT that accepts an offer and then
// rejects it while downloading, a change the state machine refuses. The
// channel receives when it has sent both.
func illegalDevice(t *testing.T, addr, id string) chan struct{} {
	t.Helper()
	c := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(id).SetAutoReconnect(false))
	tok := c.Connect()
	require.True(t, tok.WaitTimeout(5*time.Second))
	require.NoError(t, tok.Error())
	t.Cleanup(func() { c.Disconnect(0) })
	done := make(chan struct{}, 1)
	tok = c.Subscribe(protocol.DownFilter(id), 1, func(_ paho.Client, m paho.Message) {
		if !strings.HasSuffix(m.Topic(), "/offer") {
			return
		}
		o, err := protocol.DecodeOffer(m.Payload())
		if err != nil {
			return
		}
		for _, st := range []fleet.DeviceState{fleet.StateAccepted, fleet.StateRejected} {
			c.Publish(protocol.UpTopic(id, protocol.KindReport), 1, false,
				protocol.Encode(protocol.Report{V: 1, Update: o.Update, Handle: o.Handle, State: st}))
		}
		select {
		case done <- struct{}{}:
		default:
		}
	})
	require.True(t, tok.WaitTimeout(5*time.Second))
	require.NoError(t, tok.Error())
	c.Publish(protocol.UpTopic(id, protocol.KindHello), 1, false, protocol.Encode(protocol.Hello{V: 1, Model: "other", Version: "1.0.0"}))
	return done
}

// TestOpenAPI_EveryRouteAnswersWhatItDeclares runs a real orchestrator with
// devices, firmware and updates whose event logs hold events of every
// type, calls every route the server registers, and checks each answer
// (status, media type, body) against openapi.json. A route missing from the
// document, a field it does not declare, a value outside an enum or a time
// not in UTC fails.
func TestOpenAPI_EveryRouteAnswersWhatItDeclares(t *testing.T) {
	m, c := fleetMain(t, agentGroup{prefix: "ok-", n: 3, install: 300 * time.Millisecond}, agentGroup{prefix: "bad-", n: 1, failInstall: 1})
	ctx := context.Background()
	evilDone := illegalDevice(t, m.MQTTAddr(), "evil-1")
	poll(t, 10*time.Second, func() bool {
		_, err := c.Device(ctx, "evil-1")
		return err == nil
	}, "the scripted device registered")

	raw, err := io.ReadAll(must(http.Get(m.HTTPURL() + "/api/v1/openapi.json")).Body)
	require.NoError(t, err)
	doc, err := newSchemaDoc(raw)
	require.NoError(t, err)
	r := &openAPIRun{t: t, base: m.HTTPURL(), doc: doc, called: map[string]int{}}

	// Every registered route is in the document.
	docOps := doc.operations()
	var routes []string
	for _, name := range m.HTTP.RouteNames() {
		method, pattern, _ := strings.Cut(name, " ")
		routes = append(routes, method+" "+pattern)
		require.Contains(t, docOps, method+" "+pattern, "route %s is not in openapi.json", name)
	}

	// Firmware: one for the fleet's model, one for any model.
	img := make([]byte, 48<<10)
	_, _ = rand.Read(img)
	q := url.Values{"version": {"2.0.0"}, "name": {"app"}, "model": {"sensor"}}
	fw := r.call("POST", "/api/v1/firmware", "/api/v1/firmware?"+q.Encode(), img, "application/octet-stream", http.StatusCreated).(map[string]any)
	q = url.Values{"version": {"2.0.0"}, "name": {"any"}}
	fwAny := r.call("POST", "/api/v1/firmware", "/api/v1/firmware?"+q.Encode(), img[:4096], "application/octet-stream", http.StatusCreated).(map[string]any)

	// Firmware fetched from a URL: a job that ends done, with its firmware.
	store := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write(img[:8192]) }))
	defer store.Close()
	sum := sha256.Sum256(img[:8192])
	job := r.call("POST", "/api/v1/firmware/fetches", "/api/v1/firmware/fetches", jsonBody(t, map[string]any{
		"url": store.URL + "/fw.bin", "version": "2.0.1", "sha256": hex.EncodeToString(sum[:])}), "application/json", http.StatusAccepted).(map[string]any)
	fetchPath := "/api/v1/firmware/fetches/" + job["id"].(string)
	poll(t, 20*time.Second, func() bool {
		j := r.call("GET", "/api/v1/firmware/fetches/{id}", fetchPath, nil, "", http.StatusOK).(map[string]any)
		return j["state"] != "running"
	}, "the fetch ends")
	done := r.call("POST", "/api/v1/firmware/fetches/{id}/cancel", fetchPath+"/cancel", nil, "", http.StatusOK).(map[string]any)
	assert.Equal(t, "done", done["state"], "an ended job is answered as it is")
	r.call("GET", "/api/v1/firmware/fetches/{id}", "/api/v1/firmware/fetches/fetch-nope", nil, "", http.StatusNotFound)
	r.call("POST", "/api/v1/firmware/fetches", "/api/v1/firmware/fetches", jsonBody(t, map[string]any{
		"url": "file:///etc/passwd", "version": "2.0.1"}), "application/json", http.StatusBadRequest)

	// Accounts: a device with a model (registered at once), provisioned
	// devices, a monitor.
	r.call("POST", "/api/v1/devices", "/api/v1/devices", jsonBody(t, map[string]any{"id": "acct-1", "model": "spare", "tags": map[string]string{"site": "lyon"}}), "application/json", http.StatusCreated)
	r.call("POST", "/api/v1/devices/provision", "/api/v1/devices/provision", jsonBody(t, map[string]any{"prefix": "prov-", "count": 2}), "application/json", http.StatusCreated)
	r.call("POST", "/api/v1/monitors", "/api/v1/monitors", jsonBody(t, map[string]any{"name": "grafana"}), "application/json", http.StatusCreated)

	// Update a: the fleet's model in two phases (phase events; bad-000
	// fails its install). Update b: the scripted device, whose report is
	// refused (an illegal_transition event).
	a := r.call("POST", "/api/v1/updates", "/api/v1/updates", jsonBody(t, map[string]any{
		"firmware": fw["id"], "selector": map[string]any{"model": "sensor"},
		"policy": map[string]any{"phases": []string{"50%", "100%"}, "max_attempts": 1, "success_threshold": 0.1}}),
		"application/json", http.StatusCreated).(map[string]any)
	b := r.call("POST", "/api/v1/updates", "/api/v1/updates", jsonBody(t, map[string]any{
		"firmware": fwAny["id"], "selector": map[string]any{"devices": []string{"evil-1"}}}),
		"application/json", http.StatusCreated).(map[string]any)
	select {
	case <-evilDone:
	case <-time.After(20 * time.Second):
		t.Fatal("the scripted device got no offer")
	}
	seen := map[string]bool{}
	poll(t, 30*time.Second, func() bool {
		for _, id := range []any{a["id"], b["id"]} {
			l, err := c.Events(ctx, id.(string), 0, 1000)
			if err != nil {
				return false
			}
			for _, e := range l.Events {
				seen[e.Type] = true
			}
		}
		return len(seen) == len(fleet.EventTypes)
	}, "events of every type")

	// Every GET route, with each ID its {id} can take.
	ids := map[string][]string{
		"updates":  {a["id"].(string), b["id"].(string)},
		"devices":  {"ok-000", "bad-000", "evil-1", "acct-1"},
		"firmware": {fw["id"].(string), fwAny["id"].(string)},
		"fetches":  {job["id"].(string)},
	}
	for _, route := range routes {
		method, pattern, _ := strings.Cut(route, " ")
		if method != "GET" || pattern == "/api/v1/events/stream" {
			continue
		}
		if !strings.Contains(pattern, "{id}") {
			r.call(method, pattern, pattern, nil, "", http.StatusOK)
			continue
		}
		kind := strings.Split(strings.TrimPrefix(pattern, "/api/v1/"), "/")[0]
		if strings.HasPrefix(pattern, "/api/v1/firmware/fetches/") {
			kind = "fetches"
		}
		require.NotEmpty(t, ids[kind], "no IDs to call %s with", route)
		for _, id := range ids[kind] {
			r.call(method, pattern, strings.Replace(pattern, "{id}", url.PathEscape(id), 1), nil, "", http.StatusOK)
		}
	}
	// Filters return what they declare too, and filter.
	r.call("GET", "/api/v1/devices", "/api/v1/devices?online=true&model=sensor&limit=2", nil, "", http.StatusOK)
	tagged := r.call("GET", "/api/v1/devices", "/api/v1/devices?tag=site%3Dlyon", nil, "", http.StatusOK).(map[string]any)
	assert.EqualValues(t, 1, tagged["total"], "?tag= filters")
	acct := r.call("GET", "/api/v1/devices/{id}", "/api/v1/devices/acct-1", nil, "", http.StatusOK).(map[string]any)
	assert.NotContains(t, acct, "last_seen", "a device that never connected was never seen")
	r.call("GET", "/api/v1/updates/{id}/devices", "/api/v1/updates/"+a["id"].(string)+"/devices?state=failed", nil, "", http.StatusOK)
	running := r.call("GET", "/api/v1/updates", "/api/v1/updates?state=running", nil, "", http.StatusOK).(map[string]any)
	assert.Len(t, running["updates"], 2)
	none := r.call("GET", "/api/v1/updates", "/api/v1/updates?state=cancelled", nil, "", http.StatusOK).(map[string]any)
	assert.Empty(t, none["updates"])
	r.call("GET", "/api/v1/updates", "/api/v1/updates?state=pending", nil, "", http.StatusBadRequest)
	evs := r.call("GET", "/api/v1/updates/{id}/events", "/api/v1/updates/"+a["id"].(string)+"/events?device=bad-000&type=device", nil, "", http.StatusOK).(map[string]any)
	require.NotEmpty(t, evs["events"])
	for _, e := range evs["events"].([]any) {
		assert.Equal(t, "bad-000", e.(map[string]any)["device"])
		assert.Equal(t, "device", e.(map[string]any)["type"])
	}
	r.call("GET", "/api/v1/updates/{id}/events", "/api/v1/updates/"+a["id"].(string)+"/events?devce=bad-000", nil, "", http.StatusBadRequest)
	// The same image and version again is the same firmware.
	q = url.Values{"version": {"2.0.0"}, "name": {"app"}, "model": {"sensor"}}
	again := r.call("POST", "/api/v1/firmware", "/api/v1/firmware?"+q.Encode(), img, "application/octet-stream", http.StatusOK).(map[string]any)
	assert.Equal(t, fw["id"], again["id"])

	r.checkEventStream(b["id"].(string))

	// Changes, in an order each of them succeeds in.
	upd := "/api/v1/updates/" + a["id"].(string)
	r.call("DELETE", "/api/v1/devices/{id}", "/api/v1/devices/bad-000", nil, "", http.StatusConflict) // failed, may be retried
	r.call("DELETE", "/api/v1/devices/{id}", "/api/v1/devices/acct-1", nil, "", http.StatusNoContent)
	r.call("GET", "/api/v1/devices/{id}", "/api/v1/devices/acct-1", nil, "", http.StatusNotFound)
	r.call("DELETE", "/api/v1/firmware/{id}", "/api/v1/firmware/"+fw["id"].(string), nil, "", http.StatusConflict)
	q = url.Values{"version": {"3.0.0"}}
	unused := r.call("POST", "/api/v1/firmware", "/api/v1/firmware?"+q.Encode(), img[:1024], "application/octet-stream", http.StatusCreated).(map[string]any)
	r.call("DELETE", "/api/v1/firmware/{id}", "/api/v1/firmware/"+unused["id"].(string), nil, "", http.StatusNoContent)
	r.call("POST", "/api/v1/updates/{id}/pause", upd+"/pause", nil, "", http.StatusOK)
	r.call("POST", "/api/v1/updates/{id}/resume", upd+"/resume", nil, "", http.StatusOK)
	r.call("POST", "/api/v1/updates/{id}/retry-failed", upd+"/retry-failed", nil, "", http.StatusOK)
	r.call("POST", "/api/v1/updates/{id}/cancel", upd+"/cancel", nil, "", http.StatusOK)
	// Once the update ended, the device goes; the update keeps its row.
	poll(t, 10*time.Second, func() bool {
		sum, err := c.Update(ctx, a["id"].(string))
		return err == nil && sum.State.Terminal()
	}, "update a ends")
	r.call("DELETE", "/api/v1/devices/{id}", "/api/v1/devices/bad-000", nil, "", http.StatusNoContent)
	r.call("GET", "/api/v1/devices/{id}", "/api/v1/devices/bad-000", nil, "", http.StatusNotFound)
	rows := r.call("GET", "/api/v1/updates/{id}/devices", upd+"/devices", nil, "", http.StatusOK).(map[string]any)
	assert.True(t, slices.ContainsFunc(rows["devices"].([]any), func(p any) bool { return p.(map[string]any)["device"] == "bad-000" }),
		"the deleted device's progress row stays in the update's history")
	r.call("POST", "/api/v1/backup", "/api/v1/backup", nil, "", http.StatusOK)
	r.call("POST", "/api/v1/tokens", "/api/v1/tokens", []byte(`{"name":"ci","role":"read"}`), "application/json", http.StatusCreated)
	r.call("POST", "/api/v1/tokens", "/api/v1/tokens", []byte(`{"name":"ci","role":"read"}`), "application/json", http.StatusConflict)
	r.call("GET", "/api/v1/tokens", "/api/v1/tokens", nil, "", http.StatusOK)
	r.call("POST", "/api/v1/tokens/{name}/revoke", "/api/v1/tokens/ci/revoke", nil, "", http.StatusOK)
	r.call("POST", "/api/v1/tokens/{name}/revoke", "/api/v1/tokens/ci/revoke", nil, "", http.StatusNotFound)
	r.call("POST", "/api/v1/devices/{id}/revoke", "/api/v1/devices/prov-00001/revoke", nil, "", http.StatusOK)
	r.call("POST", "/api/v1/monitors/{id}/revoke", "/api/v1/monitors/grafana/revoke", nil, "", http.StatusOK)
	// Approval needs a device that enrolled (serve --enroll-token-file):
	// the refusal of an unknown one is checked here, the success in
	// enroll tests.
	r.call("POST", "/api/v1/devices/{id}/approve", "/api/v1/devices/nobody/approve", nil, "", http.StatusNotFound)
	// Errors are declared too.
	r.call("GET", "/api/v1/updates/{id}", "/api/v1/updates/u-000000000000", nil, "", http.StatusNotFound)
	r.call("POST", "/api/v1/updates", "/api/v1/updates", []byte(`{"firmware":"fw-000000000000"}`), "application/json", http.StatusNotFound)

	for _, route := range routes {
		if route == "POST /api/v1/devices/{id}/approve" {
			continue
		}
		assert.Positive(t, r.called[route], "%s was called with success and checked", route)
	}
}

// checkEventStream reads the stored events of update id from the event
// stream and checks each against the Event schema.
func (r *openAPIRun) checkEventStream(id string) {
	t := r.t
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", r.base+"/api/v1/events/stream?after=0&update="+url.QueryEscape(id), nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+testAdminToken)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	op, _ := r.doc.operation("GET", "/api/v1/events/stream")
	media, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	_, err = r.doc.responseSchema(op, resp.StatusCode, media)
	require.NoError(t, err)
	r.called["GET /api/v1/events/stream"]++
	event := map[string]any{"$ref": "#/components/schemas/Event"}
	summary := map[string]any{"$ref": "#/components/schemas/UpdateSummary"}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	kind, events := "", 0
	for events < 2 && sc.Scan() {
		line := sc.Text()
		if k, ok := strings.CutPrefix(line, "event: "); ok {
			kind = k
			continue
		}
		data, ok := strings.CutPrefix(line, "data: ")
		if !ok {
			continue
		}
		var v any
		require.NoError(t, json.Unmarshal([]byte(data), &v), data)
		switch kind {
		case "event":
			events++
			assert.Empty(t, r.doc.validate("stream event", event, v), data)
		case "summary":
			assert.Empty(t, r.doc.validate("stream summary", summary, v), data)
		}
	}
	assert.Equal(t, 2, events, "the stream replays the stored events")
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// TestSchemaDoc_FindsWhatBreaksTheSchema proves the checker above fails on
// each kind of mismatch it is there to catch.
func TestSchemaDoc_FindsWhatBreaksTheSchema(t *testing.T) {
	doc, err := newSchemaDoc([]byte(`{"components":{"schemas":{
		"E":{"type":"object","required":["type","time"],"properties":{
			"type":{"type":"string","enum":["update","device"]},
			"time":{"type":"string","format":"date-time"},
			"n":{"type":"integer","minimum":0},
			"tags":{"type":"object","additionalProperties":{"type":"string"}},
			"list":{"type":"array","items":{"type":"integer"}}}},
		"S":{"allOf":[{"$ref":"#/components/schemas/E"},{"type":"object","properties":{"extra":{"type":"boolean"}}}]}}}}`))
	require.NoError(t, err)
	e := map[string]any{"$ref": "#/components/schemas/E"}
	s := map[string]any{"$ref": "#/components/schemas/S"}
	for _, tc := range []struct {
		name   string
		schema map[string]any
		value  string
		want   string // "" valid
	}{
		{"valid", e, `{"type":"update","time":"2026-12-05T16:03:06.5Z","n":3,"tags":{"a":"b"},"list":[1]}`, ""},
		{"undeclared property", e, `{"type":"update","time":"2026-12-05T16:03:06Z","phase":2}`, "phase: property not declared"},
		{"outside the enum", e, `{"type":"phase","time":"2026-12-05T16:03:06Z"}`, "is not one of"},
		{"not UTC", e, `{"type":"update","time":"2026-12-05T17:03:06+01:00"}`, "not in UTC"},
		{"not a date-time", e, `{"type":"update","time":"12/5/2026, 4:03:06 PM"}`, "not an RFC 3339"},
		{"missing required", e, `{"type":"update"}`, `required property "time"`},
		{"wrong type", e, `{"type":"update","time":"2026-12-05T16:03:06Z","n":"3"}`, "want a integer"},
		{"not an integer", e, `{"type":"update","time":"2026-12-05T16:03:06Z","n":1.5}`, "not an integer"},
		{"below minimum", e, `{"type":"update","time":"2026-12-05T16:03:06Z","n":-1}`, "below the minimum"},
		{"additional of the wrong type", e, `{"type":"update","time":"2026-12-05T16:03:06Z","tags":{"a":1}}`, "tags.a: want a string"},
		{"item of the wrong type", e, `{"type":"update","time":"2026-12-05T16:03:06Z","list":["x"]}`, "list[0]"},
		{"allOf valid", s, `{"type":"device","time":"2026-12-05T16:03:06Z","extra":true}`, ""},
		{"allOf undeclared", s, `{"type":"device","time":"2026-12-05T16:03:06Z","other":true}`, "other: property not declared"},
		{"allOf member broken", s, `{"type":"device","time":"2026-12-05T16:03:06Z","extra":1}`, "extra: want a boolean"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var v any
			require.NoError(t, json.Unmarshal([]byte(tc.value), &v))
			errs := doc.validate("x", tc.schema, v)
			if tc.want == "" {
				assert.Empty(t, errs)
				return
			}
			assert.True(t, slices.ContainsFunc(errs, func(e string) bool { return strings.Contains(e, tc.want) }), "%v", errs)
		})
	}
}
