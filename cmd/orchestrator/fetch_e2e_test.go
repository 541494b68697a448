package main

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/httpapi"
)

// artifactStore is the test's HTTP server standing for a build system's
// artifact store; each path behaves as a test needs. It records the
// requests and the body bytes it wrote.
type artifactStore struct {
	*httptest.Server
	// mu guards requests and handlers.
	mu       sync.Mutex
	requests []*http.Request
	written  atomic.Int64 // body bytes written, all requests together
	active   atomic.Int32 // handlers running
	handlers map[string]http.HandlerFunc
}

func newArtifactStore(t *testing.T, handlers map[string]http.HandlerFunc) *artifactStore {
	a := &artifactStore{handlers: handlers}
	a.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		a.requests = append(a.requests, r.Clone(r.Context()))
		h := a.handlers[r.URL.Path]
		a.mu.Unlock()
		if h == nil {
			http.NotFound(w, r)
			return
		}
		a.active.Add(1)
		defer a.active.Add(-1)
		h(&countingWriter{ResponseWriter: w, n: &a.written}, r)
	}))
	t.Cleanup(a.Close)
	return a
}

func (a *artifactStore) seen() []*http.Request {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]*http.Request(nil), a.requests...)
}

// countingWriter counts the body bytes a handler wrote.
type countingWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.n.Add(int64(n))
	return n, err
}

func (c *countingWriter) Flush() { c.ResponseWriter.(http.Flusher).Flush() }

func randomImage(t *testing.T, n int) ([]byte, string) {
	b := make([]byte, n)
	_, err := rand.Read(b)
	require.NoError(t, err)
	sum := sha256.Sum256(b)
	return b, hex.EncodeToString(sum[:])
}

// fetchServer starts an orchestrator allowed to fetch from 127.0.0.1 only,
// with short pauses between attempts.
func fetchServer(t *testing.T, extra ...string) *server {
	return startServer(t, append([]string{"--fetch-allow", "127.0.0.1/32", "--fetch-backoff", "10ms",
		"--fetch-read-timeout", "2s", "--max-firmware-size", "4MiB"}, extra...)...)
}

// api calls the orchestrator's API with its admin token.
func (s *server) api(method, path string, in, out any) int {
	s.t.Helper()
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		require.NoError(s.t, err)
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, s.url+path, body)
	require.NoError(s.t, err)
	req.Header.Set("Authorization", "Bearer "+s.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(s.t, err)
	defer resp.Body.Close()
	if out != nil {
		require.NoError(s.t, json.NewDecoder(resp.Body).Decode(out))
	}
	return resp.StatusCode
}

func (s *server) metrics() string {
	s.t.Helper()
	req, err := http.NewRequest("GET", s.url+"/metrics", nil)
	require.NoError(s.t, err)
	req.Header.Set("Authorization", "Bearer "+s.token)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(s.t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(s.t, err)
	return string(b)
}

// fetchRefused returns the value of flota_firmware_fetch_refused_total
// for reason in the metrics text m, or "none".
func fetchRefused(m, reason string) string {
	prefix := `flota_firmware_fetch_refused_total{reason="` + reason + `"} `
	for line := range strings.Lines(m) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), prefix); ok {
			return v
		}
	}
	return "none"
}

// noPartialImages asserts that the firmware directory holds no partial
// download.
func noPartialImages(t *testing.T, s *server) {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(s.data, "firmware"))
	require.NoError(t, err)
	for _, e := range entries {
		assert.False(t, strings.HasPrefix(e.Name(), "."), "partial file %s left behind", e.Name())
	}
}

