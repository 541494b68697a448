// Command orchestrator runs flota's server (serve) — an embedded MQTT broker,
// the rollout engine, the SQLite store and the HTTP API — and its operator
// commands (firmware, update, device), thin clients of that API.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

// version is stamped at build time: -ldflags "-X main.version=v1.2.3".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := newCLI(os.Stdout, os.Stderr, os.Getenv).run(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}
