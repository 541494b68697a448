package httpapi

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/sqlite"
)

// newTestStore opens a store in a temporary directory.
func newTestStore(t testing.TB) *sqlite.Store {
	t.Helper()
	st := sqlite.New(t.TempDir())
	st.Logger = slog.New(slog.DiscardHandler)
	require.NoError(t, st.Open())
	t.Cleanup(func() { assert.NoError(t, st.Close()) })
	return st
}

// newTestAPI serves s's handler (without an engine) on an httptest server
// and returns its base URL.
func newTestAPI(t testing.TB, s *Server) string {
	t.Helper()
	if s.Store == nil {
		s.Store = newTestStore(t)
	}
	if s.Tokens == nil {
		s.Tokens = testTokens(t)
	}
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(ts.Close)
	return ts.URL
}

// call sends a request with the admin token and decodes a JSON answer into
// out (if not nil).
func call(t *testing.T, method, url string, body io.Reader, out any) *http.Response {
	t.Helper()
	return callAs(t, testAdminToken, method, url, body, out)
}

// callAs is call with token as the bearer token ("" sends none).
func callAs(t *testing.T, token, method, url string, body io.Reader, out any) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	require.NoError(t, err)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, "application/json", resp.Header.Get("Content-Type"), "body: %s", data)
	if out != nil {
		require.NoError(t, json.Unmarshal(data, out), "body: %s", data)
	}
	return resp
}

// callError sends a request that must fail with status and code.
func callError(t *testing.T, method, url string, body io.Reader, status int, code string) Error {
	t.Helper()
	var e Error
	resp := call(t, method, url, body, &e)
	assert.Equal(t, status, resp.StatusCode, "%s %s: %+v", method, url, e)
	assert.Equal(t, code, e.Code, "%s %s: %+v", method, url, e)
	assert.NotEmpty(t, e.Message)
	return e
}

func seedDevices(t *testing.T, st *sqlite.Store, devs ...fleet.Device) {
	t.Helper()
	for _, d := range devs {
		require.NoError(t, st.SaveDevice(d))
	}
	require.NoError(t, st.Flush(context.Background()))
}

func TestServer_Health(t *testing.T) {
	base := newTestAPI(t, &Server{Version: "v9.9.9"})
	var h Health
	resp := call(t, "GET", base+"/api/v1/health", nil, &h)
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, Health{Status: "ok", Version: "v9.9.9"}, h)
}

func TestServer_HealthIsDegradedWithTheReasonsOfFailingChecks(t *testing.T) {
	var listener, store atomic.Value
	listener.Store("")
	store.Store("")
	base := newTestAPI(t, &Server{Version: "v9.9.9", HealthChecks: []func() string{
		func() string { return listener.Load().(string) },
		func() string { return store.Load().(string) },
	}})
	var h Health
	resp := call(t, "GET", base+"/api/v1/health", nil, &h)
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, Health{Status: "ok", Version: "v9.9.9"}, h)

	listener.Store("mqtt listener refusing connections: too many open files")
	store.Store("store cannot write: database or disk is full")
	h = Health{}
	resp = call(t, "GET", base+"/api/v1/health", nil, &h)
	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	assert.Equal(t, Health{Status: "degraded", Version: "v9.9.9", Reasons: []string{
		"mqtt listener refusing connections: too many open files",
		"store cannot write: database or disk is full",
	}}, h)

	listener.Store("")
	h = Health{}
	resp = call(t, "GET", base+"/api/v1/health", nil, &h)
	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	assert.Equal(t, []string{"store cannot write: database or disk is full"}, h.Reasons)
}

func TestServer_OpenCloseIdempotent(t *testing.T) {
	s := &Server{Addr: "127.0.0.1:0", Store: newTestStore(t)}
	assert.Empty(t, s.URL())
	require.NoError(t, s.Open())
	u := s.URL()
	require.True(t, strings.HasPrefix(u, "http://127.0.0.1:"), u)
	assert.NotEqual(t, "http://127.0.0.1:0", u)

	var h Health
	call(t, "GET", u+"/api/v1/health", nil, &h)
	assert.Equal(t, "ok", h.Status)
	assert.Equal(t, "dev", h.Version)

	require.NoError(t, s.Close())
	require.NoError(t, s.Close())
	_, err := http.Get(u + "/api/v1/health")
	assert.Error(t, err, "server must not answer after Close")
	assert.Error(t, s.Open(), "a closed server does not open again")
}

