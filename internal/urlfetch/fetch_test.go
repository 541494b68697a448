package urlfetch

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func tempFile(t *testing.T) *os.File {
	f, err := os.Create(filepath.Join(t.TempDir(), "img"))
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	return f
}

func TestFetch_RedirectFromHTTPSToHTTPIsRefused(t *testing.T) {
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("image")) }))
	defer plain.Close()
	secure := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, plain.URL+"/img", http.StatusFound)
	}))
	defer secure.Close()
	f := New(Options{MaxSize: 1 << 20, Attempts: 1, Transport: secure.Client().Transport})
	_, err := f.Fetch(context.Background(), secure.URL+"/img", tempFile(t), nil)
	require.ErrorIs(t, err, ErrRedirect)
	assert.Contains(t, err.Error(), "from https to http")
}

func TestFetch_OnlyHTTPAndHTTPSURLs(t *testing.T) {
	f := New(Options{MaxSize: 1 << 20})
	for _, u := range []string{"file:///etc/passwd", "ftp://host/x", "gopher://host/", "//host/x", "http:///x"} {
		_, err := f.Fetch(context.Background(), u, tempFile(t), nil)
		assert.Error(t, err, u)
	}
}

func TestFetch_CredentialsGoToTheirHostOnly(t *testing.T) {
	var mu sync.Mutex
	got := map[string]string{} // host → Authorization
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got[strings.Split(r.Host, ":")[0]] = r.Header.Get("Authorization")
		mu.Unlock()
		if strings.HasPrefix(r.Host, "127.0.0.1") {
			http.Redirect(w, r, "http://localhost:"+strings.Split(r.Host, ":")[1]+"/img", http.StatusFound)
			return
		}
		_, _ = w.Write([]byte("image"))
	}))
	defer srv.Close()
	p, err := ParsePolicy("127.0.0.0/8,::1,localhost")
	require.NoError(t, err)
	f := New(Options{MaxSize: 1 << 20, Attempts: 1, Policy: p, Credentials: Credentials{"127.0.0.1": "Bearer secret"}})
	res, err := f.Fetch(context.Background(), srv.URL+"/img", tempFile(t), nil)
	require.NoError(t, err)
	assert.EqualValues(t, 5, res.Size)
	assert.Equal(t, "Bearer secret", got["127.0.0.1"])
	assert.Empty(t, got["localhost"], "the redirect's other host got no credentials")
}

func TestFetch_RetriesServerErrorsNotClientErrors(t *testing.T) {
	var calls sync.Map // path → *int
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := calls.LoadOrStore(r.URL.Path, new(int))
		*n.(*int)++
		if r.URL.Path == "/flaky" && *n.(*int) == 3 {
			_, _ = w.Write([]byte("image"))
			return
		}
		code := http.StatusServiceUnavailable
		if r.URL.Path == "/gone" {
			code = http.StatusNotFound
		}
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(code)
	}))
	defer srv.Close()
	p, err := ParsePolicy("127.0.0.1")
	require.NoError(t, err)
	f := New(Options{MaxSize: 1 << 20, Attempts: 3, Backoff: 1, Policy: p})
	res, err := f.Fetch(context.Background(), srv.URL+"/flaky", tempFile(t), nil)
	require.NoError(t, err)
	assert.Equal(t, 3, res.Attempts, "two 503s, then the image")
	res, err = f.Fetch(context.Background(), srv.URL+"/gone", tempFile(t), nil)
	require.ErrorIs(t, err, ErrHTTPStatus)
	assert.Equal(t, 1, res.Attempts, "a 404 is not tried again")
	assert.Contains(t, err.Error(), "404 Not Found")
}
