package main

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/httpapi"
)

// API tokens of the test servers (writeTestTokens).
const (
	testAdminToken = "flota_cmd-test-admin-0123456789"
	testReadToken  = "flota_cmd-test-read-0123456789"
)

// testTokenFile is a token file with testAdminToken, and testReadToken by
// its hash.
const testTokenFile = "ops admin " + testAdminToken + "\nprometheus read sha256:"

// writeTestTokens writes the test tokens to a file for --api-token-file.
func writeTestTokens(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "tokens")
	require.NoError(t, os.WriteFile(path, []byte(testTokenFile+strings.TrimPrefix(httpapi.HashToken(testReadToken), httpapi.HashPrefix)+"\n"), 0o600))
	return path
}

func testTokens(t *testing.T) *httpapi.Tokens {
	t.Helper()
	toks, err := httpapi.LoadTokens(writeTestTokens(t))
	require.NoError(t, err)
	return toks
}

// adminClient is a client of m's API with the admin token.
func adminClient(m *Main) *Client {
	c := NewClient(m.HTTPURL())
	c.Token = testAdminToken
	return c
}

func TestMain_GeneratesAnAdminTokenOnceAndKeepsOnlyItsHash(t *testing.T) {
	dir := t.TempDir()
	run := func() *Main {
		m := NewMain()
		m.Config.DataDir = dir
		m.Config.MQTTAddr, m.Config.HTTPAddr = "127.0.0.1:0", "127.0.0.1:0"
		m.Logger = slog.New(slog.DiscardHandler)
		require.NoError(t, m.Run(context.Background()))
		t.Cleanup(func() { assert.NoError(t, m.Close()) })
		return m
	}
	m := run()
	token := m.GeneratedToken
	require.True(t, strings.HasPrefix(token, httpapi.TokenPrefix), "first start makes a token: %q", token)

	path := filepath.Join(dir, TokenFile)
	st, err := os.Stat(path)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), st.Mode().Perm())
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.NotContains(t, string(b), token, "the token itself is not stored")
	assert.Contains(t, string(b), httpapi.HashToken(token))

	c := NewClient(m.HTTPURL())
	c.Token = token
	_, err = c.ListDevices(context.Background(), DeviceQuery{})
	require.NoError(t, err, "the generated token works")
	_, err = c.AddFirmware(context.Background(), fleet.Firmware{Version: "1"}, bytes.NewReader([]byte("img")), 3)
	require.NoError(t, err, "and is an admin token")
	require.NoError(t, m.Close())

	again := run()
	assert.Empty(t, again.GeneratedToken, "a later start does not make (or show) another token")
	c.BaseURL = again.HTTPURL()
	_, err = c.ListDevices(context.Background(), DeviceQuery{})
	require.NoError(t, err, "the token still works after a restart")
	require.NoError(t, again.Close())

	// Rotation: delete the file; the next start makes a new token and the
	// old one stops working.
	require.NoError(t, os.Remove(path))
	rotated := run()
	require.NotEmpty(t, rotated.GeneratedToken)
	assert.NotEqual(t, token, rotated.GeneratedToken)
	c.BaseURL = rotated.HTTPURL()
	_, err = c.ListDevices(context.Background(), DeviceQuery{})
	var apiErr *APIError
	require.ErrorAs(t, err, &apiErr)
	assert.Equal(t, 401, apiErr.Status)
	assert.Contains(t, apiErr.Message, "FLOTA_TOKEN", "the CLI says where the token comes from")
}

func TestMain_TokenFileReplacesTheGeneratedToken(t *testing.T) {
	m := newTestMain(t)
	require.NoError(t, m.Run(context.Background()))
	t.Cleanup(func() { assert.NoError(t, m.Close()) })
	assert.Empty(t, m.GeneratedToken)
	_, err := os.Stat(filepath.Join(m.Config.DataDir, TokenFile))
	assert.ErrorIs(t, err, os.ErrNotExist, "with --api-token-file no token is generated")

	read := NewClient(m.HTTPURL())
	read.Token = testReadToken
	_, err = read.ListFirmware(context.Background())
	require.NoError(t, err)
	_, err = read.AddFirmware(context.Background(), fleet.Firmware{Version: "1"}, bytes.NewReader([]byte("img")), 3)
	var apiErr *APIError
	require.ErrorAs(t, err, &apiErr)
	assert.Equal(t, 403, apiErr.Status)
	assert.Equal(t, httpapi.CodeForbidden, apiErr.Code)
	_, err = adminClient(m).AddFirmware(context.Background(), fleet.Firmware{Version: "1"}, bytes.NewReader([]byte("img")), 3)
	require.NoError(t, err)
}

