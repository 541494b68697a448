//go:build unix

package broker

import "syscall"

// fdLimit returns the process's soft RLIMIT_NOFILE (which the Go runtime
// raises to the hard limit at start), or 0 if it cannot be read; an
// unlimited one reads as the largest uint64.
func fdLimit() uint64 {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		return 0
	}
	return uint64(r.Cur)
}
