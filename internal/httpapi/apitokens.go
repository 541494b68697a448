package httpapi

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flotaio/flota/internal/fleet"
)

// API tokens made through the API live in the database (fleet.APIToken)
// next to those of the token file (Server.Tokens), and work at once: the
// server keeps a copy of them in memory, which it replaces after each of its
// own changes (only this server changes them). Their routes are admin-only,
// reads included: the list names every key to the API.

// tokensPath is the root of the token routes.
const tokensPath = APIPrefix + "/tokens"

// touchInterval is how stale a database token's last use may be: a use
// records the time when the recorded one is older, so that a busy token
// costs one write a minute, not one a request.
const touchInterval = time.Minute

// maxTokenLifetime bounds expires_at, so that a typo in a duration does not
// make a token that outlives everyone who knows about it.
const maxTokenLifetime = 10 * 365 * 24 * time.Hour

// codeTokenInFile refuses revoking a token of the token file (409): only
// editing the file and restarting removes it.
const codeTokenInFile = "token_in_file"

// Token sources in APITokenInfo.
const (
	TokenSourceDatabase = "database"
	TokenSourceFile     = "file"
)

// CreateTokenRequest is the body of POST /api/v1/tokens.
type CreateTokenRequest struct {
	Name string `json:"name"`
	Role string `json:"role"`
	// ExpiresAt, when set, is when the token stops working.
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
}

// NewAPIToken answers POST /api/v1/tokens: the token, shown this once.
type NewAPIToken struct {
	APITokenInfo
	Token string `json:"token"`
}

// APITokenInfo describes a token without its secret. The token file's have
// no creation time, and their last use is known since the server started.
type APITokenInfo struct {
	Name       string     `json:"name"`
	Role       string     `json:"role"`
	Source     string     `json:"source"`
	CreatedAt  *time.Time `json:"created_at,omitempty"`
	ExpiresAt  *time.Time `json:"expires_at,omitempty"`
	LastUsedAt *time.Time `json:"last_used_at,omitempty"`
}

// APITokenList answers GET /api/v1/tokens.
type APITokenList struct {
	Tokens []APITokenInfo `json:"tokens"`
}

// tokenRefusals counts the token creations refused, by reason.
type tokenRefusals struct {
	invalid, exists, limit atomic.Int64
}

// dbTokens is the in-memory copy of the database's tokens.
type dbTokens struct {
	// change serialises the changes and the reloads that follow them, so
	// that the copy never goes back to an older list.
	change sync.Mutex

	// mu guards byHash, loaded and fileUsed.
	mu     sync.Mutex
	byHash map[[sha256.Size]byte]fleet.APIToken
	loaded bool
	// fileUsed is the last use of each token of the file, by name: one
	// entry per token of the file at most.
	fileUsed map[string]time.Time

	// touches carries last uses to the writer goroutine of Open; full, a
	// use is not recorded (the next one after touchInterval is).
	touches chan fleet.APIToken
	refused tokenRefusals
}

func newDBTokens() *dbTokens {
	return &dbTokens{fileUsed: map[string]time.Time{}, touches: make(chan fleet.APIToken, 16)}
}

// tokenStatus is the outcome of a token lookup.
type tokenStatus int

const (
	tokenUnknown tokenStatus = iota
	tokenValid
	tokenExpired
)

// tokenInfoKey is the context key of the request's TokenInfo.
type tokenInfoKey struct{}

// requester returns the name of the token r was authenticated with, for
// the audit log.
func requester(r *http.Request) string {
	if info, ok := r.Context().Value(tokenInfoKey{}).(TokenInfo); ok {
		return info.Name
	}
	return ""
}

