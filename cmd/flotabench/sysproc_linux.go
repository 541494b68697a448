package main

import "syscall"

// childAttr makes the kernel kill a child if flotabench dies without
// stopping it (SIGKILL, a crash).
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
