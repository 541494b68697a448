//go:build !linux

package main

import "syscall"

// childAttr is empty where the kernel cannot kill orphaned children; the
// benchmark also needs Linux's /proc to sample memory.
func childAttr() *syscall.SysProcAttr { return nil }