func TestServer_OpenRequiresStore(t *testing.T) {
	s := &Server{Addr: "127.0.0.1:0"}
	assert.Error(t, s.Open())
	assert.NoError(t, s.Close())
}

func TestServer_Firmware(t *testing.T) {
	base := newTestAPI(t, &Server{})
	image := bytes.Repeat([]byte("flota"), 1000)
	want := sha256.Sum256(image)

	var fw fleet.Firmware
	resp := call(t, "POST", base+"/api/v1/firmware?name=sensor&version=2.1.0&model=sensor-v2", bytes.NewReader(image), &fw)
	require.Equal(t, http.StatusCreated, resp.StatusCode)
	assert.NotEmpty(t, fw.ID)
	assert.Equal(t, "sensor", fw.Name)
	assert.Equal(t, "2.1.0", fw.Version)
	assert.Equal(t, "sensor-v2", fw.Model)
	assert.Equal(t, int64(len(image)), fw.Size)
	assert.Equal(t, hex.EncodeToString(want[:]), fw.SHA256)

	var got fleet.Firmware
	resp = call(t, "GET", base+"/api/v1/firmware/"+fw.ID, nil, &got)
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, fw.ID, got.ID)
	assert.Equal(t, fw.SHA256, got.SHA256)

	var list FirmwareList
	call(t, "GET", base+"/api/v1/firmware", nil, &list)
	require.Len(t, list.Firmware, 1)
	assert.Equal(t, fw.ID, list.Firmware[0].ID)

	callError(t, "GET", base+"/api/v1/firmware/fw-nope", nil, http.StatusNotFound, "firmware_not_found")
	callError(t, "POST", base+"/api/v1/firmware?name=x", strings.NewReader("abc"), http.StatusBadRequest, "invalid_input")
}

func TestServer_FirmwareListEmpty(t *testing.T) {
	base := newTestAPI(t, &Server{})
	var body json.RawMessage
	call(t, "GET", base+"/api/v1/firmware", nil, &body)
	assert.JSONEq(t, `{"firmware":[]}`, string(body))
}

func TestServer_FirmwareTooLarge(t *testing.T) {
	s := &Server{MaxFirmwareSize: 1024}
	base := newTestAPI(t, s)
	url := base + "/api/v1/firmware?version=1.0.0"

	t.Run("content length", func(t *testing.T) {
		callError(t, "POST", url, bytes.NewReader(make([]byte, 2048)), http.StatusRequestEntityTooLarge, CodeTooLarge)
	})
	t.Run("chunked", func(t *testing.T) {
		// io.MultiReader hides the length: the body is sent chunked.
		body := io.MultiReader(bytes.NewReader(make([]byte, 2048)))
		callError(t, "POST", url, body, http.StatusRequestEntityTooLarge, CodeTooLarge)
	})
	t.Run("at the limit", func(t *testing.T) {
		var fw fleet.Firmware
		resp := call(t, "POST", url, io.MultiReader(bytes.NewReader(make([]byte, 1024))), &fw)
		assert.Equal(t, http.StatusCreated, resp.StatusCode)
		assert.Equal(t, int64(1024), fw.Size)
	})

	fws, err := s.Store.ListFirmware(context.Background())
	require.NoError(t, err)
	require.Len(t, fws, 1, "refused uploads must not be stored")
	entries, err := os.ReadDir(filepath.Join(s.Store.DataDir, sqlite.FirmwareDir))
	require.NoError(t, err)
	require.Len(t, entries, 1, "a refused upload leaves no partial file")
	assert.Equal(t, fws[0].SHA256, entries[0].Name())
}

