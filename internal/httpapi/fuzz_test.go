package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/rollout"
	"github.com/flotaio/flota/internal/sqlite"
)

// fuzzServer is the production wiring of the API — a real store in a
// temporary directory, a real broker and engine — with two devices, a
// firmware and an update, so that paths with real IDs reach deep.
func fuzzServer(tb testing.TB) http.Handler {
	tb.Helper()
	log := slog.New(slog.DiscardHandler)
	st := sqlite.New(tb.TempDir())
	st.Logger = log
	if err := st.Open(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { st.Close() })
	br, eng := newTestEngine(tb, st, log)

	ctx := context.Background()
	for _, id := range []string{"dev-a", "dev-b"} {
		if err := st.SaveDevice(fleet.Device{ID: id, Model: "m1", Version: "1.0", Tags: map[string]string{"site": "lyon"}}); err != nil {
			tb.Fatal(err)
		}
	}
	if err := st.Flush(ctx); err != nil {
		tb.Fatal(err)
	}
	fw, err := st.AddFirmware(ctx, fleet.Firmware{ID: "", Version: "2.0", Model: "m1"}, strings.NewReader("image"))
	if err != nil {
		tb.Fatal(err)
	}
	fuzzFirmwareID = fw.ID
	u, err := eng.CreateUpdate(ctx, rollout.CreateRequest{FirmwareID: fw.ID, Selector: fleet.Selector{Model: "m1"}})
	if err != nil {
		tb.Fatal(err)
	}
	fuzzUpdateID = u.ID

	s := &Server{Store: st, Engine: eng, Subscribe: br.Subscribe, Logger: log, MaxFirmwareSize: 64 << 10,
		StreamHeartbeat: time.Millisecond}
	toks, err := ParseTokens(strings.NewReader("ops admin " + testAdminToken + "\ngrafana read " + testReadToken + "\n"))
	if err != nil {
		tb.Fatal(err)
	}
	s.Tokens = toks
	tb.Cleanup(func() { s.Close() })
	return s.Handler()
}

// IDs of the fuzz server's firmware and update; "FW" and "UPD" in a fuzzed
// path stand for them.
var fuzzFirmwareID, fuzzUpdateID string

// validMethod reports whether m is a method net/http's server would pass
// on (a token of letters); others never reach a handler.
func validMethod(m string) bool {
	if m == "" || len(m) > 16 {
		return false
	}
	for _, c := range m {
		if c < 'A' || c > 'Z' {
			return false
		}
	}
	return true
}

