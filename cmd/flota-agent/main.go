// Command flota-agent is flota's device agent for embedded Linux and
// gateways: it runs the agent package against a real system, storing the
// image in its state directory and handing it to shell commands that
// install it, reboot, check the new version's health, confirm or roll it
// back, so that A/B updaters (RAUC, SWUpdate, a dual rootfs) plug in.
//
//	flota-agent [--config FILE] [flags]   run the agent
//	flota-agent confirm [--config FILE]   confirm the version just booted
//
// docs/AGENT.md describes the configuration, the hooks and a RAUC setup.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/flotaio/flota/agent"
	"github.com/flotaio/flota/internal/atomicfile"
	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
	"github.com/flotaio/flota/mqttclient"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stderr, os.Getenv)
	stop()
	switch {
	case err == nil:
	case errors.Is(err, flag.ErrHelp):
	default:
		fmt.Fprintf(os.Stderr, "flota-agent: %v\n", err)
		os.Exit(1)
	}
}

// usageText heads --help, above the flags.
const usageText = `usage: flota-agent [--config FILE] [flags]   run the agent
       flota-agent confirm [--config FILE]   confirm the version just booted (--require-confirm)

flota-agent downloads firmware offered by a flota orchestrator and hands it
to the install command; docs/AGENT.md describes the hooks and a RAUC setup.
Every flag may also be set as FLOTA_AGENT_<FLAG> or as a key of --config.

example:
  flota-agent --broker ssl://flota.example.com:8883 --id gw-00001 --model gateway-v2 \
    --password-file /etc/flota/device.secret --public-key /etc/flota/firmware.pub \
    --version-file /etc/flota/version --install-command 'rauc install' --reboot-command 'systemctl reboot'

flags:
`

// run runs the command line args; logs go to stderr.
func run(ctx context.Context, args []string, stderr io.Writer, getenv func(string) string) error {
	confirm := len(args) > 0 && args[0] == "confirm"
	if confirm {
		args = args[1:]
	}
	var c config
	fs := flag.NewFlagSet("flota-agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usageText)
		fs.PrintDefaults()
	}
	c.flags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q (the only subcommand is confirm)", fs.Arg(0))
	}
	if err := c.load(fs, getenv); err != nil {
		return err
	}
	if confirm {
		return confirmBoot(c.stateDir, stderr)
	}
	if err := c.check(); err != nil {
		return err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	return serve(ctx, &c, log)
}

// serve runs the agent until ctx ends.
func serve(ctx context.Context, c *config, log *slog.Logger) error {
	if !fleet.ValidDeviceID(c.id) {
		return fmt.Errorf("--id %q is not a valid device ID", c.id)
	}
	if err := os.MkdirAll(c.stateDir, 0o700); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	dev := &device{cfg: c, log: log}
	running, err := dev.version(ctx)
	if err != nil {
		return err
	}
	tags, err := parseTags(c.tags)
	if err != nil {
		return err
	}
	cfg := agent.Config{
		Broker: c.broker, ID: c.id, Model: c.model, Version: running, Tags: tags,
		MaxImageSize: c.maxImageSize, MaxChunk: c.maxChunk, MaxWindow: c.maxWindow,
		StateFile:        filepath.Join(c.stateDir, stateFileName),
		CheckpointBytes:  c.checkpoint,
		Username:         c.username,
		Logger:           log,
		Device:           dev,
		RebootWait:       c.rebootWait,
		SubscribeQoS0:    c.subscribeQoS == 0,
		ResubscribeAfter: c.resubscribe,
	}
	if c.runningImage != "" {
		based := &baseDevice{device: dev}
		defer based.close()
		cfg.Device = based
	}
	if c.passwordFile != "" {
		if cfg.Password, err = readSecret(c.passwordFile); err != nil {
			return fmt.Errorf("--password-file: %w", err)
		}
	}
	if c.publicKey != "" {
		if cfg.PublicKey, err = protocol.ReadPublicKeyFile(c.publicKey); err != nil {
			return fmt.Errorf("--public-key: %w", err)
		}
	} else {
		log.Warn("no --public-key: firmware signatures are not verified")
	}
	if tlsURL(c.broker) {
		if cfg.TLSConfig, err = mqttclient.LoadTLSConfig(c.caFile, c.certFile, c.keyFile); err != nil {
			return err
		}
	} else if c.caFile != "" || c.certFile != "" {
		return errors.New("--ca-file, --cert-file and --key-file need an ssl:// broker URL")
	}
	if (c.healthCmd != "" || c.requireConfirm || c.confirmCmd != "") && c.rollbackCmd == "" {
		log.Warn("no --rollback-command: a new version that fails its checks keeps running and is reported as running")
	}
	a := agent.New(cfg)
	log.Info("starting", "device", c.id, "broker", c.broker, "version", running, "state_dir", c.stateDir)
	if err := a.Start(ctx); err != nil {
		if ctx.Err() == nil {
			log.Warn("not connected yet; retrying", "err", err)
		}
	}
	<-ctx.Done()
	err = a.Close()
	st := a.Stats()
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru) // zero on failure: only logged
	log.Info("stopped", "version", st.Version, "bytes_received", st.BytesReceived, "installs", st.Installs, "max_rss_kib", ru.Maxrss)
	return err
}

// tlsURL reports whether a broker URL asks for TLS.
func tlsURL(u string) bool {
	for _, p := range []string{"ssl://", "tls://", "mqtts://"} {
		if strings.HasPrefix(u, p) {
			return true
		}
	}
	return false
}

// confirmBoot is `flota-agent confirm`: it confirms the version the
// running agent waits a confirmation for (--require-confirm).
func confirmBoot(stateDir string, out io.Writer) error {
	b, err := readBounded(filepath.Join(stateDir, confirmPendingName), maxVersionLen+1)
	if errors.Is(err, os.ErrNotExist) {
		return errors.New("no version waits for a confirmation")
	}
	if err != nil {
		return err
	}
	v := strings.TrimSpace(string(b))
	if err := atomicfile.Write(filepath.Join(stateDir, confirmedName), []byte(v+"\n"), 0o600); err != nil {
		return err
	}
	fmt.Fprintf(out, "confirmed %s\n", v)
	return nil
}
