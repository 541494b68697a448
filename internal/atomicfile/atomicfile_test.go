package atomicfile

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestWrite_ReplacesTheFileAndLeavesNoTemporary(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	require.NoError(t, os.WriteFile(p, []byte("old"), 0o644))
	require.NoError(t, Write(p, []byte("new"), 0o600))
	b, err := os.ReadFile(p)
	require.NoError(t, err)
	assert.Equal(t, "new", string(b))
	assert.NoFileExists(t, p+".tmp")

	// A failure leaves the old file and no temporary.
	err = Write(filepath.Join(t.TempDir(), "missing", "f"), []byte("x"), 0o600)
	require.Error(t, err)
}