func TestFetch_WithSHA256StoresTheImageAndNeverShowsCredentials(t *testing.T) {
	img, sum := randomImage(t, 300<<10)
	var auth atomic.Value
	store := newArtifactStore(t, map[string]http.HandlerFunc{
		"/fw/app.bin": func(w http.ResponseWriter, r *http.Request) {
			auth.Store(r.Header.Get("Authorization"))
			http.ServeContent(w, r, "app.bin", time.Time{}, bytes.NewReader(img))
		},
	})
	t.Setenv("FLOTA_FETCH_CREDENTIALS", "127.0.0.1 bearer store-secret-token")
	s := fetchServer(t)
	raw := strings.Replace(store.URL, "http://", "http://bob:url-secret@", 1) + "/fw/app.bin?sig=query-secret"

	out := s.mustCLI("firmware", "add", "--url", raw, "--version", "2.1.0", "--model", "sensor", "--sha256", sum)
	id := strings.TrimSpace(out)
	require.True(t, strings.HasPrefix(id, "fw-"), out)
	var fw fleet.Firmware
	s.getJSON("/api/v1/firmware/"+id, &fw)
	assert.Equal(t, sum, fw.SHA256)
	assert.EqualValues(t, len(img), fw.Size)
	assert.Equal(t, "app.bin", fw.Name, "named after the URL's file")
	assert.Equal(t, "Bearer store-secret-token", auth.Load(), "the store's credentials for its host are sent")

	var list httpapi.FetchList
	require.Equal(t, http.StatusOK, s.api("GET", "/api/v1/firmware/fetches", nil, &list))
	require.Len(t, list.Fetches, 1)
	job := list.Fetches[0]
	assert.Equal(t, httpapi.FetchDone, job.State)
	assert.EqualValues(t, len(img), job.Bytes)
	assert.False(t, job.Unverified)
	shown, _ := json.Marshal(list)
	for _, secret := range []string{"store-secret-token", "url-secret", "query-secret"} {
		assert.NotContains(t, string(shown), secret)
		assert.NotContains(t, s.logString(), secret)
	}
	noPartialImages(t, s)

	// Without --sha256 or a signature, the CLI and the log say so.
	other, _ := randomImage(t, 1000)
	store.mu.Lock()
	store.handlers["/fw/other.bin"] = func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write(other) }
	store.mu.Unlock()
	res := s.cliFull("firmware", "add", "--url", store.URL+"/fw/other.bin", "--version", "2.1.1")
	require.Zero(t, res.code, res.stderr)
	assert.Contains(t, res.stderr, "nothing vouches for the bytes")
	assert.Contains(t, s.logString(), "nothing vouches for the bytes")
}

func TestFetch_DigestMismatchDiscardsTheImage(t *testing.T) {
	img, _ := randomImage(t, 100<<10)
	_, wrong := randomImage(t, 10)
	store := newArtifactStore(t, map[string]http.HandlerFunc{
		"/fw.bin": func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write(img) },
	})
	s := fetchServer(t)
	res := s.cliFull("firmware", "add", "--url", store.URL+"/fw.bin", "--version", "1.0.0", "--sha256", wrong)
	assert.Equal(t, 1, res.code)
	assert.Contains(t, res.stderr, "SHA-256 mismatch")
	assert.Contains(t, res.stderr, "discarded")
	var fws httpapi.FirmwareList
	s.getJSON("/api/v1/firmware", &fws)
	assert.Empty(t, fws.Firmware)
	noPartialImages(t, s)
	assert.Equal(t, "1", fetchRefused(s.metrics(), "digest_mismatch"))
}

func TestFetch_DroppedConnectionIsResumedWithARangeRequest(t *testing.T) {
	img, sum := randomImage(t, 1<<20)
	half := len(img) / 2
	var calls atomic.Int32
	store := newArtifactStore(t, map[string]http.HandlerFunc{
		"/big.bin": func(w http.ResponseWriter, r *http.Request) {
			if calls.Add(1) == 1 {
				w.Header().Set("Content-Length", strconv.Itoa(len(img)))
				w.Header().Set("Accept-Ranges", "bytes")
				w.Header().Set("ETag", `"v1"`)
				_, _ = w.Write(img[:half])
				w.(http.Flusher).Flush()
				panic(http.ErrAbortHandler) // the connection drops halfway
			}
			w.Header().Set("ETag", `"v1"`)
			http.ServeContent(w, r, "big.bin", time.Time{}, bytes.NewReader(img))
		},
	})
	s := fetchServer(t)
	id := strings.TrimSpace(s.mustCLI("firmware", "add", "--url", store.URL+"/big.bin", "--version", "3.0.0", "--sha256", sum))
	var fw fleet.Firmware
	s.getJSON("/api/v1/firmware/"+id, &fw)
	assert.Equal(t, sum, fw.SHA256)

	reqs := store.seen()
	require.Len(t, reqs, 2)
	assert.Empty(t, reqs[0].Header.Get("Range"))
	assert.Equal(t, fmt.Sprintf("bytes=%d-", half), reqs[1].Header.Get("Range"), "the second request resumes")
	assert.Equal(t, `"v1"`, reqs[1].Header.Get("If-Range"))
	assert.EqualValues(t, len(img), store.written.Load(), "only the missing half was sent again")
}

