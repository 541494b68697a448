package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/protocol"
)

func TestParseFlags_PublicKey(t *testing.T) {
	dir := t.TempDir()
	privPEM, err := os.ReadFile(filepath.Join("..", "..", "testdata", "protocol", "signature", "test.key"))
	require.NoError(t, err)
	pubFile := filepath.Join("..", "..", "testdata", "protocol", "signature", "test.pub")

	o, err := parseFlags([]string{"--public-key", pubFile})
	require.NoError(t, err)
	want, err := protocol.ReadPublicKeyFile(pubFile)
	require.NoError(t, err)
	assert.Equal(t, want, o.publicKey)

	privFile := filepath.Join(dir, "firmware.key")
	require.NoError(t, os.WriteFile(privFile, privPEM, 0o600))
	for name, path := range map[string]string{
		"missing file":  filepath.Join(dir, "nope.pub"),
		"a private key": privFile,
		"not a PEM file at all": func() string {
			p := filepath.Join(dir, "junk")
			require.NoError(t, os.WriteFile(p, []byte("junk"), 0o644))
			return p
		}(),
	} {
		t.Run(name, func(t *testing.T) {
			_, err := parseFlags([]string{"--public-key", path})
			var ue *usageError
			require.ErrorAs(t, err, &ue)
			assert.Contains(t, err.Error(), "--public-key")
		})
	}
}