// lookupToken finds token among the token file's and the database's. The
// database's are looked up by their SHA-256, which reveals nothing of a
// token that was guessed in part.
func (s *Server) lookupToken(ctx context.Context, token string) (TokenInfo, tokenStatus) {
	now := time.Now()
	if info, ok := s.Tokens.Lookup(token); ok {
		t := s.apiTokens
		t.mu.Lock()
		t.fileUsed[info.Name] = now
		t.mu.Unlock()
		return info, tokenValid
	}
	if token == "" || s.Store == nil {
		return TokenInfo{}, tokenUnknown
	}
	if err := s.loadAPITokens(ctx, false); err != nil {
		s.logger().Error("api tokens: load", "err", err)
		return TokenInfo{}, tokenUnknown
	}
	sum := sha256.Sum256([]byte(token))
	t := s.apiTokens
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.byHash[sum]
	if !ok {
		return TokenInfo{}, tokenUnknown
	}
	scope, err := ParseScope(e.Role)
	if err != nil {
		return TokenInfo{}, tokenUnknown
	}
	info := TokenInfo{Name: e.Name, Scope: scope}
	if e.Expired(now) {
		return info, tokenExpired
	}
	if e.LastUsedAt == nil || now.Sub(*e.LastUsedAt) >= touchInterval {
		e.LastUsedAt = &now
		t.byHash[sum] = e
		select {
		case t.touches <- e:
		default:
		}
	}
	return info, tokenValid
}

// loadAPITokens reads the database's tokens into memory: once, or again
// when reload is set.
func (s *Server) loadAPITokens(ctx context.Context, reload bool) error {
	t := s.apiTokens
	t.mu.Lock()
	loaded := t.loaded
	t.mu.Unlock()
	if loaded && !reload {
		return nil
	}
	list, err := s.Store.ListAPITokens(ctx)
	if err != nil {
		return err
	}
	m := make(map[[sha256.Size]byte]fleet.APIToken, len(list))
	for _, e := range list {
		b, err := hex.DecodeString(e.Hash)
		if err != nil || len(b) != sha256.Size {
			return fmt.Errorf("api token %s: bad hash in the database", e.Name)
		}
		m[[sha256.Size]byte(b)] = e
	}
	t.mu.Lock()
	t.byHash, t.loaded = m, true
	t.mu.Unlock()
	return nil
}

// recordTokenUses writes the last uses of database tokens until done is
// closed. Open runs it.
func (s *Server) recordTokenUses(done <-chan struct{}) {
	for {
		select {
		case <-done:
			return
		case e := <-s.apiTokens.touches:
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			if err := s.Store.TouchAPIToken(ctx, e, *e.LastUsedAt); err != nil {
				s.logger().Warn("api token: record last use", "token", e.Name, "err", err)
			}
			cancel()
		}
	}
}

func (s *Server) tokenRoutes() []route {
	return []route{
		{"POST", tokensPath, s.createToken},
		{"GET", tokensPath, s.listTokens},
		{"POST", tokensPath + "/{name}/revoke", s.revokeToken},
	}
}