func TestFetch_ServerIgnoringRangeRestartsFromZero(t *testing.T) {
	img, sum := randomImage(t, 256<<10)
	var calls atomic.Int32
	store := newArtifactStore(t, map[string]http.HandlerFunc{
		"/fw.bin": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", strconv.Itoa(len(img)))
			if calls.Add(1) == 1 {
				_, _ = w.Write(img[:1000])
				w.(http.Flusher).Flush()
				panic(http.ErrAbortHandler)
			}
			_, _ = w.Write(img) // 200 with everything, Range ignored
		},
	})
	s := fetchServer(t)
	id := strings.TrimSpace(s.mustCLI("firmware", "add", "--url", store.URL+"/fw.bin", "--version", "3.0.1", "--sha256", sum))
	var fw fleet.Firmware
	s.getJSON("/api/v1/firmware/"+id, &fw)
	assert.Equal(t, sum, fw.SHA256, "the bytes of the first attempt were not kept before the full answer")
}

func TestFetch_RedirectToAPrivateAddressIsRefused(t *testing.T) {
	store := newArtifactStore(t, map[string]http.HandlerFunc{
		"/meta": func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "http://169.254.169.254/latest/meta-data/", http.StatusFound)
		},
		"/local": func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "http://127.0.0.2"+strings.TrimPrefix(r.Host, "127.0.0.1")+"/x", http.StatusFound)
		},
		"/loop": func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/loop", http.StatusFound) },
	})
	s := fetchServer(t)
	for _, path := range []string{"/meta", "/local"} {
		res := s.cliFull("firmware", "add", "--url", store.URL+path, "--version", "1.0.0", "--sha256", strings.Repeat("0", 64))
		assert.Equal(t, 1, res.code, path)
		assert.Contains(t, res.stderr, "not allowed as a fetch target", path)
	}
	res := s.cliFull("firmware", "add", "--url", store.URL+"/loop", "--version", "1.0.0", "--sha256", strings.Repeat("0", 64))
	assert.Contains(t, res.stderr, "more than 5 redirects")
	m := s.metrics()
	assert.Equal(t, "2", fetchRefused(m, "forbidden_address"))
	assert.Equal(t, "1", fetchRefused(m, "redirect"))

	// Without the allow list, the test's own server on 127.0.0.1 is refused too.
	plain := startServer(t)
	res = plain.cliFull("firmware", "add", "--url", store.URL+"/meta", "--version", "1.0.0")
	assert.Contains(t, res.stderr, "127.0.0.1")
	assert.Contains(t, res.stderr, "not allowed as a fetch target")
	assert.Len(t, store.seen(), 1+1+6, "/meta, /local, /loop and 5 redirects: the refused addresses got no request")
}

func TestFetch_ImageOverTheSizeLimitIsRefusedBeforeItIsAllRead(t *testing.T) {
	const size = 64 << 20
	chunk := make([]byte, 64<<10)
	stream := func(w http.ResponseWriter, r *http.Request) {
		for sent := 0; sent < size; sent += len(chunk) {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}
	store := newArtifactStore(t, map[string]http.HandlerFunc{
		"/chunked.bin": stream,
		"/announced.bin": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", strconv.Itoa(size))
			stream(w, r)
		},
	})
	s := fetchServer(t) // --max-firmware-size 4MiB
	for _, path := range []string{"/chunked.bin", "/announced.bin"} {
		res := s.cliFull("firmware", "add", "--url", store.URL+path, "--version", "1.0.0")
		assert.Equal(t, 1, res.code, path)
		assert.Contains(t, res.stderr, "larger than --max-firmware-size", path)
	}
	poll(t, 30*time.Second, func() bool { return store.active.Load() == 0 }, "the server's writes fail")
	t.Logf("the server wrote %d bytes of the 2×64 MiB offered", store.written.Load())
	assert.Less(t, store.written.Load(), int64(2*16<<20), "the server could not send the whole 2×64 MiB")
	assert.Equal(t, "2", fetchRefused(s.metrics(), "too_large"))
	noPartialImages(t, s)
}

// stall answers Content-Length total, sends n bytes, then nothing until
// the client goes or the test ends.
func stall(t *testing.T, n, total int) http.HandlerFunc {
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(total))
		_, _ = w.Write(make([]byte, n))
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
		case <-stop:
		}
	}
}

