package httpapi

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
)

// Scope is what a token may do.
type Scope int

// Scopes, in increasing power: an admin token may do everything a read
// token may.
const (
	// ScopeRead reads: every GET of the API, the event stream and /metrics.
	ScopeRead Scope = iota + 1
	// ScopeAdmin also changes things: every POST (uploads, updates, pause,
	// resume, cancel, retry).
	ScopeAdmin
)

func (s Scope) String() string {
	switch s {
	case ScopeRead:
		return "read"
	case ScopeAdmin:
		return "admin"
	}
	return fmt.Sprintf("scope(%d)", int(s))
}

// ParseScope parses "read" or "admin".
func ParseScope(s string) (Scope, error) {
	switch s {
	case "read":
		return ScopeRead, nil
	case "admin":
		return ScopeAdmin, nil
	}
	return 0, fmt.Errorf("scope %q: want read or admin", s)
}

// Token prefixes.
const (
	// TokenPrefix starts every token NewToken makes, so that a leaked one is
	// easy to recognise (and to search for in logs and repositories).
	TokenPrefix = "flota_"
	// HashPrefix marks a token file entry that holds a token's SHA-256
	// (HashToken) instead of the token itself.
	HashPrefix = "sha256:"
	// AccessTokenParam is the query parameter that carries a token on the
	// event stream, where browsers (EventSource) cannot set a header.
	AccessTokenParam = "access_token"
)

// Tokens is a set of API tokens, kept as SHA-256 hashes only. It is
// immutable once loaded and safe for concurrent use.
type Tokens struct {
	entries []tokenEntry
}

type tokenEntry struct {
	name  string
	scope Scope
	hash  [sha256.Size]byte
}

// TokenInfo is what a request's token is known as.
type TokenInfo struct {
	Name  string
	Scope Scope
}

// NewToken returns a new random token: TokenPrefix and 32 random bytes in
// unpadded base64url.
func NewToken() string {
	var b [32]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	return TokenPrefix + base64.RawURLEncoding.EncodeToString(b[:])
}

// HashToken returns the token file form of token's hash: "sha256:" and the
// hex SHA-256 of the token.
func HashToken(token string) string {
	sum := sha256.Sum256([]byte(token))
	return HashPrefix + hex.EncodeToString(sum[:])
}

// ParseTokens reads a token file: one token a line, as three fields
// separated by spaces or tabs,
//
//	NAME SCOPE TOKEN
//
// where SCOPE is read or admin and TOKEN is the token itself or
// "sha256:" and its hex SHA-256 (HashToken). Blank lines and lines starting
// with # are ignored. Names and tokens must be unique and tokens at least
// 16 characters long.
func ParseTokens(r io.Reader) (*Tokens, error) {
	t := &Tokens{}
	names := map[string]bool{}
	hashes := map[[sha256.Size]byte]bool{}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 3 {
			return nil, fmt.Errorf("line %d: want NAME SCOPE TOKEN, got %d fields", n, len(f))
		}
		scope, err := ParseScope(f[1])
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		e := tokenEntry{name: f[0], scope: scope}
		if h, ok := strings.CutPrefix(f[2], HashPrefix); ok {
			b, err := hex.DecodeString(h)
			if err != nil || len(b) != sha256.Size {
				return nil, fmt.Errorf("line %d: %s needs 64 hex digits", n, HashPrefix)
			}
			copy(e.hash[:], b)
		} else {
			if len(f[2]) < 16 {
				return nil, fmt.Errorf("line %d: token of %q shorter than 16 characters", n, f[0])
			}
			e.hash = sha256.Sum256([]byte(f[2]))
		}
		if names[e.name] {
			return nil, fmt.Errorf("line %d: name %q appears twice", n, e.name)
		}
		if hashes[e.hash] {
			return nil, fmt.Errorf("line %d: the token of %q appears twice", n, e.name)
		}
		names[e.name], hashes[e.hash] = true, true
		t.entries = append(t.entries, e)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(t.entries) == 0 {
		return nil, errors.New("no tokens")
	}
	return t, nil
}

// LoadTokens reads the token file at path (see ParseTokens).
func LoadTokens(path string) (*Tokens, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("api tokens: %w", err)
	}
	defer f.Close()
	t, err := ParseTokens(f)
	if err != nil {
		return nil, fmt.Errorf("api tokens %s: %w", path, err)
	}
	return t, nil
}

