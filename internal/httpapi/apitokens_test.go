package httpapi

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/sqlite"
)

func tokenBody(name, role string, expires *time.Time) io.Reader {
	b, err := json.Marshal(CreateTokenRequest{Name: name, Role: role, ExpiresAt: expires})
	if err != nil {
		panic(err) // a struct of strings and a time
	}
	return bytes.NewReader(b)
}

// scrape returns the text of /metrics.
func scrape(t *testing.T, base string) string {
	t.Helper()
	req, err := http.NewRequest("GET", base+"/metrics", nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+testAdminToken)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", b)
	return string(b)
}

// createAPIToken makes a token through the API with the admin token.
func createAPIToken(t *testing.T, base, name, role string) NewAPIToken {
	t.Helper()
	var out NewAPIToken
	resp := call(t, "POST", base+"/api/v1/tokens", tokenBody(name, role, nil), &out)
	require.Equal(t, http.StatusCreated, resp.StatusCode)
	require.True(t, strings.HasPrefix(out.Token, TokenPrefix), "%q", out.Token)
	return out
}

func TestAPITokens_WorkAtOnceAndStopAtOnceWhenRevoked(t *testing.T) {
	var logs bytes.Buffer
	base := newTestAPI(t, &Server{Logger: slog.New(slog.NewTextHandler(&logs, nil))})

	tok := createAPIToken(t, base, "grafana-2", "read")
	assert.Equal(t, "read", tok.Role)
	assert.Equal(t, TokenSourceDatabase, tok.Source)
	assert.Equal(t, http.StatusOK, callAs(t, tok.Token, "GET", base+"/api/v1/devices", nil, nil).StatusCode, "works without a restart")
	assert.Equal(t, http.StatusForbidden, callAs(t, tok.Token, "POST", base+"/api/v1/updates", strings.NewReader("{}"), nil).StatusCode, "a read token changes nothing")

	admin := createAPIToken(t, base, "ci", "admin")
	assert.Equal(t, http.StatusOK, callAs(t, admin.Token, "GET", base+"/api/v1/tokens", nil, nil).StatusCode, "an API-made admin token manages tokens")

	var revoked APITokenInfo
	resp := call(t, "POST", base+"/api/v1/tokens/grafana-2/revoke", nil, &revoked)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "grafana-2", revoked.Name)
	var e Error
	resp = callAs(t, tok.Token, "GET", base+"/api/v1/devices", nil, &e)
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode, "refused at once after revocation")
	assert.Equal(t, CodeUnauthorized, e.Code)

	again := createAPIToken(t, base, "grafana-2", "read")
	assert.NotEqual(t, tok.Token, again.Token, "a revoked name can be used again, with a new token")
	assert.Equal(t, http.StatusUnauthorized, callAs(t, tok.Token, "GET", base+"/api/v1/devices", nil, nil).StatusCode, "the old token stays dead")

	// The audit log names each change and who made it, never a secret.
	out := logs.String()
	assert.Contains(t, out, `msg="api token created" token=grafana-2 role=read`)
	assert.Contains(t, out, `msg="api token revoked" token=grafana-2 role=read by=ops`)
	for _, secret := range []string{tok.Token, again.Token, admin.Token, testAdminToken} {
		assert.NotContains(t, out, secret)
		sum := sha256.Sum256([]byte(secret))
		assert.NotContains(t, out, hex.EncodeToString(sum[:]))
	}
}

