// Command orchestrator runs flota's server (serve) — an embedded MQTT broker,
// the rollout engine, the SQLite store and the HTTP API — and its operator
// commands (firmware, update, device), thin clients of that API.
package main

import (
	"context"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
)

// version is stamped at build time: -ldflags "-X main.version=v1.2.3".
var version = "dev"

// gcPercent is the garbage collector's target unless GOGC is set. The broker
// copies every message for each subscriber, so the heap churns at the rate of
// the data path; a target above Go's 100 trades some memory for much less GC
// CPU (docs/BENCHMARKS.md).
const gcPercent = 300

func main() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := newCLI(os.Stdout, os.Stderr, os.Getenv).run(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}