func TestServer_Devices(t *testing.T) {
	s := &Server{}
	base := newTestAPI(t, s)
	seedDevices(t, s.Store,
		fleet.Device{ID: "dev-a", Model: "m1", Version: "1.0", Online: true, Tags: map[string]string{"site": "lyon"}},
		fleet.Device{ID: "dev-b", Model: "m1", Version: "2.0", Online: false},
		fleet.Device{ID: "dev-c", Model: "m2", Version: "1.0", Online: true},
	)

	ids := func(l DeviceList) []string {
		var out []string
		for _, d := range l.Devices {
			out = append(out, d.ID)
		}
		return out
	}
	for _, tc := range []struct {
		query string
		want  []string
		total int
	}{
		{"", []string{"dev-a", "dev-b", "dev-c"}, 3},
		{"?model=m1", []string{"dev-a", "dev-b"}, 2},
		{"?version=1.0", []string{"dev-a", "dev-c"}, 2},
		{"?online=true", []string{"dev-a", "dev-c"}, 2},
		{"?online=false", []string{"dev-b"}, 1},
		{"?limit=1&offset=1", []string{"dev-b"}, 3},
		{"?limit=5000", []string{"dev-a", "dev-b", "dev-c"}, 3}, // clamped, not refused
		{"?model=none", nil, 0},
	} {
		t.Run(tc.query, func(t *testing.T) {
			var l DeviceList
			resp := call(t, "GET", base+"/api/v1/devices"+tc.query, nil, &l)
			assert.Equal(t, http.StatusOK, resp.StatusCode)
			assert.Equal(t, tc.want, ids(l))
			assert.Equal(t, tc.total, l.Total)
			assert.NotNil(t, l.Devices, "an empty list encodes as []")
		})
	}

	var d fleet.Device
	call(t, "GET", base+"/api/v1/devices/dev-a", nil, &d)
	assert.Equal(t, "m1", d.Model)
	assert.Equal(t, map[string]string{"site": "lyon"}, d.Tags)
	assert.True(t, d.Online)

	callError(t, "GET", base+"/api/v1/devices/dev-nope", nil, http.StatusNotFound, "device_not_found")
	for _, q := range []string{"online=maybe", "limit=-1", "limit=0", "limit=abc", "offset=-3", "offset=x"} {
		callError(t, "GET", base+"/api/v1/devices?"+q, nil, http.StatusBadRequest, CodeInvalidInput)
	}
}

func TestServer_CreateUpdateDecodesStrictly(t *testing.T) {
	// No engine: decoding is checked before the engine is asked.
	base := newTestAPI(t, &Server{})
	url := base + "/api/v1/updates"
	for name, tc := range map[string]struct{ body, msg string }{
		"wrong type":        {`{"firmware":42}`, `field "firmware": want string, got JSON number`},
		"wrong nested type": {`{"firmware":"fw-1","policy":{"window":"4"}}`, `field "policy.window": want int, got JSON string`},
		"float for int":     {`{"firmware":"fw-1","policy":{"window":4.5}}`, `policy.window`},
		"object for list":   {`{"firmware":"fw-1","selector":{"devices":{"a":1}}}`, `selector.devices`},
		"array body":        {`[{"firmware":"fw-1"}]`, "want a JSON object, got JSON array"},
		"string body":       {`"fw-1"`, "want a JSON object, got JSON string"},
		"trailing data":     {`{"firmware":"fw-1"} {}`, "trailing data"},
		"not json":          {`firmware=fw-1`, "request body"},
		"truncated":         {`{"firmware":"fw-1"`, "request body"},
		"empty":             {``, "empty request body"},
		"blank":             {" \n ", "empty request body"},
	} {
		t.Run(name, func(t *testing.T) {
			e := callError(t, "POST", url, strings.NewReader(tc.body), http.StatusBadRequest, CodeInvalidInput)
			assert.Contains(t, e.Message, tc.msg)
		})
	}
	t.Run("too large", func(t *testing.T) {
		body := `{"firmware":"` + strings.Repeat("x", MaxRequestBody) + `"}`
		e := callError(t, "POST", url, strings.NewReader(body), http.StatusRequestEntityTooLarge, CodeTooLarge)
		assert.Contains(t, e.Message, "1048576 bytes")
	})
	t.Run("too large, chunked", func(t *testing.T) {
		body := io.MultiReader(strings.NewReader(`{"firmware":"` + strings.Repeat("x", MaxRequestBody) + `"}`))
		callError(t, "POST", url, body, http.StatusRequestEntityTooLarge, CodeTooLarge)
	})
	t.Run("valid without engine", func(t *testing.T) {
		body := `{"firmware":"fw-1","selector":{"model":"m1"},"policy":{"window":4}}`
		callError(t, "POST", url, strings.NewReader(body), http.StatusServiceUnavailable, CodeUnavailable)
	})
	for name, tc := range map[string]struct{ body, msg string }{
		"unknown field":  {`{"firmware":"fw-1","selectr":{}}`, `unknown field "selectr"`},
		"unknown nested": {`{"firmware":"fw-1","policy":{"windw":4}}`, `unknown field "policy.windw"`},
		"every unknown field": {`{"firmware":"fw-1","zeta":1,"policy":{"windw":4,"window":2,"maintenance":{"start":"22:00","end":"04:00","tz":"UTC"}},"selector":{"modl":"m"}}`,
			`unknown fields "policy.maintenance.tz", "policy.windw", "selector.modl", "zeta"`},
	} {
		body, msg := tc.body, tc.msg
		t.Run(name+" is refused and named", func(t *testing.T) {
			e := callError(t, "POST", url, strings.NewReader(body), http.StatusBadRequest, CodeInvalidInput)
			assert.Contains(t, e.Message, msg)
		})
	}
	t.Run("field names match case-insensitively, as decoding does", func(t *testing.T) {
		callError(t, "POST", url, strings.NewReader(`{"Firmware":"fw-1","Policy":{"Window":4}}`), http.StatusServiceUnavailable, CodeUnavailable)
	})
}