// Len returns the number of tokens.
func (t *Tokens) Len() int {
	if t == nil {
		return 0
	}
	return len(t.entries)
}

// has reports whether a token of the file is named name.
func (t *Tokens) has(name string) bool {
	if t == nil {
		return false
	}
	for _, e := range t.entries {
		if e.name == name {
			return true
		}
	}
	return false
}

// entriesByName returns the entries sorted by name.
func (t *Tokens) entriesByName() []tokenEntry {
	if t == nil {
		return nil
	}
	out := slices.Clone(t.entries)
	slices.SortFunc(out, func(a, b tokenEntry) int { return strings.Compare(a.name, b.name) })
	return out
}

// Lookup returns what token is known as. It compares the token's SHA-256
// with every entry in constant time, so that neither the time it takes nor
// its result reveals how much of a guess was right.
func (t *Tokens) Lookup(token string) (TokenInfo, bool) {
	if t == nil || token == "" {
		return TokenInfo{}, false
	}
	sum := sha256.Sum256([]byte(token))
	found := -1
	for i := range t.entries {
		if subtle.ConstantTimeCompare(sum[:], t.entries[i].hash[:]) == 1 {
			found = i
		}
	}
	if found < 0 {
		return TokenInfo{}, false
	}
	e := t.entries[found]
	return TokenInfo{Name: e.name, Scope: e.scope}, true
}

// Authentication error codes.
const (
	CodeUnauthorized = "unauthorized" // no token, or an unknown one: 401
	CodeForbidden    = "forbidden"    // a known token without the scope: 403
)

// publicPaths answer GET without a token: liveness probes and the API's
// description. Everything else under /api/v1, and /metrics, needs one.
var publicPaths = map[string]bool{
	APIPrefix + "/health":       true,
	APIPrefix + "/openapi.json": true,
}

// streamPath is the only route that also takes its token from the
// AccessTokenParam query parameter.
const streamPath = APIPrefix + "/events/stream"

// requiredScope returns the scope a request needs, or 0 for none. The
// dashboard's static files are public; reads need ScopeRead and every other
// method ScopeAdmin, so a route added later is protected by its method.
func requiredScope(r *http.Request) Scope {
	p := r.URL.Path
	if !apiPath(p) && p != "/metrics" {
		return 0
	}
	if p == tokensPath || strings.HasPrefix(p, tokensPath+"/") {
		return ScopeAdmin // the list names every key to the API
	}
	read := r.Method == http.MethodGet || r.Method == http.MethodHead
	if read && publicPaths[p] {
		return 0
	}
	if read {
		return ScopeRead
	}
	return ScopeAdmin
}

// requestToken returns the bearer token of r: from the Authorization
// header, or, on the event stream only, from the access_token parameter.
func requestToken(r *http.Request) string {
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, tok, ok := strings.Cut(h, " ")
		if ok && strings.EqualFold(scheme, "Bearer") {
			return strings.TrimSpace(tok)
		}
		return ""
	}
	if r.URL.Path == streamPath {
		return r.URL.Query().Get(AccessTokenParam)
	}
	return ""
}

// authenticate refuses a request whose token is missing or unknown (401)
// or lacks the scope its route needs (403). Without Tokens no token is
// known, so only the public paths answer.
func (s *Server) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		need := requiredScope(r)
		if need == 0 {
			next.ServeHTTP(w, r)
			return
		}
		info, st := s.lookupToken(r.Context(), requestToken(r))
		if st != tokenValid {
			msg := "a valid API token is required: Authorization: Bearer TOKEN"
			if st == tokenExpired {
				msg = fmt.Sprintf("API token %q has expired", info.Name)
			}
			w.Header().Set("WWW-Authenticate", `Bearer realm="flota"`)
			writeJSON(w, http.StatusUnauthorized, Error{Code: CodeUnauthorized, Message: msg})
			return
		}
		if info.Scope < need {
			writeJSON(w, http.StatusForbidden, Error{Code: CodeForbidden,
				Message: fmt.Sprintf("token %q has scope %s; %s %s needs %s", info.Name, info.Scope, r.Method, r.URL.Path, need)})
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), tokenInfoKey{}, info)))
	})
}
