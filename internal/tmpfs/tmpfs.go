// Package tmpfs gives tests real file systems to break: a tmpfs of a fixed
// size that a test mounts, fills, empties or makes read-only, through
// mount(8). It needs root (CI runs tests as root); without it the test is
// skipped with a message that says so, except on CI (CI=true), where it
// fails.
package tmpfs

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
)

// Mount mounts a tmpfs of size bytes on a new directory and returns it; the
// test's cleanup unmounts it.
func Mount(t testing.TB, size int) string {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root to mount a tmpfs, and CI must run every test")
		}
		t.Skip("needs root to mount a tmpfs (CI runs tests as root)")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d", size), "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", "-l", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

// Remount makes the file system mounted on dir read-only, or writable
// again. Root ignores permission bits, not a read-only mount.
func Remount(t testing.TB, dir string, readOnly bool) {
	t.Helper()
	opt := "remount,rw"
	if readOnly {
		opt = "remount,ro"
	}
	if out, err := exec.Command("mount", "-o", opt, dir).CombinedOutput(); err != nil {
		t.Fatalf("mount -o %s %s: %v: %s", opt, dir, err, out)
	}
}

// Fill writes a file in dir until its file system is full, and returns the
// file's path: removing it frees the space.
func Fill(t testing.TB, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		t.Fatalf("fill: %v", err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("fill: %v", err)
			}
			return path
		}
	}
}
