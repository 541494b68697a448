package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/agent"
	"github.com/flotaio/flota/internal/protocol"
)

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "creds.csv")
	require.NoError(t, os.WriteFile(p, []byte(content), 0o600))
	return p
}

func TestCredentials_EachDeviceGetsItsRow(t *testing.T) {
	f := writeFile(t, "id,secret\nsim-00001,s1-aaaaaaaaaaaaaaaaaaaa\nsim-00002,s2-bbbbbbbbbbbbbbbbbbbb\nother,x\n")
	o, err := parseFlags([]string{"--devices", "2", "--credentials", f})
	require.NoError(t, err)
	sec, err := loadSecurity(o)
	require.NoError(t, err)
	cfg := agent.Config{ID: "sim-00002"}
	require.NoError(t, sec.apply(&cfg))
	assert.Equal(t, "s2-bbbbbbbbbbbbbbbbbbbb", cfg.Password)
	assert.Empty(t, cfg.EnrollToken)
	assert.Nil(t, cfg.TLSConfig, "tcp:// broker")

	o, err = parseFlags([]string{"--devices", "3", "--credentials", f})
	require.NoError(t, err)
	_, err = loadSecurity(o)
	var ue *usageError
	require.ErrorAs(t, err, &ue)
	assert.Contains(t, err.Error(), "no secret for device sim-00003")
}

func TestCredentials_BadFilesAreRefused(t *testing.T) {
	for name, content := range map[string]string{
		"no header":   "sim-00001,secret\n",
		"wrong width": "id,secret\nsim-00001\n",
	} {
		o, err := parseFlags([]string{"--devices", "1", "--credentials", writeFile(t, content)})
		require.NoError(t, err)
		_, err = loadSecurity(o)
		assert.Error(t, err, name)
	}
	o, err := parseFlags([]string{"--credentials", filepath.Join(t.TempDir(), "missing.csv")})
	require.NoError(t, err)
	_, err = loadSecurity(o)
	assert.Error(t, err)
}

func TestCredentials_EnrollTokenDerivesAStableSecret(t *testing.T) {
	o, err := parseFlags([]string{"--devices", "1", "--enroll-token", "fleet-token-0123456789abcdef"})
	require.NoError(t, err)
	sec, err := loadSecurity(o)
	require.NoError(t, err)
	a, b := agent.Config{ID: "sim-00001"}, agent.Config{ID: "sim-00001"}
	require.NoError(t, sec.apply(&a))
	require.NoError(t, sec.apply(&b))
	assert.Equal(t, a.Password, b.Password, "a restarted devicesim presents the same secret")
	assert.Len(t, a.Password, 24)
	assert.Equal(t, "fleet-token-0123456789abcdef", a.EnrollToken)
	secret, token, enrolling := protocol.ParsePassword(protocol.EnrollPassword(a.EnrollToken, a.Password))
	assert.True(t, enrolling)
	assert.Equal(t, a.Password, secret)
	assert.Equal(t, a.EnrollToken, token)
}

func TestCredentials_TLSFlagsNeedAnSSLBroker(t *testing.T) {
	o, err := parseFlags([]string{"--ca-file", "ca.pem"})
	require.NoError(t, err)
	_, err = loadSecurity(o)
	assert.ErrorContains(t, err, "ssl://")

	o, err = parseFlags([]string{"--broker", "ssl://127.0.0.1:8883", "--cert", "c.pem"})
	require.NoError(t, err)
	_, err = loadSecurity(o)
	assert.ErrorContains(t, err, "--cert and --key")

	o, err = parseFlags([]string{"--broker", "ssl://127.0.0.1:8883"})
	require.NoError(t, err)
	sec, err := loadSecurity(o)
	require.NoError(t, err)
	cfg := agent.Config{ID: "sim-00001"}
	require.NoError(t, sec.apply(&cfg))
	assert.NotNil(t, cfg.TLSConfig)
}
