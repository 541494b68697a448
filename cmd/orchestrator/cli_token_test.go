package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/httpapi"
)

// The token commands against a running orchestrator: a token made with
// the CLI works at once, is listed without its secret, is refused at once
// once revoked, and survives a restart while it lives.
func TestCLI_TokenNewListRevokeWithoutRestart(t *testing.T) {
	m := newTestMain(t)
	require.NoError(t, m.Run(context.Background()))
	t.Cleanup(func() { assert.NoError(t, m.Close()) })

	r := runCLI(t, m.HTTPURL(), "token", "new", "dashboard", "--role", "read", "--expires", "90d")
	require.Zero(t, r.code, r.stderr)
	token := strings.TrimSpace(r.stdout)
	require.True(t, strings.HasPrefix(token, httpapi.TokenPrefix), "stdout is the token alone: %q", r.stdout)
	assert.Contains(t, r.stderr, "shown only this once")
	assert.Regexp(t, "expires "+tableTimeRe.String(), r.stderr, "the table time convention")
	assert.NotContains(t, r.stderr, token)

	c := NewClient(m.HTTPURL())
	c.Token = token
	_, err := c.ListDevices(context.Background(), DeviceQuery{})
	require.NoError(t, err, "the new token works without a restart")

	r = runCLI(t, m.HTTPURL(), "token", "list")
	require.Zero(t, r.code, r.stderr)
	assert.Regexp(t, `(?m)^NAME\s+ROLE\s+SOURCE\s+CREATED\s+LAST USED\s+EXPIRES`, r.stdout)
	tt := tableTimeRe.String()
	assert.Regexp(t, `(?m)^dashboard\s+read\s+database\s+`+tt+`\s+`+tt+`\s+`+tt+`$`, r.stdout, "used once, expires in 90 days; times as every table prints them")
	assert.Regexp(t, `(?m)^ops\s+admin\s+file\s+-\s`, r.stdout)
	assert.NotContains(t, r.stdout, token)

	r = runCLI(t, m.HTTPURL(), "token", "list", "--json")
	require.Zero(t, r.code, r.stderr)
	var list []httpapi.APITokenInfo
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &list))
	var found bool
	for _, e := range list {
		if e.Name == "dashboard" {
			found = true
			require.NotNil(t, e.ExpiresAt)
			assert.WithinDuration(t, time.Now().Add(90*24*time.Hour), *e.ExpiresAt, time.Hour)
		}
	}
	assert.True(t, found, "%s", r.stdout)

	// A read token does not manage tokens.
	read := runCLIWithToken(t, m.HTTPURL(), token, "token", "list")
	assert.Equal(t, exitFail, read.code)
	assert.Contains(t, read.stderr, "admin")

	r = runCLI(t, m.HTTPURL(), "token", "revoke", "dashboard")
	require.Zero(t, r.code, r.stderr)
	assert.Equal(t, "token dashboard revoked\n", r.stdout)
	_, err = c.ListDevices(context.Background(), DeviceQuery{})
	var apiErr *APIError
	require.ErrorAs(t, err, &apiErr)
	assert.Equal(t, 401, apiErr.Status, "refused at once")

	r = runCLI(t, m.HTTPURL(), "token", "revoke", "dashboard")
	assert.Equal(t, exitFail, r.code)
	assert.Contains(t, r.stderr, "not found")
}

func TestCLI_TokenNewUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"token", "new", "x"},                   // no --role
		{"token", "new", "x", "--role", "root"}, // unknown role
		{"token", "new", "x", "--role", "read", "--expires", "0d"},
		{"token", "new", "x", "--role", "read", "--expires", "soon"},
		{"token", "new", "x", "--role", "read", "--expires", "-1h"},
		{"token", "new", "x", "--name", "y"},         // both forms
		{"token", "new", "x", "y", "--role", "read"}, // two names
		{"token", "revoke"},
		{"token", "list", "extra"},
	} {
		r := runCLI(t, "http://127.0.0.1:1", args...)
		assert.Equal(t, exitUsage, r.code, "%v: %s", args, r.stderr)
	}
}

func TestParseLifetime(t *testing.T) {
	for in, want := range map[string]time.Duration{"90d": 90 * 24 * time.Hour, "720h": 720 * time.Hour, "30m": 30 * time.Minute} {
		got, err := parseLifetime(in)
		require.NoError(t, err, in)
		assert.Equal(t, want, got, in)
	}
	for _, bad := range []string{"", "d", "0d", "-3d", "1.5d", "0s", "-1h", "forever", "99999d"} {
		_, err := parseLifetime(bad)
		assert.Error(t, err, bad)
	}
}

// runCLIWithToken is runCLI with token given by --token.
func runCLIWithToken(t *testing.T, server, token string, args ...string) result {
	t.Helper()
	return runCLI(t, server, append(args, "--token", token)...)
}
