package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/flotaio/flota/internal/httpapi"
)

// TokenFile is the token file serve keeps in the data directory when it is
// not given --api-token-file. It holds hashes only.
const TokenFile = "api-tokens"

// loadTokens returns the HTTP API's tokens: those of Config.APITokenFile,
// else those of DataDir/api-tokens. When neither exists it creates the
// latter with one new admin token, keeps only its hash there and sets
// GeneratedToken, which serve prints once. Delete the file and restart to
// rotate that token.
func (m *Main) loadTokens() (*httpapi.Tokens, error) {
	if p := m.Config.APITokenFile; p != "" {
		if st, err := os.Stat(p); err == nil && st.Mode().Perm()&0o077 != 0 {
			m.Logger.Warn("the API token file is readable by other users; chmod 600 it or list hashes (sha256:...)", "file", p, "mode", st.Mode().Perm())
		}
		return httpapi.LoadTokens(p)
	}
	path := filepath.Join(m.Config.DataDir, TokenFile)
	toks, err := httpapi.LoadTokens(path)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return toks, err
	}
	token := httpapi.NewToken()
	file := "# flota API tokens: NAME SCOPE TOKEN, scope read or admin, TOKEN the token or its\n" +
		"# sha256: hash (orchestrator token new). Delete this file and restart serve to get a\n" +
		"# new admin token.\n" +
		"admin admin " + httpapi.HashToken(token) + "\n"
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("api tokens: %w", err)
	}
	_, err = f.WriteString(file)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(path) // a half-written file would lock the operator out
		return nil, fmt.Errorf("api tokens: %w", err)
	}
	m.GeneratedToken = token
	return httpapi.ParseTokens(strings.NewReader(file))
}
