package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/sqlite"
)

// Tokens of the test servers: newTestAPI installs both.
const (
	testAdminToken = "flota_test-admin-0123456789abcdef"
	testReadToken  = "flota_test-read-0123456789abcdef"
)

// testTokens holds testAdminToken in the clear and testReadToken as its
// hash, the two forms of a token file.
func testTokens(t *testing.T) *Tokens {
	t.Helper()
	toks, err := ParseTokens(strings.NewReader("# test tokens\nops admin " + testAdminToken +
		"\n\n  grafana\tread " + HashToken(testReadToken) + "\n"))
	require.NoError(t, err)
	require.Equal(t, 2, toks.Len())
	return toks
}

func TestParseTokens_RefusesBadFiles(t *testing.T) {
	good := NewToken()
	for name, file := range map[string]string{
		"empty":             "",
		"only comments":     "# nothing\n\n",
		"two fields":        "ops admin\n",
		"four fields":       "ops admin " + good + " extra\n",
		"unknown scope":     "ops root " + good + "\n",
		"short token":       "ops admin short\n",
		"bad hash":          "ops admin sha256:abcd\n",
		"hash not hex":      "ops admin sha256:" + strings.Repeat("zz", 32) + "\n",
		"name twice":        "ops admin " + good + "\nops read " + NewToken() + "\n",
		"token twice":       "ops admin " + good + "\nbot read " + good + "\n",
		"token twice, hash": "ops admin " + good + "\nbot read " + HashToken(good) + "\n",
	} {
		t.Run(name, func(t *testing.T) {
			_, err := ParseTokens(strings.NewReader(file))
			assert.Error(t, err)
		})
	}
}

func TestTokens_LookupByHash(t *testing.T) {
	toks := testTokens(t)
	info, ok := toks.Lookup(testAdminToken)
	require.True(t, ok)
	assert.Equal(t, TokenInfo{Name: "ops", Scope: ScopeAdmin}, info)
	info, ok = toks.Lookup(testReadToken)
	require.True(t, ok, "a token listed by its hash")
	assert.Equal(t, TokenInfo{Name: "grafana", Scope: ScopeRead}, info)

	for _, bad := range []string{"", HashToken(testReadToken), testAdminToken + "x", testAdminToken[:len(testAdminToken)-1]} {
		_, ok := toks.Lookup(bad)
		assert.False(t, ok, "%q", bad)
	}
	var none *Tokens
	_, ok = none.Lookup(testAdminToken)
	assert.False(t, ok, "no token set knows no token")
}

func TestNewToken_IsRandomAndRecognisable(t *testing.T) {
	a, b := NewToken(), NewToken()
	assert.NotEqual(t, a, b)
	assert.True(t, strings.HasPrefix(a, TokenPrefix))
	assert.Len(t, a, len(TokenPrefix)+43, "32 bytes of unpadded base64url")
	toks, err := ParseTokens(strings.NewReader("x admin " + HashToken(a)))
	require.NoError(t, err)
	_, ok := toks.Lookup(a)
	assert.True(t, ok)
}

func TestLoadTokens(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tokens")
	_, err := LoadTokens(path)
	assert.Error(t, err, "a missing file")
	require.NoError(t, os.WriteFile(path, []byte("ops admin "+testAdminToken+"\n"), 0o600))
	toks, err := LoadTokens(path)
	require.NoError(t, err)
	_, ok := toks.Lookup(testAdminToken)
	assert.True(t, ok)
}

// authStatus sends method path with token ("" for none) and returns the
// status, without waiting for a stream's body.
func authStatus(t *testing.T, base, token, method, path string, header http.Header) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, base+path, nil)
	require.NoError(t, err)
	for k, v := range header {
		req.Header[k] = v
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	return resp.StatusCode, resp.Header.Get("WWW-Authenticate")
}

func TestServer_EveryRouteNeedsItsScope(t *testing.T) {
	s := &Server{}
	base := newTestAPI(t, s)
	t.Cleanup(func() { assert.NoError(t, s.Close()) }) // ends the event streams

	paths := []route{{method: "GET", pattern: "/metrics"}}
	paths = append(paths, s.routes()...)
	for _, r := range paths {
		path := strings.NewReplacer("{id}", "x", "{name}", "x").Replace(r.pattern)
		t.Run(r.method+" "+path, func(t *testing.T) {
			if publicPaths[r.pattern] {
				st, _ := authStatus(t, base, "", r.method, path, nil)
				assert.Equal(t, http.StatusOK, st, "a public path answers without a token")
				return
			}
			st, challenge := authStatus(t, base, "", r.method, path, nil)
			assert.Equal(t, http.StatusUnauthorized, st, "no token")
			assert.Equal(t, `Bearer realm="flota"`, challenge)
			st, _ = authStatus(t, base, "flota_not-a-known-token-at-all", r.method, path, nil)
			assert.Equal(t, http.StatusUnauthorized, st, "unknown token")
			st, _ = authStatus(t, base, "", r.method, path, http.Header{"Authorization": {"Basic " + testAdminToken}})
			assert.Equal(t, http.StatusUnauthorized, st, "not a bearer token")

			st, _ = authStatus(t, base, testReadToken, r.method, path, nil)
			if r.method == "GET" && !strings.HasPrefix(r.pattern, tokensPath) {
				assert.NotContains(t, []int{401, 403}, st, "a read token reads")
			} else {
				assert.Equal(t, http.StatusForbidden, st, "a read token does not change things")
			}
			st, _ = authStatus(t, base, testAdminToken, r.method, path, nil)
			assert.NotContains(t, []int{401, 403}, st, "an admin token does everything")
		})
	}

	t.Run("error bodies", func(t *testing.T) {
		callErrorAs(t, "", "GET", base+"/api/v1/devices", http.StatusUnauthorized, CodeUnauthorized)
		e := callErrorAs(t, testReadToken, "POST", base+"/api/v1/updates/x/cancel", http.StatusForbidden, CodeForbidden)
		assert.Contains(t, e.Message, "grafana")
		assert.Contains(t, e.Message, "admin")
		callErrorAs(t, "", "GET", base+"/api/v1/nope", http.StatusUnauthorized, CodeUnauthorized)
	})
	t.Run("scheme is case-insensitive", func(t *testing.T) {
		st, _ := authStatus(t, base, "", "GET", "/api/v1/devices", http.Header{"Authorization": {"bearer " + testReadToken}})
		assert.Equal(t, http.StatusOK, st)
	})
	t.Run("dashboard files are public", func(t *testing.T) {
		for _, p := range []string{"/", "/app.js", "/app.css"} {
			st, _ := authStatus(t, base, "", "GET", p, nil)
			assert.Equal(t, http.StatusOK, st, p)
		}
	})
}

