package main

import (
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/agent"
)

func TestBaseDevice_ReadsTheRunningImageFileAtRandom(t *testing.T) {
	file := filepath.Join(t.TempDir(), "running.img")
	require.NoError(t, os.WriteFile(file, []byte("the running image"), 0o600))
	d := &baseDevice{device: testDevice(t, &config{runningImage: file})}
	defer d.close()
	var _ agent.BaseImage = d // deltas are applied to it

	r, n, err := d.RunningImage()
	require.NoError(t, err)
	assert.Equal(t, int64(len("the running image")), n)
	b := make([]byte, 7)
	_, err = r.ReadAt(b, 4)
	require.NoError(t, err)
	assert.Equal(t, "running", string(b))
	_, err = r.ReadAt(b, n-3)
	assert.ErrorIs(t, err, io.EOF)

	missing := &baseDevice{device: testDevice(t, &config{runningImage: filepath.Join(t.TempDir(), "none")})}
	_, _, err = missing.RunningImage()
	assert.ErrorContains(t, err, "running image")
}
