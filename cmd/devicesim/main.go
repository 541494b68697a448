// Command devicesim simulates a fleet of flota devices in one process: many
// agents (package agent), each with its own MQTT connection, with injected
// faults (lost chunks, failed installs, disconnects mid-transfer), for load
// and end-to-end tests of the orchestrator. It prints a summary when it
// exits, and writes it as JSON with --summary.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout)
	stop()
	var ue *usageError
	switch {
	case err == nil:
	case errors.Is(err, flag.ErrHelp):
		fmt.Fprint(os.Stdout, usage())
	case errors.As(err, &ue):
		fmt.Fprintf(os.Stderr, "devicesim: %v\n\n%s", err, usage())
		os.Exit(2)
	default:
		fmt.Fprintf(os.Stderr, "devicesim: %v\n", err)
		os.Exit(1)
	}
}