func callErrorAs(t *testing.T, token, method, url string, status int, code string) Error {
	t.Helper()
	var e Error
	resp := callAs(t, token, method, url, nil, &e)
	assert.Equal(t, status, resp.StatusCode, "%+v", e)
	assert.Equal(t, code, e.Code)
	assert.NotEmpty(t, e.Message)
	return e
}

func TestServer_AccessTokenParamOnlyOnTheEventStream(t *testing.T) {
	s := &Server{}
	base := newTestAPI(t, s)
	t.Cleanup(func() { assert.NoError(t, s.Close()) })

	st, _ := authStatus(t, base, "", "GET", "/api/v1/events/stream?"+AccessTokenParam+"="+testReadToken, nil)
	assert.Equal(t, http.StatusOK, st, "EventSource cannot set headers: the stream takes the token as a parameter")
	st, _ = authStatus(t, base, "", "GET", "/api/v1/events/stream?"+AccessTokenParam+"=flota_wrong-wrong-wrong", nil)
	assert.Equal(t, http.StatusUnauthorized, st)
	st, _ = authStatus(t, base, "", "GET", "/api/v1/devices?"+AccessTokenParam+"="+testAdminToken, nil)
	assert.Equal(t, http.StatusUnauthorized, st, "other routes ignore the parameter (tokens stay out of URLs)")
	st, _ = authStatus(t, base, "", "POST", "/api/v1/updates/x/cancel?"+AccessTokenParam+"="+testAdminToken, nil)
	assert.Equal(t, http.StatusUnauthorized, st)
}

func TestServer_WithoutTokensOnlyPublicPathsAnswer(t *testing.T) {
	s := &Server{Store: newTestStore(t)}
	h := s.Handler()
	for path, want := range map[string]int{
		"/api/v1/health":       http.StatusOK,
		"/api/v1/openapi.json": http.StatusOK,
		"/":                    http.StatusOK,
		"/api/v1/devices":      http.StatusUnauthorized,
		"/metrics":             http.StatusUnauthorized,
	} {
		req, err := http.NewRequest("GET", path, nil)
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+testAdminToken)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		assert.Equal(t, want, rec.Code, path)
	}
}

func TestServer_UploadWithoutAdminTokenStoresNothing(t *testing.T) {
	s := &Server{}
	base := newTestAPI(t, s)
	for _, tok := range []string{"", testReadToken} {
		var e Error
		resp := callAs(t, tok, "POST", base+"/api/v1/firmware?version=1.0.0", bytes.NewReader(make([]byte, 4096)), &e)
		assert.Contains(t, []int{401, 403}, resp.StatusCode)
	}
	fws, err := s.Store.ListFirmware(context.Background())
	require.NoError(t, err)
	assert.Empty(t, fws)
	assertNoFirmwareFiles(t, s)
}

// assertNoFirmwareFiles checks that the store's firmware directory holds no
// image and no partial upload.
func assertNoFirmwareFiles(t *testing.T, s *Server) {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(s.Store.DataDir, sqlite.FirmwareDir))
	require.NoError(t, err)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	assert.Empty(t, names)
}

func TestOpenAPI_DescribesAuthentication(t *testing.T) {
	var doc struct {
		Security   []map[string][]string `json:"security"`
		Components struct {
			SecuritySchemes map[string]struct {
				Type, Scheme, In, Name string
			} `json:"securitySchemes"`
		} `json:"components"`
		Paths map[string]map[string]struct {
			Security  *[]map[string][]string `json:"security"`
			Responses map[string]any         `json:"responses"`
		} `json:"paths"`
	}
	require.NoError(t, json.Unmarshal(openAPIDoc, &doc))
	assert.Equal(t, []map[string][]string{{"bearer": {}}}, doc.Security, "every operation needs a token unless it says otherwise")
	assert.Equal(t, "bearer", doc.Components.SecuritySchemes["bearer"].Scheme)
	assert.Equal(t, AccessTokenParam, doc.Components.SecuritySchemes["accessToken"].Name)
	for path, ops := range doc.Paths {
		for method, op := range ops {
			public := op.Security != nil && len(*op.Security) == 0
			assert.Equal(t, publicPaths[path], public, "%s %s: public in the document iff public in the server", method, path)
			if public {
				continue
			}
			assert.Contains(t, op.Responses, "401", "%s %s", method, path)
			if method != "get" {
				assert.Contains(t, op.Responses, "403", "%s %s", method, path)
			}
			if path == streamPath {
				require.NotNil(t, op.Security)
				assert.Contains(t, *op.Security, map[string][]string{"accessToken": {}})
			}
		}
	}
}