// validTokenName reports whether name may name a token: 1 to
// fleet.MaxAPITokenName letters, digits, '.', '_' or '-', as the token
// file's names (which are split on spaces) must be to be listed alike.
func validTokenName(name string) bool {
	if name == "" || len(name) > fleet.MaxAPITokenName {
		return false
	}
	for _, c := range name {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

func (s *Server) createToken(w http.ResponseWriter, r *http.Request) {
	refused := &s.apiTokens.refused
	var req CreateTokenRequest
	if err := s.decodeStrict(w, r, &req); err != nil {
		refused.invalid.Add(1)
		s.writeError(w, r, err)
		return
	}
	now := time.Now()
	var err error
	switch {
	case !validTokenName(req.Name):
		err = fleet.Errorf(fleet.ErrInvalidInput, "name %.80q: want 1 to %d letters, digits, '.', '_' or '-'", req.Name, fleet.MaxAPITokenName)
	case req.Role != ScopeRead.String() && req.Role != ScopeAdmin.String():
		err = fleet.Errorf(fleet.ErrInvalidInput, "role %.20q: want read or admin", req.Role)
	case req.ExpiresAt != nil && !req.ExpiresAt.After(now):
		err = fleet.Errorf(fleet.ErrInvalidInput, "expires_at %s is not in the future", req.ExpiresAt.UTC().Format(time.RFC3339))
	case req.ExpiresAt != nil && req.ExpiresAt.Sub(now) > maxTokenLifetime:
		err = fleet.Errorf(fleet.ErrInvalidInput, "expires_at %s is more than %d years ahead", req.ExpiresAt.UTC().Format(time.RFC3339), maxTokenLifetime/(365*24*time.Hour))
	}
	if err != nil {
		refused.invalid.Add(1)
		s.writeError(w, r, err)
		return
	}
	if s.Tokens.has(req.Name) {
		refused.exists.Add(1)
		s.writeError(w, r, fleet.Errorf(fleet.ErrTokenExists, "%s is in the token file", req.Name))
		return
	}
	token := NewToken()
	sum := sha256.Sum256([]byte(token))
	e := fleet.APIToken{Name: req.Name, Role: req.Role, Hash: hex.EncodeToString(sum[:]), CreatedAt: now.UTC()}
	if req.ExpiresAt != nil {
		at := req.ExpiresAt.UTC()
		e.ExpiresAt = &at
	}
	t := s.apiTokens
	t.change.Lock()
	defer t.change.Unlock()
	if err := s.Store.AddAPIToken(r.Context(), e); err != nil {
		switch {
		case errors.Is(err, fleet.ErrTokenExists):
			refused.exists.Add(1)
		case errors.Is(err, fleet.ErrTooManyTokens):
			refused.limit.Add(1)
		}
		s.writeError(w, r, err)
		return
	}
	if err := s.loadAPITokens(r.Context(), true); err != nil {
		s.writeError(w, r, err)
		return
	}
	s.logger().Info("api token created", "token", e.Name, "role", e.Role, "expires_at", e.ExpiresAt, "by", requester(r))
	writeJSON(w, http.StatusCreated, NewAPIToken{APITokenInfo: dbTokenInfo(e), Token: token})
}

func dbTokenInfo(e fleet.APIToken) APITokenInfo {
	created := e.CreatedAt
	return APITokenInfo{Name: e.Name, Role: e.Role, Source: TokenSourceDatabase,
		CreatedAt: &created, ExpiresAt: e.ExpiresAt, LastUsedAt: e.LastUsedAt}
}

// listTokens lists the token file's tokens, then the database's, each by
// name; last uses are the newest the server knows of.
func (s *Server) listTokens(w http.ResponseWriter, r *http.Request) {
	if err := s.loadAPITokens(r.Context(), false); err != nil {
		s.writeError(w, r, err)
		return
	}
	list, err := s.Store.ListAPITokens(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	t := s.apiTokens
	out := APITokenList{Tokens: []APITokenInfo{}}
	t.mu.Lock()
	for _, e := range s.Tokens.entriesByName() {
		info := APITokenInfo{Name: e.name, Role: e.scope.String(), Source: TokenSourceFile}
		if at, ok := t.fileUsed[e.name]; ok {
			info.LastUsedAt = &at
		}
		out.Tokens = append(out.Tokens, info)
	}
	for _, e := range list {
		if mem, ok := t.byHash[hashOf(e.Hash)]; ok && mem.LastUsedAt != nil && (e.LastUsedAt == nil || mem.LastUsedAt.After(*e.LastUsedAt)) {
			e.LastUsedAt = mem.LastUsedAt
		}
		out.Tokens = append(out.Tokens, dbTokenInfo(e))
	}
	t.mu.Unlock()
	writeJSON(w, http.StatusOK, out)
}

func hashOf(h string) [sha256.Size]byte {
	var sum [sha256.Size]byte
	_, _ = hex.Decode(sum[:], []byte(h)) // checked by loadAPITokens
	return sum
}

func (s *Server) revokeToken(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	t := s.apiTokens
	t.change.Lock()
	defer t.change.Unlock()
	e, err := s.Store.DeleteAPIToken(r.Context(), name)
	if errors.Is(err, fleet.ErrTokenNotFound) && s.Tokens.has(name) {
		writeJSON(w, http.StatusConflict, Error{Code: codeTokenInFile,
			Message: fmt.Sprintf("token %q is in the token file: delete its line there and restart serve", name)})
		return
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := s.loadAPITokens(r.Context(), true); err != nil {
		s.writeError(w, r, err)
		return
	}
	s.logger().Warn("api token revoked", "token", e.Name, "role", e.Role, "by", requester(r))
	writeJSON(w, http.StatusOK, dbTokenInfo(e))
}

// count returns the number of database tokens last loaded.
func (t *dbTokens) count() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.byHash)
}

// tokenCounts returns the number of tokens of the file and of the database
// (as last loaded), for /metrics.
func (s *Server) tokenCounts() (file, db int) {
	return s.Tokens.Len(), s.apiTokens.count()
}
