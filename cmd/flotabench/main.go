// Command flotabench measures a fleet update end to end and compares it with
// the raw MQTT ceiling of the same machine, in one run: first flota (an
// orchestrator and a devicesim fleet, each in its own process), then the same
// bytes published straight through the same embedded broker to the same
// number of subscribers (in a second process), with the same concurrency, and
// then a stop-and-wait peer (each device requests chunk n+1 once chunk n
// arrived). It prints one table and, with --json, writes the results to a
// file. With --sweep it measures flota and raw at several max-in-flight
// values and draws an SVG plot.
//
// The hidden subcommand raw-subscribers (with --mode raw or stop-and-wait) is
// the device side of the raw and stop-and-wait runs; flotabench starts it
// itself.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// Exit codes.
const (
	exitOK    = 0
	exitFail  = 1 // the benchmark ran and failed
	exitUsage = 2 // bad command line
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run runs one command line and returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	raiseFileLimit()
	var err error
	if len(args) > 0 && args[0] == subscribersCmd {
		err = runSubscribers(ctx, args[1:], stdout, stderr)
	} else {
		err = runBench(ctx, args, stdout, stderr)
	}
	var ue *usageError
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, flag.ErrHelp):
		return exitOK
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "flotabench: %v\nrun 'flotabench --help' for the flags\n", err)
		return exitUsage
	default:
		fmt.Fprintf(stderr, "flotabench: %v\n", err)
		return exitFail
	}
}

// raiseFileLimit raises RLIMIT_NOFILE to its hard limit: every device is a
// connection, and the processes this one starts inherit the limit.
func raiseFileLimit() {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim) // best effort: the run reports connection errors if it matters
	}
}
