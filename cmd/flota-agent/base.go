package main

import (
	"fmt"
	"io"
	"os"
)

// baseDevice is a device that can read the image it runs (--running-image):
// the agent states its SHA-256 and applies deltas to it (agent.BaseImage).
type baseDevice struct {
	*device
	f *os.File // the running image, opened at the first read
}

// RunningImage opens --running-image once; the agent reads it while it
// applies a delta, from its loop goroutine only.
func (d *baseDevice) RunningImage() (io.ReaderAt, int64, error) {
	if d.f == nil {
		f, err := os.Open(d.cfg.runningImage)
		if err != nil {
			return nil, 0, fmt.Errorf("running image: %w", err)
		}
		d.f = f
	}
	// Seek, not Stat: a block device (a partition) has no size in Stat.
	n, err := d.f.Seek(0, io.SeekEnd)
	if err != nil {
		return nil, 0, fmt.Errorf("running image: %w", err)
	}
	return d.f, n, nil
}

func (d *baseDevice) close() {
	if d.f != nil {
		_ = d.f.Close()
	}
}