// FuzzServer_Handler sends garbage requests — any method, path, query,
// body and Authorization header — to the real handler over a real store
// and engine, and checks that none panics or gets a 5xx, and that every
// API answer that is not the event stream is JSON.
func FuzzServer_Handler(f *testing.F) {
	for _, s := range []struct {
		method, path, query, body string
		auth                      byte
	}{
		{"GET", "/api/v1/health", "", "", 0},
		{"GET", "/api/v1/stats", "", "", 1},
		{"GET", "/metrics", "", "", 1},
		{"GET", "/api/v1/devices", "model=m1&version=1.0&online=true&limit=1&offset=1", "", 1},
		{"GET", "/api/v1/devices", "limit=99999999999999999999&offset=-1&online=maybe", "", 1},
		{"GET", "/api/v1/devices/dev-a", "", "", 1},
		{"GET", "/api/v1/devices/%00%ff", "", "", 1},
		{"GET", "/api/v1/fleet/summary", "", "", 2},
		{"GET", "/api/v1/firmware", "", "", 1},
		{"GET", "/api/v1/firmware/FW", "", "", 1},
		{"POST", "/api/v1/firmware", "version=1.2.3&name=app&model=m1", "\x00\x01image bytes", 2},
		{"POST", "/api/v1/firmware", "version=", "x", 2},
		{"POST", "/api/v1/updates", "", `{"firmware":"FW","selector":{"model":"m1","tags":{"site":"lyon"}},"policy":{"window":4,"phases":["10%","100%"],"failure_threshold":"5%","soak":"1m"}}`, 2},
		{"POST", "/api/v1/updates", "", `{"firmware":"FW","selector":{"devices":["dev-a"],"version":"<2.0"},"policy":{"max_in_flight":-1,"chunk_size":1e99,"maintenance":{"start":"25:00","end":"x"}}}`, 2},
		{"POST", "/api/v1/updates", "", `{"firmware":"FW","policy":{"start_at":"2026-13-45T99:00:00Z","dynamic":true}}`, 2},
		{"POST", "/api/v1/updates", "", `{"firmware":7}`, 2},
		{"POST", "/api/v1/updates", "", `[`, 1},
		{"GET", "/api/v1/updates", "", "", 1},
		{"GET", "/api/v1/updates/UPD", "", "", 1},
		{"GET", "/api/v1/updates/UPD/devices", "state=failed&limit=5&offset=0", "", 1},
		{"GET", "/api/v1/updates/UPD/devices", "state=%ff", "", 1},
		{"GET", "/api/v1/updates/UPD/events", "after=0&limit=2", "", 1},
		{"GET", "/api/v1/updates/UPD/events", "after=-5", "", 1},
		{"GET", "/api/v1/updates/UPD/events", "after=9223372036854775807", "", 1},
		{"POST", "/api/v1/updates/UPD/pause", "", "", 2},
		{"POST", "/api/v1/updates/UPD/resume", "", "", 2},
		{"POST", "/api/v1/updates/UPD/retry-failed", "", "", 2},
		{"POST", "/api/v1/updates/UPD/cancel", "", "", 2},
		{"POST", "/api/v1/updates/nope/pause", "", "", 1},
		{"GET", "/api/v1/events/stream", "update=UPD&after=0", "", 1},
		{"GET", "/api/v1/events/stream", "after=x&access_token=" + testReadToken, "", 0},
		{"DELETE", "/api/v1/updates/UPD", "", "", 3},
		{"GET", "/", "", "", 0},
		{"GET", "/../../etc/passwd", "", "", 0},
		{"GET", "/api/v1/../../app.js", "", "", 3},
	} {
		f.Add(s.method, s.path, s.query, []byte(s.body), s.auth, "Bearer x")
	}
	h := fuzzServer(f)
	f.Fuzz(func(t *testing.T, method, path, query string, body []byte, auth byte, rawAuth string) {
		if !validMethod(method) {
			t.Skip()
		}
		path = strings.NewReplacer("FW", fuzzFirmwareID, "UPD", fuzzUpdateID).Replace(path)
		if !strings.HasPrefix(path, "/") {
			path = "/" + path
		}
		u := &url.URL{Path: path, RawQuery: query}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		stream := strings.Contains(path, "stream")
		if stream {
			// The stream runs until the client leaves: leave at once.
			ctx, cancel = context.WithTimeout(ctx, 5*time.Millisecond)
			defer cancel()
		}
		req := httptest.NewRequestWithContext(ctx, "GET", "/", bytes.NewReader(body))
		req.Method, req.URL, req.RequestURI = method, u, u.RequestURI()
		switch auth % 4 {
		case 1:
			req.Header.Set("Authorization", "Bearer "+testReadToken)
		case 2:
			req.Header.Set("Authorization", "Bearer "+testAdminToken)
		case 3:
			req.Header.Set("Authorization", rawAuth)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		res := rec.Result()
		data, _ := io.ReadAll(res.Body)
		if res.StatusCode >= 500 && !(stream && ctx.Err() != nil) {
			t.Fatalf("%s %s?%s: %d %s", method, path, query, res.StatusCode, data)
		}
		if apiPath(req.URL.Path) && res.StatusCode >= 400 {
			var e Error
			if err := json.Unmarshal(data, &e); err != nil || e.Code == "" {
				t.Fatalf("%s %s: %d is not a JSON error: %q", method, path, res.StatusCode, data)
			}
		}
	})
}

// FuzzParseTokens checks that a token file never panics the parser and
// that every token it accepts is found by its own hash.
func FuzzParseTokens(f *testing.F) {
	f.Add("ops admin " + testAdminToken + "\n# c\n\ngrafana read " + HashToken(testReadToken) + "\n")
	f.Add("a read sha256:" + strings.Repeat("0", 64))
	f.Add("a admin \x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\n")
	f.Add("a read " + strings.Repeat("x", 70000))
	f.Fuzz(func(t *testing.T, file string) {
		toks, err := ParseTokens(strings.NewReader(file))
		if err != nil {
			return
		}
		if toks.Len() == 0 {
			t.Fatal("a parsed file has tokens")
		}
		for _, line := range strings.Split(file, "\n") {
			f := strings.Fields(line)
			if len(f) != 3 || strings.HasPrefix(f[0], "#") || strings.HasPrefix(f[2], HashPrefix) {
				continue
			}
			info, ok := toks.Lookup(f[2])
			if !ok || info.Name != f[0] {
				t.Fatalf("token of %q not found: %+v %v", f[0], info, ok)
			}
		}
	})
}