func TestServer_FirmwareMetadataBounded(t *testing.T) {
	s := &Server{}
	base := newTestAPI(t, s)
	for name, q := range map[string]string{
		"long version": "version=" + strings.Repeat("1", 65),
		"long model":   "version=1&model=" + strings.Repeat("m", 65),
		"long name":    "version=1&name=" + strings.Repeat("n", MaxFirmwareName+1),
		"bad utf-8":    "version=%ff%fe",
	} {
		t.Run(name, func(t *testing.T) {
			callError(t, "POST", base+"/api/v1/firmware?"+q, strings.NewReader("image"), http.StatusBadRequest, CodeInvalidInput)
		})
	}
	var fw fleet.Firmware
	resp := call(t, "POST", base+"/api/v1/firmware?version=1.0.0-"+strings.Repeat("a", 58), strings.NewReader("image"), &fw)
	assert.Equal(t, http.StatusCreated, resp.StatusCode, "64 bytes, the protocol's bound, are fine")
}

func TestServer_UpdateProgressAndEvents(t *testing.T) {
	s := &Server{}
	base := newTestAPI(t, s)
	ctx := context.Background()
	fw, err := s.Store.AddFirmware(ctx, fleet.Firmware{Version: "2.0"}, strings.NewReader("image"))
	require.NoError(t, err)
	seedDevices(t, s.Store, fleet.Device{ID: "d1"}, fleet.Device{ID: "d2"}, fleet.Device{ID: "d3"})
	u := fleet.Update{ID: "upd-1", FirmwareID: fw.ID, Policy: fleet.Policy{}.WithDefaults(), State: fleet.UpdateRunning}
	require.NoError(t, s.Store.CreateUpdate(ctx, u, []fleet.Progress{
		{UpdateID: u.ID, DeviceID: "d1", State: fleet.StateQueued},
		{UpdateID: u.ID, DeviceID: "d2", State: fleet.StateQueued},
		{UpdateID: u.ID, DeviceID: "d3", State: fleet.StateQueued},
	}))
	require.NoError(t, s.Store.SaveProgress(fleet.Progress{UpdateID: u.ID, DeviceID: "d2", State: fleet.StateOffered, Attempts: 1}, 7))
	for seq := int64(1); seq <= 5; seq++ {
		require.NoError(t, s.Store.AppendEvent(fleet.Event{Seq: seq, Time: time.Now(), Type: fleet.EventDevice,
			UpdateID: u.ID, DeviceID: fmt.Sprintf("d%d", seq%3+1), State: string(fleet.StateOffered)}))
	}
	require.NoError(t, s.Store.Flush(ctx))

	t.Run("devices", func(t *testing.T) {
		var l ProgressList
		call(t, "GET", base+"/api/v1/updates/upd-1/devices", nil, &l)
		assert.Equal(t, 3, l.Total)
		require.Len(t, l.Devices, 3)

		call(t, "GET", base+"/api/v1/updates/upd-1/devices?state=offered", nil, &l)
		assert.Equal(t, 1, l.Total)
		require.Len(t, l.Devices, 1)
		assert.Equal(t, "d2", l.Devices[0].DeviceID)
		assert.Equal(t, 1, l.Devices[0].Attempts)

		call(t, "GET", base+"/api/v1/updates/upd-1/devices?limit=2&offset=2", nil, &l)
		assert.Equal(t, 3, l.Total)
		require.Len(t, l.Devices, 1)
		assert.Equal(t, "d3", l.Devices[0].DeviceID)

		callError(t, "GET", base+"/api/v1/updates/upd-1/devices?state=sleeping", nil, http.StatusBadRequest, CodeInvalidInput)
		callError(t, "GET", base+"/api/v1/updates/upd-nope/devices", nil, http.StatusNotFound, "update_not_found")
	})

	t.Run("events", func(t *testing.T) {
		var l EventList
		call(t, "GET", base+"/api/v1/updates/upd-1/events?limit=2", nil, &l)
		require.Len(t, l.Events, 2)
		assert.Equal(t, int64(1), l.Events[0].Seq)
		assert.Equal(t, int64(2), l.Next)

		call(t, "GET", fmt.Sprintf("%s/api/v1/updates/upd-1/events?after=%d", base, l.Next), nil, &l)
		require.Len(t, l.Events, 3)
		assert.Equal(t, int64(5), l.Next)

		call(t, "GET", base+"/api/v1/updates/upd-1/events?after=5", nil, &l)
		assert.Empty(t, l.Events)
		assert.NotNil(t, l.Events)
		assert.Equal(t, int64(5), l.Next, "next stays at after when nothing is new")

		for _, q := range []string{"after=-1", "after=x", "limit=0", "limit=x"} {
			callError(t, "GET", base+"/api/v1/updates/upd-1/events?"+q, nil, http.StatusBadRequest, CodeInvalidInput)
		}
		callError(t, "GET", base+"/api/v1/updates/upd-nope/events", nil, http.StatusNotFound, "update_not_found")
	})
}