func TestAPITokens_ListShowsBothSourcesWithoutSecrets(t *testing.T) {
	base := newTestAPI(t, &Server{})
	tok := createAPIToken(t, base, "backup-bot", "admin")
	require.Equal(t, http.StatusOK, callAs(t, tok.Token, "GET", base+"/api/v1/health", nil, nil).StatusCode)
	require.Equal(t, http.StatusOK, callAs(t, testReadToken, "GET", base+"/api/v1/devices", nil, nil).StatusCode)
	require.Equal(t, http.StatusOK, callAs(t, tok.Token, "GET", base+"/api/v1/devices", nil, nil).StatusCode)

	req, err := http.NewRequest("GET", base+"/api/v1/tokens", nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+testAdminToken)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	raw, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", raw)
	for _, secret := range []string{tok.Token, testAdminToken, testReadToken} {
		assert.NotContains(t, string(raw), secret)
		sum := sha256.Sum256([]byte(secret))
		assert.NotContains(t, string(raw), hex.EncodeToString(sum[:]))
	}

	var list APITokenList
	call(t, "GET", base+"/api/v1/tokens", nil, &list)
	byName := map[string]APITokenInfo{}
	for _, e := range list.Tokens {
		byName[e.Name] = e
	}
	require.Len(t, byName, 3, "%+v", list)
	assert.Equal(t, TokenSourceFile, byName["ops"].Source)
	assert.Equal(t, "admin", byName["ops"].Role)
	assert.NotNil(t, byName["ops"].LastUsedAt, "used by this very request's predecessors")
	assert.Equal(t, TokenSourceFile, byName["grafana"].Source)
	assert.NotNil(t, byName["grafana"].LastUsedAt)
	b := byName["backup-bot"]
	assert.Equal(t, TokenSourceDatabase, b.Source)
	require.NotNil(t, b.CreatedAt)
	require.NotNil(t, b.LastUsedAt, "last use known")
	assert.Nil(t, b.ExpiresAt)

	e := callError(t, "POST", base+"/api/v1/tokens/ops/revoke", nil, http.StatusConflict, "token_in_file")
	assert.Contains(t, e.Message, "token file")
	callError(t, "POST", base+"/api/v1/tokens/nobody/revoke", nil, http.StatusNotFound, "token_not_found")
}

func TestAPITokens_RoutesAreAdminOnlyReadsIncluded(t *testing.T) {
	base := newTestAPI(t, &Server{})
	createAPIToken(t, base, "x", "read")
	for _, r := range []struct{ method, path string }{
		{"GET", "/api/v1/tokens"},
		{"POST", "/api/v1/tokens"},
		{"POST", "/api/v1/tokens/x/revoke"},
	} {
		var e Error
		resp := callAs(t, testReadToken, r.method, base+r.path, strings.NewReader(`{"name":"y","role":"admin"}`), &e)
		assert.Equal(t, http.StatusForbidden, resp.StatusCode, "%s %s", r.method, r.path)
		resp = callAs(t, "", r.method, base+r.path, strings.NewReader(`{"name":"y","role":"admin"}`), &e)
		assert.Equal(t, http.StatusUnauthorized, resp.StatusCode, "%s %s", r.method, r.path)
	}
	var list APITokenList
	call(t, "GET", base+"/api/v1/tokens", nil, &list)
	assert.Len(t, list.Tokens, 3, "nothing was made or revoked: %+v", list)
}

func TestAPITokens_CreationIsBoundedAndRefusalsCounted(t *testing.T) {
	base := newTestAPI(t, &Server{})
	past := time.Now().Add(-time.Minute)
	far := time.Now().Add(11 * 365 * 24 * time.Hour)
	for name, body := range map[string]io.Reader{
		"name too long":   tokenBody(strings.Repeat("a", fleet.MaxAPITokenName+1), "read", nil),
		"name with space": tokenBody("a b", "read", nil),
		"empty name":      tokenBody("", "read", nil),
		"unknown role":    tokenBody("a", "root", nil),
		"expired":         tokenBody("a", "read", &past),
		"too far":         tokenBody("a", "read", &far),
	} {
		t.Run(name, func(t *testing.T) {
			callError(t, "POST", base+"/api/v1/tokens", body, http.StatusBadRequest, CodeInvalidInput)
		})
	}
	callError(t, "POST", base+"/api/v1/tokens", tokenBody("ops", "read", nil), http.StatusConflict, "token_exists")
	createAPIToken(t, base, strings.Repeat("a", fleet.MaxAPITokenName), "read")
	callError(t, "POST", base+"/api/v1/tokens", tokenBody(strings.Repeat("a", fleet.MaxAPITokenName), "admin", nil), http.StatusConflict, "token_exists")
	for i := 1; i < fleet.MaxAPITokens; i++ {
		createAPIToken(t, base, fmt.Sprintf("t%03d", i), "read")
	}
	e := callError(t, "POST", base+"/api/v1/tokens", tokenBody("one-too-many", "read", nil), http.StatusConflict, "too_many_tokens")
	assert.Contains(t, e.Message, "revoke one")

	m := scrape(t, base)
	assert.Contains(t, m, `flota_api_token_creations_refused_total{reason="invalid"} 6`)
	assert.Contains(t, m, `flota_api_token_creations_refused_total{reason="exists"} 2`)
	assert.Contains(t, m, `flota_api_token_creations_refused_total{reason="limit"} 1`)
	assert.Contains(t, m, fmt.Sprintf(`flota_api_tokens{source="database"} %d`, fleet.MaxAPITokens))
	assert.Contains(t, m, `flota_api_tokens{source="file"} 2`)

	// Revoking one makes room.
	call(t, "POST", base+"/api/v1/tokens/t001/revoke", nil, nil)
	createAPIToken(t, base, "one-too-many", "read")
}