func TestFetch_SlowServerTimesOut(t *testing.T) {
	store := newArtifactStore(t, map[string]http.HandlerFunc{"/slow.bin": stall(t, 1000, 100000)})
	s := fetchServer(t, "--fetch-read-timeout", "300ms", "--fetch-attempts", "2")
	res := s.cliFull("firmware", "add", "--url", store.URL+"/slow.bin", "--version", "1.0.0")
	assert.Equal(t, 1, res.code)
	assert.Contains(t, res.stderr, "no data from the server within the read timeout")
	assert.Len(t, store.seen(), 2, "tried again once (--fetch-attempts 2)")
	assert.Equal(t, "1", fetchRefused(s.metrics(), "timeout"))
}

func TestFetch_CancelledMidwayStoresNothing(t *testing.T) {
	store := newArtifactStore(t, map[string]http.HandlerFunc{"/fw.bin": stall(t, 4096, 1000000)})
	s := fetchServer(t, "--fetch-read-timeout", "1m", "--max-fetches", "1")
	id := strings.TrimSpace(s.mustCLI("firmware", "add", "--url", store.URL+"/fw.bin", "--version", "1.0.0", "--no-wait"))
	require.True(t, strings.HasPrefix(id, "fetch-"), id)
	var job httpapi.FetchJob
	poll(t, 30*time.Second, func() bool {
		require.Equal(t, http.StatusOK, s.api("GET", "/api/v1/firmware/fetches/"+id, nil, &job))
		return job.Bytes > 0
	}, "the fetch has bytes")
	assert.EqualValues(t, 1000000, job.Total)
	assert.True(t, job.Unverified)
	var refusal httpapi.Error
	require.Equal(t, http.StatusServiceUnavailable, s.api("POST", "/api/v1/firmware/fetches",
		httpapi.FetchRequest{URL: store.URL + "/fw.bin", Version: "1.0.1"}, &refusal), "--max-fetches 1 runs")
	assert.Equal(t, "too_many_fetches", refusal.Code)
	assert.Equal(t, "1", fetchRefused(s.metrics(), "busy"))

	require.Equal(t, http.StatusOK, s.api("POST", "/api/v1/firmware/fetches/"+id+"/cancel", nil, &job))
	assert.Equal(t, httpapi.FetchCancelled, job.State)
	var fws httpapi.FirmwareList
	s.getJSON("/api/v1/firmware", &fws)
	assert.Empty(t, fws.Firmware)
	noPartialImages(t, s)
	assert.Equal(t, http.StatusNotFound, s.api("GET", "/api/v1/firmware/fetches/fetch-nope", nil, nil))
}

func TestFetch_RestartForgetsRunningFetchesAndTheirPartialFiles(t *testing.T) {
	store := newArtifactStore(t, map[string]http.HandlerFunc{"/fw.bin": stall(t, 4096, 1000000)})
	s := fetchServer(t, "--fetch-read-timeout", "1m")
	id := strings.TrimSpace(s.mustCLI("firmware", "add", "--url", store.URL+"/fw.bin", "--version", "1.0.0", "--sha256", strings.Repeat("a", 64), "--no-wait"))
	var job httpapi.FetchJob
	poll(t, 30*time.Second, func() bool {
		require.Equal(t, http.StatusOK, s.api("GET", "/api/v1/firmware/fetches/"+id, nil, &job))
		return job.Bytes > 0
	}, "the fetch has bytes")
	s.kill() // a crash: the partial file stays until the next start
	partial, err := filepath.Glob(filepath.Join(s.data, "firmware", ".*"))
	require.NoError(t, err)
	require.NotEmpty(t, partial, "the crash left the partial download")
	s.restart()
	assert.Equal(t, http.StatusNotFound, s.api("GET", "/api/v1/firmware/fetches/"+id, nil, nil), "jobs live in memory")
	noPartialImages(t, s)
}

func TestFetch_CLIShowsProgressWhileItWaits(t *testing.T) {
	const pieces, piece = 25, 1024
	store := newArtifactStore(t, map[string]http.HandlerFunc{
		"/trickle.bin": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", strconv.Itoa(pieces*piece))
			for range pieces { // 2.5 s at least: the CLI asks every second
				_, _ = w.Write(make([]byte, piece))
				w.(http.Flusher).Flush()
				time.Sleep(100 * time.Millisecond)
			}
		},
	})
	s := fetchServer(t)
	res := s.cliFull("firmware", "add", "--url", store.URL+"/trickle.bin", "--version", "1.0.0")
	require.Zero(t, res.code, res.stderr)
	assert.Regexp(t, `fetch-[0-9a-f]+: running [0-9.]+ KiB of 25\.0 KiB, [0-9.]+ (B|KiB)/s`, res.stderr)
	assert.True(t, strings.HasPrefix(strings.TrimSpace(res.stdout), "fw-"), res.stdout)
}