func TestServer_EngineRoutesWithoutEngine(t *testing.T) {
	base := newTestAPI(t, &Server{})
	callError(t, "GET", base+"/api/v1/updates", nil, http.StatusServiceUnavailable, CodeUnavailable)
	callError(t, "GET", base+"/api/v1/updates/upd-1", nil, http.StatusServiceUnavailable, CodeUnavailable)
	for _, op := range []string{"pause", "resume", "cancel"} {
		callError(t, "POST", base+"/api/v1/updates/upd-1/"+op, nil, http.StatusServiceUnavailable, CodeUnavailable)
	}
}

func TestServer_Stats(t *testing.T) {
	base := newTestAPI(t, &Server{BrokerStats: func() any { return map[string]int{"clients": 3} }})
	var out struct {
		Store  *sqlite.Stats   `json:"store"`
		Broker map[string]int  `json:"broker"`
		Engine json.RawMessage `json:"engine"`
	}
	resp := call(t, "GET", base+"/api/v1/stats", nil, &out)
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.NotNil(t, out.Store)
	assert.Equal(t, 3, out.Broker["clients"])
	assert.Nil(t, out.Engine, "no engine, no engine stats")
}

func TestServer_MethodNotAllowed(t *testing.T) {
	base := newTestAPI(t, &Server{})
	e := callError(t, "POST", base+"/api/v1/health", nil, http.StatusMethodNotAllowed, CodeMethodNotAllowed)
	assert.Contains(t, e.Message, "POST")
	// A path of no route, with a method no route has: JSON too (found by
	// FuzzServer_Handler).
	callError(t, "PATCH", base+"/api/v1", nil, http.StatusNotFound, CodeNotFound)
	callError(t, "POST", base+"/api/v1/nope", nil, http.StatusNotFound, CodeNotFound)
}

func TestErrorStatus_MapsSentinels(t *testing.T) {
	for _, tc := range []struct {
		err    error
		status int
		code   string
	}{
		{fleet.ErrUpdateNotFound, 404, "update_not_found"},
		{fleet.ErrFirmwareNotFound, 404, "firmware_not_found"},
		{fleet.ErrDeviceNotFound, 404, "device_not_found"},
		{fleet.ErrInvalidInput, 400, "invalid_input"},
		{fleet.ErrInvalidPolicy, 400, "invalid_policy"},
		{fleet.ErrNoTargets, 400, "no_targets"},
		{fleet.ErrUpdateFinished, 409, "update_finished"},
		{fleet.ErrDeviceBusy, 409, "device_busy"},
		{fleet.ErrIllegalTransition, 409, "illegal_transition"},
		{fleet.ErrClosed, 503, "unavailable"},
		{fmt.Errorf("create update: %w", fleet.Errorf(fleet.ErrInvalidPolicy, "window must be 1..64")), 400, "invalid_policy"},
		{fmt.Errorf("add firmware: %w", &http.MaxBytesError{Limit: 1}), 413, "too_large"},
		{errors.New("disk on fire"), 500, "internal"},
	} {
		t.Run(tc.err.Error(), func(t *testing.T) {
			status, body := errorStatus(tc.err)
			assert.Equal(t, tc.status, status)
			assert.Equal(t, tc.code, body.Code)
			if status == 500 {
				assert.Equal(t, "internal error", body.Message, "internals must not leak")
			} else {
				assert.Equal(t, tc.err.Error(), body.Message)
			}
		})
	}
}
