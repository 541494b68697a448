// Package atomicfile replaces a file so that a crash leaves either its old
// or its new content, never a mix: the agent's state file and flota-agent's
// confirmation files.
package atomicfile

import (
	"fmt"
	"os"
)

// Write replaces path with data: it writes a temporary file next to it with
// mode perm, syncs it and renames it over path. The directory is not synced:
// after a power loss the rename may be undone, which leaves the previous
// complete file.
func Write(path string, data []byte, perm os.FileMode) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