func TestAPITokens_ExpiredTokenIsRefusedNamingIt(t *testing.T) {
	st := newTestStore(t)
	base := newTestAPI(t, &Server{Store: st})
	add := func(name, token string, expires time.Time) {
		sum := sha256.Sum256([]byte(token))
		require.NoError(t, st.AddAPIToken(context.Background(), fleet.APIToken{Name: name, Role: "admin", Hash: hex.EncodeToString(sum[:]), ExpiresAt: &expires}))
	}
	old, fresh := NewToken(), NewToken()
	add("old", old, time.Now().Add(-time.Second))
	add("fresh", fresh, time.Now().Add(time.Hour))
	var e Error
	resp := callAs(t, old, "GET", base+"/api/v1/devices", nil, &e)
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	assert.Contains(t, e.Message, `"old" has expired`)
	assert.Equal(t, http.StatusOK, callAs(t, fresh, "GET", base+"/api/v1/devices", nil, nil).StatusCode)

	var out NewAPIToken
	exp := time.Now().Add(time.Hour).Truncate(time.Second)
	resp = call(t, "POST", base+"/api/v1/tokens", tokenBody("with-expiry", "read", &exp), &out)
	require.Equal(t, http.StatusCreated, resp.StatusCode)
	require.NotNil(t, out.ExpiresAt)
	assert.True(t, exp.Equal(*out.ExpiresAt))
}

// Tokens live in the database: another server on the same database (a
// restart) knows them, and the last use a server records survives it.
func TestAPITokens_SurviveRestartWithTheirLastUse(t *testing.T) {
	st := newTestStore(t)
	s1 := &Server{Addr: "127.0.0.1:0", Store: st, Tokens: testTokens(t)}
	require.NoError(t, s1.Open())
	var tok NewAPIToken
	resp := call(t, "POST", s1.URL()+"/api/v1/tokens", tokenBody("bot", "read", nil), &tok)
	require.Equal(t, http.StatusCreated, resp.StatusCode)
	require.Equal(t, http.StatusOK, callAs(t, tok.Token, "GET", s1.URL()+"/api/v1/devices", nil, nil).StatusCode)
	deadline := time.Now().Add(10 * time.Second)
	for {
		list, err := st.ListAPITokens(context.Background())
		require.NoError(t, err)
		require.Len(t, list, 1)
		if list[0].LastUsedAt != nil {
			break
		}
		require.True(t, time.Now().Before(deadline), "last use never recorded")
		time.Sleep(10 * time.Millisecond)
	}
	require.NoError(t, s1.Close())

	base := newTestAPI(t, &Server{Store: st})
	assert.Equal(t, http.StatusOK, callAs(t, tok.Token, "GET", base+"/api/v1/devices", nil, nil).StatusCode)
	var list APITokenList
	call(t, "GET", base+"/api/v1/tokens", nil, &list)
	var bot *APITokenInfo
	for i := range list.Tokens {
		if list.Tokens[i].Name == "bot" {
			bot = &list.Tokens[i]
		}
	}
	require.NotNil(t, bot)
	assert.NotNil(t, bot.LastUsedAt)
}

// BenchmarkServer_LookupDatabaseToken is the cost a request pays to be
// authenticated with a token of the database, among the most it holds.
func BenchmarkServer_LookupDatabaseToken(b *testing.B) {
	st := sqlite.New(b.TempDir())
	st.Logger = slog.New(slog.DiscardHandler)
	require.NoError(b, st.Open())
	b.Cleanup(func() { _ = st.Close() })
	s := &Server{Store: st}
	require.NoError(b, s.init())
	var last string
	for i := range fleet.MaxAPITokens {
		last = NewToken()
		sum := sha256.Sum256([]byte(last))
		require.NoError(b, st.AddAPIToken(context.Background(), fleet.APIToken{Name: fmt.Sprintf("t%03d", i), Role: "read", Hash: hex.EncodeToString(sum[:])}))
	}
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, st := s.lookupToken(ctx, last); st != tokenValid {
			b.Fatal("not found")
		}
	}
}