func TestMain_BadTokenFileStopsTheStart(t *testing.T) {
	m := newTestMain(t)
	require.NoError(t, os.WriteFile(m.Config.APITokenFile, []byte("ops root short\n"), 0o600))
	err := m.Run(context.Background())
	require.Error(t, err)
	assert.Contains(t, err.Error(), "line 1")
	m.Config.APITokenFile = filepath.Join(t.TempDir(), "missing")
	m2 := newTestMain(t)
	m2.Config.APITokenFile = m.Config.APITokenFile
	assert.Error(t, m2.Run(context.Background()))
}

func TestCLI_TokenFromFlagOrEnv(t *testing.T) {
	_, server := newAPI(t)
	for name, tc := range map[string]struct {
		env  string
		args []string
		code int
	}{
		"env":             {testReadToken, nil, exitOK},
		"flag":            {"", []string{"--token", testReadToken}, exitOK},
		"flag beats env":  {"flota_wrong-wrong-wrong-wrong", []string{"--token", testAdminToken}, exitOK},
		"none":            {"", nil, exitFail},
		"wrong":           {"flota_wrong-wrong-wrong-wrong", nil, exitFail},
		"read cannot add": {testReadToken, []string{"--", "firmware-add"}, exitFail},
	} {
		t.Run(name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			env := func(k string) string {
				if k == "FLOTA_TOKEN" {
					return tc.env
				}
				return ""
			}
			args := append([]string{"firmware", "list", "--server", server}, tc.args...)
			if len(tc.args) == 2 && tc.args[1] == "firmware-add" {
				img := filepath.Join(t.TempDir(), "fw.bin")
				require.NoError(t, os.WriteFile(img, []byte("image"), 0o644))
				args = []string{"firmware", "add", img, "--version", "1", "--server", server}
			}
			code := newCLI(&out, &errOut, env).run(context.Background(), args)
			assert.Equal(t, tc.code, code, "stderr: %s", errOut.String())
			if tc.code != exitOK {
				assert.Regexp(t, `unauthorized|forbidden`, errOut.String())
			}
		})
	}
}

func TestCLI_TokenNew(t *testing.T) {
	r := runCLI(t, "", "token", "new", "--name", "grafana", "--scope", "read")
	require.Zero(t, r.code, r.stderr)
	token := strings.TrimSpace(r.stdout)
	require.True(t, strings.HasPrefix(token, httpapi.TokenPrefix))
	toks, err := httpapi.ParseTokens(strings.NewReader(r.stderr))
	require.NoError(t, err, "stderr is a token file line: %q", r.stderr)
	assert.NotContains(t, r.stderr, token)
	info, ok := toks.Lookup(token)
	require.True(t, ok)
	assert.Equal(t, httpapi.TokenInfo{Name: "grafana", Scope: httpapi.ScopeRead}, info)

	for _, args := range [][]string{{"token", "new"}, {"token", "new", "--name", "a b"}, {"token", "new", "--name", "x", "--scope", "root"}} {
		assert.Equal(t, exitUsage, runCLI(t, "", args...).code, "%v", args)
	}
}

func TestParseSize64(t *testing.T) {
	for in, want := range map[string]int64{"1024": 1024, "256MiB": 256 << 20, "1GB": 1e9, "20KB": 20000, "16k": 16384, "2GiB": 2 << 30} {
		got, err := parseSize64(in)
		require.NoError(t, err, in)
		assert.Equal(t, want, got, in)
	}
	for _, in := range []string{"", "0", "-1", "1TB", "x", "99999999999999999999GiB"} {
		_, err := parseSize64(in)
		assert.Error(t, err, in)
	}
}

func TestMain_MaxFirmwareSize(t *testing.T) {
	m := newTestMain(t)
	m.Config.MaxFirmwareSize = 1024
	require.NoError(t, m.Run(context.Background()))
	t.Cleanup(func() { assert.NoError(t, m.Close()) })
	c := adminClient(m)
	_, err := c.AddFirmware(context.Background(), fleet.Firmware{Version: "1"}, bytes.NewReader(make([]byte, 1025)), 1025)
	var apiErr *APIError
	require.ErrorAs(t, err, &apiErr)
	assert.Equal(t, 413, apiErr.Status)
	assert.Equal(t, "too_large", apiErr.Code)
	entries, err := os.ReadDir(filepath.Join(m.Config.DataDir, "firmware"))
	require.NoError(t, err)
	assert.Empty(t, entries, "nothing left behind")
	fw, err := c.AddFirmware(context.Background(), fleet.Firmware{Version: "1"}, bytes.NewReader(make([]byte, 1024)), 1024)
	require.NoError(t, err)
	assert.Equal(t, int64(1024), fw.Size)
}

func TestCLI_ServeMaxFirmwareSizeFlag(t *testing.T) {
	r := runCLI(t, "", "serve", "--max-firmware-size", "lots")
	assert.Equal(t, exitUsage, r.code)
	assert.Contains(t, r.stderr, "max-firmware-size")
}
