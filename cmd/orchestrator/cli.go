package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/httpapi"
	"github.com/flotaio/flota/internal/logsafe"
	"github.com/flotaio/flota/internal/rollout"
	"github.com/flotaio/flota/mqttclient"
)

// Exit codes.
const (
	exitOK    = 0
	exitFail  = 1 // the command ran and failed, or an update did not complete
	exitUsage = 2 // bad command line
	// exitFenced: serve stopped because a newer orchestrator claimed the
	// external broker; a service manager must not restart it
	// (RestartPreventExitStatus=3, docs/DEPLOY.md).
	exitFenced = 3
)

// cli runs one command line. Its output goes to stdout (results) and stderr
// (errors, usage, the server's listening addresses).
type cli struct {
	stdout, stderr io.Writer
	getenv         func(string) string
	// tty reports whether stdout is a terminal: update watch then redraws
	// one line instead of printing a line per change.
	tty bool
	// jsonLines makes update watch print summaries as JSON lines.
	jsonLines bool
	// token is the value of --token (cli_token.go).
	token string
	// events narrows the events update events prints (cli_manage.go).
	events eventMatch
}

func newCLI(stdout, stderr io.Writer, getenv func(string) string) *cli {
	return &cli{stdout: stdout, stderr: stderr, getenv: getenv, tty: isTerminal(stdout)}
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// usageError is a bad command line: exit code 2.
type usageError struct {
	msg  string
	spec *spec           // the command whose usage to point at, if any
	list func(io.Writer) // else, the commands to list, if any
}

func (e *usageError) Error() string { return e.msg }

// invalidInput is the message of a fleet.ErrInvalidInput error without its
// prefix, for a usage error that names the flag itself.
func invalidInput(err error) string {
	return strings.TrimPrefix(err.Error(), fleet.ErrInvalidInput.Error()+": ")
}

// exitError ends a command with a code and nothing more to print.
type exitError struct{ code int }

func (e *exitError) Error() string { return "exit " + strconv.Itoa(e.code) }

// spec describes one command for its usage text.
type spec struct {
	name    string // "update create"
	args    string // "--firmware ID [--select ...]"
	summary string
	example string
}

// commands lists every command in the order of the overview.
var commands = []*spec{
	{name: "serve", args: "[--config FILE] [--print-config] [--data DIR] [--mqtt HOST:PORT] [--http HOST:PORT] [--api-token-file FILE] [--max-firmware-size BYTES] [--log-level LEVEL] [--window N] [--mqtt-tls HOST:PORT --tls-cert F --tls-key F [--tls-client-ca F]] [--enroll-token-file F [--auto-approve]] [--mqtt-rate-limit N] [--mqtt-connect-rate N] [--mqtt-connect-ban D] [--mqtt-connect-timeout D] [--mqtt-max-connections N] [--mqtt-max-unauthenticated N] [--mqtt-max-unauthenticated-per-ip N] [--mqtt-max-connect-size BYTES] [--allow-anonymous] [--memory-limit SIZE] [--debug-addr HOST:PORT] [--event-retention D] [--event-max-rows N] [--new-database] [--skip-integrity-check] [--illegal-event-interval D] [--log-client-lines N] [--log-clients-total N] [--log-client-interval D] [--firmware-public-key F] [--fetch-allow LIST] [--fetch-credentials-file F] [--fetch-connect-timeout D] [--fetch-read-timeout D] [--fetch-attempts N] [--fetch-backoff D] [--max-fetches N] [--broker URL [--broker-username U] [--broker-password P] [--broker-ca F] [--broker-cert F --broker-key F] [--broker-client-id ID]]",
		summary: "run the orchestrator: MQTT broker, rollout engine, store and HTTP API",
		example: "orchestrator serve --data ./flota-data --mqtt 0.0.0.0:1883 --http 127.0.0.1:8080"},
	{name: "keys generate", args: "[--out DIR]",
		summary: "create an ed25519 firmware signing key pair (firmware.key, firmware.pub)",
		example: "orchestrator keys generate --out /media/offline-usb/flota-keys"},
	{name: "firmware add", args: "FILE --version V [--name N] [--model M] [--sign-key F] [--allow-downgrade] | --url URL --version V [--name N] [--model M] [--sha256 HEX] [--signature SIG [--allow-downgrade]] [--no-wait]",
		summary: "upload a firmware image (signed with --sign-key), or have the server fetch it from --url, and print its ID; the same file and version again print the stored one's",
		example: "orchestrator firmware add build/sensor-2.1.0.bin --version 2.1.0 --model sensor-v2 --sign-key firmware.key"},
	{name: "firmware list", args: "[--json]", summary: "list stored firmware",
		example: "orchestrator firmware list --json"},
	{name: "firmware delete", args: "ID", summary: "delete a firmware no update uses, and its image file",
		example: "orchestrator firmware delete fw-1a2b3c4d5e6f"},
	{name: "update create", args: "--firmware ID|FETCH-ID [--select model=M,version=V,tag:K=V,device=ID] [--max-in-flight N] [--window W] [--chunk-size B] [--max-attempts N] [--rate N] [--phases LIST] [--success-threshold F] [--soak D] [--manual-gates] [--failure-threshold T] [--failure-min N] [--idle-timeout D] [--confirm-timeout D] [--offline-after D] [--retry-backoff D] [--start-at TIME] [--maintenance HH:MM-HH:MM] [--timezone TZ] [--allow-downgrade] [--force] [--dynamic] [--online] [--no-delta] [--no-compress]",
		summary: "start an update and print its ID",
		example: "orchestrator update create --firmware fw-1a2b3c4d5e6f --select 'model=sensor-v2,version=<1.2.0,tag:site=lyon' --phases 1%,10%,100% --soak 30m --failure-threshold 5% --failure-min 20 --maintenance 22:00-04:00 --timezone Europe/Paris"},
	{name: "update status", args: "ID [--json]", summary: "show an update's state, counts, bytes, rate and ETA",
		example: "orchestrator update status u-1a2b3c4d5e6f"},
	{name: "update watch", args: "ID [--interval 500ms] [--reconnect-for 2m] [--json]",
		summary: "follow an update with a progress bar, rate and ETA until it ends, across orchestrator restarts; exit 0 if it completed, 1 otherwise",
		example: "orchestrator update watch u-1a2b3c4d5e6f --interval 1s"},
	{name: "update list", args: "[--state S] [--json]", summary: "list updates",
		example: "orchestrator update list --state running"},
	{name: "update devices", args: "ID [--state S] [--json]", summary: "list an update's devices and their progress",
		example: "orchestrator update devices u-1a2b3c4d5e6f --state failed"},
	{name: "update events", args: "ID [--device ID] [--type T] [--after SEQ] [--follow] [--interval 500ms] [--reconnect-for 2m] [--json]",
		summary: "print an update's event log; with --follow, until the update ends, across orchestrator restarts (exit 0 if it completed, 1 otherwise)",
		example: "orchestrator update events u-1a2b3c4d5e6f --follow --json"},
	{name: "update pause", args: "ID", summary: "stop admitting devices; transfers in flight finish",
		example: "orchestrator update pause u-1a2b3c4d5e6f"},
	{name: "update resume", args: "ID", summary: "admit devices to a paused update again",
		example: "orchestrator update resume u-1a2b3c4d5e6f"},
	{name: "update cancel", args: "ID", summary: "cancel an update",
		example: "orchestrator update cancel u-1a2b3c4d5e6f"},
	{name: "update retry-failed", args: "ID", summary: "queue the failed devices again with fresh attempts (an ended update runs again)",
		example: "orchestrator update retry-failed u-1a2b3c4d5e6f"},
	{name: "device list", args: "[--online] [--model M] [--version V] [--tag K=V]... [--json]", summary: "list registered devices",
		example: "orchestrator device list --online --model sensor-v2 --tag site=lyon"},
	{name: "device delete", args: "ID", summary: "delete a device and its MQTT account (not while an active update may still change it); its update history stays",
		example: "orchestrator device delete sensor-0042"},
	{name: "device summary", args: "[--json]", summary: "count devices online and offline, per model and version",
		example: "orchestrator device summary"},
	{name: "token new", args: "NAME --role read|admin [--expires DURATION] [--json]  |  --name NAME [--scope read|admin]",
		summary: "make an API token the server keeps (its hash), working at once, and print it, shown this once; with --name instead, offline: print a token and its line for serve's token file",
		example: "orchestrator token new grafana --role read --expires 90d >grafana.token    # offline: orchestrator token new --name ci --scope admin 2>>tokens.txt"},
	{name: "token list", args: "[--json]", summary: "list the API tokens (name, role, where kept, created, last used, expires), never their secrets; admin only",
		example: "orchestrator token list"},
	{name: "token revoke", args: "NAME", summary: "revoke an API token the server keeps, at once; its name may be used again",
		example: "orchestrator token revoke grafana"},
	{name: "completion", args: "bash|zsh", summary: "print a shell completion script",
		example: "source <(orchestrator completion bash)    # or: orchestrator completion zsh > \"${fpath[1]}/_orchestrator\""},
	{name: "version", args: "[--json]", summary: "print the version", example: "orchestrator version"},
}

func init() {
	// The account commands follow device summary in the overview.
	i := slices.IndexFunc(commands, func(s *spec) bool { return s.name == "device summary" })
	commands = slices.Insert(commands, i+1, append([]*spec{deviceShowSpec}, accountCommands...)...)
}

func findSpec(name string) *spec {
	for _, s := range commands {
		if s.name == name {
			return s
		}
	}
	panic("no spec for " + name)
}

// run runs args (without the program name) and returns the exit code.
func (c *cli) run(ctx context.Context, args []string) int {
	err := c.dispatch(ctx, args)
	var (
		usage   *usageError
		apiErr  *APIError
		exitErr *exitError
	)
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, flag.ErrHelp):
		return exitOK
	case errors.As(err, &exitErr):
		return exitErr.code
	case errors.Is(err, mqttclient.ErrFenced):
		fmt.Fprintf(c.stderr, "error: %v\n", err)
		return exitFenced
	case errors.As(err, &usage):
		fmt.Fprintf(c.stderr, "error: %s\n", usage.msg)
		switch {
		case usage.spec != nil:
			fmt.Fprintf(c.stderr, "usage: orchestrator %s %s\nrun 'orchestrator %s --help' for details\n", usage.spec.name, usage.spec.args, usage.spec.name)
		case usage.list != nil:
			usage.list(c.stderr)
		default:
			fmt.Fprintln(c.stderr, "run 'orchestrator help' for the list of commands")
		}
		return exitUsage
	case errors.As(err, &apiErr):
		fmt.Fprintf(c.stderr, "error: %s (%s)\n", termSafe(apiErr.Message), termSafe(apiErr.Code))
		return exitFail
	default:
		fmt.Fprintf(c.stderr, "error: %v\n", err)
		return exitFail
	}
}

func (c *cli) dispatch(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return &usageError{msg: "no command given", list: c.overview}
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "help", "-h", "-help", "--help":
		c.overview(c.stdout)
		return nil
	case "version", "-version", "--version":
		return c.version(rest)
	case "serve":
		return c.serve(ctx, rest)
	case "completion":
		return c.completion(rest)
	case completeIDsCommand:
		return c.completeIDs(ctx, rest)
	case "backup":
		return c.backup(ctx, rest)
	case "firmware", "update", "device", "keys", "monitor", "token":
		if len(rest) == 0 || strings.HasPrefix(rest[0], "-") {
			if len(rest) > 0 && isHelpFlag(rest[0]) {
				c.group(cmd)(c.stdout)
				return nil
			}
			return &usageError{msg: fmt.Sprintf("%s: missing subcommand", cmd), list: c.group(cmd)}
		}
		sub := cmd + " " + rest[0]
		rest = rest[1:]
		switch sub {
		case "firmware add":
			return c.firmwareAdd(ctx, rest)
		case "firmware list":
			return c.firmwareList(ctx, rest)
		case "firmware delete":
			return c.deleteCommand(ctx, sub, "/api/v1/firmware/", rest)
		case "device delete":
			return c.deleteCommand(ctx, sub, "/api/v1/devices/", rest)
		case "keys generate":
			return c.keysGenerate(rest)
		case "update create":
			return c.updateCreate(ctx, rest)
		case "update status":
			return c.updateStatus(ctx, rest)
		case "update watch":
			return c.updateWatch(ctx, rest)
		case "update list":
			return c.updateList(ctx, rest)
		case "update devices":
			return c.updateDevices(ctx, rest)
		case "update events":
			return c.updateEvents(ctx, rest)
		case "update pause", "update resume", "update cancel":
			return c.updateControl(ctx, sub, rest)
		case "update retry-failed":
			return c.updateRetryFailed(ctx, rest)
		case "device list":
			return c.deviceList(ctx, rest)
		case "device summary":
			return c.deviceSummary(ctx, rest)
		case "device show":
			return c.deviceShow(ctx, rest)
		case "token new":
			return c.tokenNew(ctx, rest)
		case "token list":
			return c.tokenList(ctx, rest)
		case "token revoke":
			return c.tokenRevoke(ctx, rest)
		}
		if ok, err := c.accountCommand(ctx, sub, rest); ok {
			return err
		}
		return &usageError{msg: fmt.Sprintf("unknown command %q", sub), list: c.group(cmd)}
	}
	return &usageError{msg: fmt.Sprintf("unknown command %q", cmd), list: c.overview}
}

func isHelpFlag(s string) bool {
	return s == "-h" || s == "-help" || s == "--help"
}

func (c *cli) overview(w io.Writer) {
	fmt.Fprintln(w, "orchestrator updates the firmware of IoT fleets over MQTT.")
	fmt.Fprintln(w, "\nusage: orchestrator COMMAND [ARGS] [FLAGS]\n\ncommands:")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, s := range commands {
		fmt.Fprintf(tw, "  %s\t%s\n", s.name, s.summary)
	}
	_ = tw.Flush() // a write error to stderr or stdout cannot be reported anywhere
	fmt.Fprintln(w, "\nOperator commands talk to --server (default $FLOTA_SERVER or "+DefaultServer+")")
	fmt.Fprintln(w, "with the API token of --token (default $FLOTA_TOKEN); changes need an admin token.")
	fmt.Fprintln(w, "Run 'orchestrator COMMAND --help' for a command's flags and an example.")
}

// group returns a function that lists the subcommands of name.
func (c *cli) group(name string) func(io.Writer) {
	return func(w io.Writer) {
		fmt.Fprintf(w, "usage: orchestrator %s SUBCOMMAND [ARGS] [FLAGS]\n\nsubcommands:\n", name)
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		for _, s := range commands {
			if strings.HasPrefix(s.name, name+" ") {
				fmt.Fprintf(tw, "  %s\t%s\n", s.name, s.summary)
			}
		}
		_ = tw.Flush() // see overview
		fmt.Fprintf(w, "\nRun 'orchestrator %s SUBCOMMAND --help' for its flags and an example.\n", name)
	}
}

// newFlags returns the flag set of the named command. Parse errors are
// reported by parse, not by the flag package.
func (c *cli) newFlags(name string) (*flag.FlagSet, *spec) {
	sp := findSpec(name)
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return fs, sp
}

// serverFlag adds --server, and --token (tokenFlag), to an operator command.
func (c *cli) serverFlag(fs *flag.FlagSet) *string {
	c.tokenFlag(fs)
	def := c.getenv("FLOTA_SERVER")
	if def == "" {
		def = DefaultServer
	}
	return fs.String("server", def, "orchestrator API base URL (env FLOTA_SERVER)")
}

// parse parses args, in which flags may come before, between or after the
// positional arguments ("--" ends the flags), and checks that there are
// exactly len(positional) positional arguments, named for the error message.
func (c *cli) parse(fs *flag.FlagSet, sp *spec, args []string, positional ...string) ([]string, error) {
	pos, err := parseInterleaved(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		c.usage(c.stdout, fs, sp)
		return nil, err
	}
	if err != nil {
		return nil, &usageError{msg: err.Error(), spec: sp}
	}
	if len(pos) < len(positional) {
		return nil, &usageError{msg: fmt.Sprintf("missing %s", positional[len(pos)]), spec: sp}
	}
	if len(pos) > len(positional) {
		return nil, &usageError{msg: fmt.Sprintf("unexpected argument %q", pos[len(positional)]), spec: sp}
	}
	return pos, nil
}

// parseInterleaved parses flags anywhere in args and returns the positional
// arguments in order.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			return append(pos, rest...), nil
		}
		if len(rest) == 0 {
			return pos, nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

func (c *cli) usage(w io.Writer, fs *flag.FlagSet, sp *spec) {
	fmt.Fprintf(w, "usage: orchestrator %s %s\n\n%s.\n\nexample:\n  %s\n", sp.name, sp.args, sp.summary, sp.example)
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	if n > 0 {
		fmt.Fprintln(w, "\nflags:")
		fs.SetOutput(w)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
	}
}

func required(sp *spec, name, value string) error {
	if value == "" {
		return &usageError{msg: fmt.Sprintf("--%s is required", name), spec: sp}
	}
	return nil
}

// printJSONLine prints v as one line of JSON.
func (c *cli) printJSONLine(v any) error { return writeJSON(c.stdout, v, "") }

func (c *cli) printJSON(v any) error { return writeJSON(c.stdout, v, "  ") }

func (c *cli) version(args []string) error {
	fs, sp := c.newFlags("version")
	asJSON := fs.Bool("json", false, "print JSON")
	if _, err := c.parse(fs, sp, args); err != nil {
		return err
	}
	if *asJSON {
		return c.printJSON(map[string]string{"version": version})
	}
	fmt.Fprintf(c.stdout, "orchestrator %s\n", version)
	return nil
}

func (c *cli) serve(ctx context.Context, args []string) error {
	fs, sp := c.newFlags("serve")
	m := NewMain()
	fs.StringVar(&m.Config.DataDir, "data", m.Config.DataDir, "data directory: SQLite database and firmware images")
	fs.StringVar(&m.Config.MQTTAddr, "mqtt", m.Config.MQTTAddr, "MQTT listen address (port 0 picks a free port)")
	fs.StringVar(&m.Config.HTTPAddr, "http", m.Config.HTTPAddr, "HTTP API listen address (port 0 picks a free port)")
	fs.StringVar(&m.Config.LogLevel, "log-level", m.Config.LogLevel, "log level: debug, info, warn or error")
	fs.StringVar(&m.Config.APITokenFile, "api-token-file", "", "HTTP API tokens, lines of NAME SCOPE TOKEN (default: DATA/api-tokens, created with a new admin token printed once)")
	maxFW := sizeFlag64(httpapi.DefaultMaxFirmwareSize)
	fs.Var(&maxFW, "max-firmware-size", "largest firmware upload in `bytes`, suffixes KB/KiB/MB/MiB/GB/GiB")
	fs.IntVar(&m.Config.Window, "window", m.Config.Window, "largest chunk window of any update; sizes the broker's per-client queues (0: default)")
	fs.StringVar(&m.Config.Broker, "broker", "", "external MQTT broker, tcp://HOST:PORT or ssl://HOST:PORT, or the nodes of a cluster, comma-separated (tried in order at each connection), instead of the embedded one (--mqtt and --window unused)")
	fs.StringVar(&m.Config.BrokerUsername, "broker-username", "", "user name at the external broker")
	fs.StringVar(&m.Config.BrokerPassword, "broker-password", "", "password at the external broker (better in $FLOTA_BROKER_PASSWORD or the --config file than on the command line)")
	fs.StringVar(&m.Config.BrokerCA, "broker-ca", "", "PEM file of the CAs that sign the external broker's certificate (default: system roots)")
	fs.StringVar(&m.Config.BrokerCert, "broker-cert", "", "PEM client certificate for the external broker")
	fs.StringVar(&m.Config.BrokerKey, "broker-key", "", "PEM key of --broker-cert")
	fs.StringVar(&m.Config.BrokerClientID, "broker-client-id", mqttclient.DefaultClientID, "MQTT client ID at the external broker: unique, and no device's ID")
	fs.StringVar(&m.Config.FirmwarePublicKey, "firmware-public-key", "", "PEM ed25519 public key: refuse firmware uploads not signed with its private key")
	securityFlags(fs, &m.Config)
	topicLimitFlags(fs, &m.Config)
	connLimitFlags(fs, &m.Config.Conns)
	memLimit := fs.String("memory-limit", "", "soft memory limit of the Go runtime, e.g. 400MiB, or off; raised while live data needs more (default: $GOMEMLIMIT as is, else 320MiB)")
	fs.StringVar(&m.Config.DebugAddr, "debug-addr", "", "serve Go runtime profiles (/debug/pprof/) on this private address, e.g. 127.0.0.1:6060")
	fs.DurationVar(&m.Config.EventRetention, "event-retention", m.Config.EventRetention, "delete events older than this from the event log (0: keep)")
	fs.Int64Var(&m.Config.EventMaxRows, "event-max-rows", m.Config.EventMaxRows, "keep at most this many of the newest events in the event log (0: no limit)")
	fs.DurationVar(&m.Config.IllegalEventInterval, "illegal-event-interval", m.Config.IllegalEventInterval, "record a device's refused state changes as an event at most once per interval; the rest are counted (0: every one)")
	fs.IntVar(&m.Config.LogLimit.Lines, "log-client-lines", logsafe.DefaultLines, "log lines (info and above) one MQTT client may cause per --log-client-interval; the rest are counted and summarised (-1: no limit)")
	fs.DurationVar(&m.Config.LogLimit.Interval, "log-client-interval", logsafe.DefaultInterval, "window of --log-client-lines and --log-clients-total")
	fs.IntVar(&m.Config.LogLimit.Total, "log-clients-total", logsafe.DefaultTotal, "log lines (info and above) all MQTT clients together may cause per --log-client-interval")
	fs.BoolVar(&m.Config.NewDatabase, "new-database", false, "start an empty database although the data directory holds an earlier run's state but no database (everything it held is forgotten)")
	fs.BoolVar(&m.Config.SkipIntegrityCheck, "skip-integrity-check", false, "skip the quick check of the database at start (for very large databases)")
	standbyFlags(fs, &m.Config)
	fetchFlags(fs, &m.Config.Fetch)
	cfg := addConfigFlags(fs)
	if _, err := c.parse(fs, sp, args); err != nil {
		return err
	}
	if cfg.print {
		return writeConfig(c.stdout, fs)
	}
	if err := applyConfig(fs, c.getenv, cfg); err != nil {
		return &usageError{msg: err.Error(), spec: sp}
	}
	if err := m.Config.checkSecurity(); err != nil {
		return &usageError{msg: err.Error(), spec: sp}
	}
	if err := m.Config.checkTopicLimits(); err != nil {
		return &usageError{msg: err.Error(), spec: sp}
	}
	limit, err := parseMemoryLimit(*memLimit)
	if err != nil {
		return &usageError{msg: err.Error(), spec: sp}
	}
	if m.Config.EventRetention < 0 || m.Config.EventMaxRows < 0 {
		return &usageError{msg: "--event-retention and --event-max-rows must not be negative", spec: sp}
	}
	if m.Config.IllegalEventInterval < 0 || m.Config.LogLimit.Interval <= 0 || m.Config.LogLimit.Lines == 0 || m.Config.LogLimit.Lines < -1 || m.Config.LogLimit.Total <= 0 {
		return &usageError{msg: "--illegal-event-interval must not be negative, --log-client-interval and --log-clients-total must be positive, --log-client-lines positive or -1", spec: sp}
	}
	if _, err := parseLogLevel(m.Config.LogLevel); err != nil {
		return &usageError{msg: err.Error(), spec: sp}
	}
	m.Config.MaxFirmwareSize = int64(maxFW)
	m.Config.Fetch.EnvCredentials = c.getenv(fetchCredentialsEnv)
	if m.Config.Window < 0 || m.Config.Window > fleet.MaxWindow {
		return &usageError{msg: fmt.Sprintf("--window must be 0..%d", fleet.MaxWindow), spec: sp}
	}
	if m.Config.Broker == "" && (m.Config.BrokerUsername != "" || m.Config.BrokerCA != "" || m.Config.BrokerCert != "" || m.Config.BrokerKey != "") {
		return &usageError{msg: "--broker-* flags need --broker", spec: sp}
	}
	limit = setGCDefaults(c.getenv, limit)
	if limit != math.MaxInt64 && (*memLimit != "" || c.getenv("GOMEMLIMIT") == "") {
		gov := startMemoryGovernor(limit)
		defer gov.Close()
	}
	if err := m.Run(ctx); err != nil {
		return err
	}
	m.Logger.Info("go runtime", "memory_limit", limit)
	if m.GeneratedToken != "" {
		fmt.Fprintf(c.stderr, "api admin token (shown once; only its hash is kept in %s): %s\n",
			filepath.Join(m.Config.DataDir, TokenFile), m.GeneratedToken)
	}
	if m.Config.Broker != "" {
		fmt.Fprintf(c.stderr, "mqtt broker %s\n", m.Client.Stats().Broker)
	} else {
		fmt.Fprintf(c.stderr, "mqtt listening on tcp://%s\n", m.MQTTAddr())
		if a := m.MQTTTLSAddr(); a != "" {
			fmt.Fprintf(c.stderr, "mqtt listening on ssl://%s\n", a)
		}
	}
	fmt.Fprintf(c.stderr, "http listening on %s\n", m.HTTPURL())
	if m.Debug != nil {
		fmt.Fprintf(c.stderr, "debug profiles on %s\n", m.Debug.URL())
	}
	select {
	case <-ctx.Done():
		m.Logger.Info("shutting down", "cause", context.Cause(ctx))
	case <-m.Fenced():
		return m.closeFenced()
	}
	if err := m.Close(); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}

func (c *cli) firmwareAdd(ctx context.Context, args []string) error {
	if wantsURL(args) {
		return c.firmwareFetch(ctx, args)
	}
	fs, sp := c.newFlags("firmware add")
	server := c.serverFlag(fs)
	ver := fs.String("version", "", "firmware version (required)")
	name := fs.String("name", "", "firmware name (default: the file name)")
	model := fs.String("model", "", "device model the image is for (default: any)")
	signKey := fs.String("sign-key", "", "PEM ed25519 private key (orchestrator keys generate) to sign the image with")
	allowDowngrade := fs.Bool("allow-downgrade", false, "sign a permission for devices to install this image over a newer version (needs --sign-key)")
	byURL := addURLFlags(fs)
	pos, err := c.parse(fs, sp, args, "FILE")
	if err != nil {
		return err
	}
	if byURL.sha256 != "" || byURL.signature != "" || byURL.noWait {
		return &usageError{msg: "--sha256, --signature and --no-wait go with --url", spec: sp}
	}
	if err := required(sp, "version", *ver); err != nil {
		return err
	}
	if err := fleet.CheckVersion(*ver); err != nil {
		return &usageError{msg: "--version: " + invalidInput(err), spec: sp}
	}
	f, err := os.Open(pos[0])
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s: not a regular file", pos[0])
	}
	if *name == "" {
		*name = filepath.Base(pos[0])
	}
	meta := fleet.Firmware{Name: *name, Version: *ver, Model: *model, Size: st.Size(), AllowDowngrade: *allowDowngrade}
	if *allowDowngrade && *signKey == "" {
		return &usageError{msg: "--allow-downgrade is signed: it needs --sign-key", spec: sp}
	}
	if *signKey != "" {
		if err := signFile(f, *signKey, &meta); err != nil {
			return err
		}
	}
	fw, err := c.client(*server).AddFirmware(ctx, meta, f, meta.Size)
	if err != nil {
		return err
	}
	if *signKey != "" && fw.SHA256 != meta.SHA256 {
		return fmt.Errorf("the server stored SHA-256 %s, but %s was signed as %s: the file changed during the upload", fw.SHA256, pos[0], meta.SHA256)
	}
	fmt.Fprintln(c.stdout, fw.ID)
	return nil
}

func (c *cli) firmwareList(ctx context.Context, args []string) error {
	fs, sp := c.newFlags("firmware list")
	server := c.serverFlag(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	if _, err := c.parse(fs, sp, args); err != nil {
		return err
	}
	fws, err := c.client(*server).ListFirmware(ctx)
	if err != nil {
		return err
	}
	if *asJSON {
		return c.printJSON(nonNilSlice(fws))
	}
	t := newTable(c.stdout, "ID", "NAME", "VERSION", "MODEL", "SIZE", "SHA256", "SIGNED", "CREATED", "PAYLOADS")
	for _, fw := range fws {
		t.row(fw.ID, fw.Name, fw.Version, orDash(fw.Model),
			humanBytes(fw.Size), shortHash(fw.SHA256), signedColumn(fw), tableTime(fw.CreatedAt), formatPayloads(fw.Payloads))
	}
	return t.flush()
}

func (c *cli) updateCreate(ctx context.Context, args []string) error {
	fs, sp := c.newFlags("update create")
	server := c.serverFlag(fs)
	var req rollout.CreateRequest
	sel := &selectorFlag{sel: &req.Selector}
	fs.StringVar(&req.FirmwareID, "firmware", "", "firmware ID, or the ID of a fetch still running (firmware add --url --no-wait): the update waits for it (required)")
	fs.Var(sel, "select", "target devices: `criteria` model=M,version=V,tag:K=V,device=ID (repeatable; every criterion must match; none: all devices)")
	fs.IntVar(&req.Policy.MaxInFlight, "max-in-flight", 0, fmt.Sprintf("devices transferring at once (default %d)", fleet.DefaultMaxInFlight))
	fs.IntVar(&req.Policy.Window, "window", 0, fmt.Sprintf("unacknowledged chunks per device, 1..%d (default %d)", fleet.MaxWindow, fleet.DefaultWindow))
	fs.Var((*sizeFlag)(&req.Policy.ChunkSize), "chunk-size", fmt.Sprintf("chunk size in `bytes`, %d..%d, suffix k for KiB (default %d)", fleet.MinChunkSize, fleet.MaxChunkSize, fleet.DefaultChunkSize))
	fs.IntVar(&req.Policy.MaxAttempts, "max-attempts", 0, fmt.Sprintf("attempts per device before it fails (default %d)", fleet.DefaultMaxAttempts))
	pol := &req.Policy
	fs.IntVar(&pol.Rate, "rate", 0, "devices started per minute (default: no limit)")
	phases := fs.String("phases", "", "cumulative phase sizes, `list` of percentages or counts, e.g. 1%,10%,50%,100%")
	fs.Float64Var(&pol.SuccessThreshold, "success-threshold", 0, "share of a phase's devices that must succeed before the next phase, 0..1 (default 1)")
	soak := fs.Duration("soak", 0, "wait this long after a phase passes its gate")
	fs.BoolVar(&pol.ManualGates, "manual-gates", false, "pause at each phase gate until 'update resume'")
	failTh := fs.String("failure-threshold", "", "abort when failures reach this share (10%) or count (5) of finished devices")
	fs.IntVar(&pol.FailureMinFinished, "failure-min", 0, "apply --failure-threshold once at least `N` devices finished")
	idle := fs.Duration("idle-timeout", 0, fmt.Sprintf("fail a transfer's attempt after no progress for this long (default %s)", fleet.DefaultIdleTimeout))
	confirm := fs.Duration("confirm-timeout", 0, fmt.Sprintf("fail a device that does not come back on the target within this long after installing (default %s)", fleet.DefaultConfirmTimeout))
	offlineAfter := fs.Duration("offline-after", 0, fmt.Sprintf("a target not seen for this long while the update runs ends offline (default %s)", fleet.DefaultOfflineAfter))
	fs.BoolVar(&req.Selector.Online, "online", false, "target only the selected devices connected now")
	backoff := fs.Duration("retry-backoff", 0, fmt.Sprintf("first retry delay, doubled per attempt, with jitter (default %s)", fleet.DefaultRetryBackoff))
	startAt := fs.String("start-at", "", "schedule the update: RFC 3339 `time`, e.g. 2026-12-01T02:00:00Z")
	maint := fs.String("maintenance", "", "start devices only inside this daily `window`, HH:MM-HH:MM (may span midnight)")
	tz := fs.String("timezone", "", "IANA time zone of --maintenance, e.g. Europe/Berlin (default UTC)")
	fs.BoolVar(&pol.AllowDowngrade, "allow-downgrade", false, "also update devices running a newer version")
	fs.BoolVar(&pol.Force, "force", false, "update every selected device, even one on the target version")
	fs.BoolVar(&pol.Dynamic, "dynamic", false, "devices that appear later and match the selector join; the update runs until cancelled")
	fs.BoolVar(&pol.NoDelta, "no-delta", false, "send no device a delta from the image it runs")
	fs.BoolVar(&pol.NoCompress, "no-compress", false, "send no device a compressed image")
	if _, err := c.parse(fs, sp, args); err != nil {
		return err
	}
	if err := required(sp, "firmware", req.FirmwareID); err != nil {
		return err
	}
	if p := req.Policy; p.MaxInFlight < 0 || p.Window < 0 || p.ChunkSize < 0 || p.MaxAttempts < 0 || p.Rate < 0 || p.FailureMinFinished < 0 {
		return &usageError{msg: "policy values must not be negative", spec: sp}
	}
	// In the API a zero means "the default"; on the command line a 0
	// written out is a mistake, not a wish for the default.
	var zero string
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "max-in-flight", "window", "chunk-size", "max-attempts":
			if zero == "" && f.Value.String() == "0" {
				zero = f.Name
			}
		}
	})
	if zero != "" {
		return &usageError{msg: fmt.Sprintf("--%s must be at least 1; leave it out for the default", zero), spec: sp}
	}
	if *phases != "" {
		pol.Phases = strings.Split(*phases, ",")
		if _, err := fleet.ResolvePhases(pol.Phases, 100); err != nil {
			return &usageError{msg: "--phases: " + err.Error(), spec: sp}
		}
	}
	pol.Soak, pol.IdleTimeout, pol.ConfirmTimeout, pol.RetryBackoff = fleet.Duration(*soak), fleet.Duration(*idle), fleet.Duration(*confirm), fleet.Duration(*backoff)
	pol.OfflineAfter = fleet.Duration(*offlineAfter)
	th, err := fleet.ParseThreshold(*failTh)
	if err != nil {
		return &usageError{msg: "--failure-threshold: " + err.Error(), spec: sp}
	}
	pol.FailureThreshold = th
	if *startAt != "" {
		t, err := time.Parse(time.RFC3339, *startAt)
		if err != nil {
			return &usageError{msg: "--start-at: want an RFC 3339 time such as 2026-12-01T02:00:00Z", spec: sp}
		}
		pol.StartAt = &t
	}
	if *maint != "" {
		start, end, ok := strings.Cut(*maint, "-")
		if !ok {
			return &usageError{msg: fmt.Sprintf("--maintenance %q: want START-END, HH:MM-HH:MM", *maint), spec: sp}
		}
		w := &fleet.MaintenanceWindow{Start: start, End: end, TimeZone: *tz}
		if err := w.Validate(); err != nil {
			return &usageError{msg: fmt.Sprintf("--maintenance %q: %s", *maint, strings.TrimPrefix(err.Error(), fleet.ErrInvalidPolicy.Error()+": ")), spec: sp}
		}
		pol.Maintenance = w
	} else if *tz != "" {
		return &usageError{msg: "--timezone goes with --maintenance", spec: sp}
	}
	u, err := c.client(*server).CreateUpdate(ctx, req)
	if err != nil {
		return err
	}
	if u.State == fleet.UpdateWaiting {
		fmt.Fprintf(c.stderr, "%d device(s) chosen; the update starts when its firmware is fetched (%s)\n", u.Total, u.Explain())
	}
	fmt.Fprintln(c.stdout, u.ID)
	return nil
}

func (c *cli) updateStatus(ctx context.Context, args []string) error {
	fs, sp := c.newFlags("update status")
	server := c.serverFlag(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := c.parse(fs, sp, args, "ID")
	if err != nil {
		return err
	}
	sum, err := c.client(*server).Update(ctx, pos[0])
	if err != nil {
		return err
	}
	if *asJSON {
		return c.printJSON(sum)
	}
	writeStatus(c.stdout, sum)
	return nil
}

// writeStatus prints a summary for people.
func writeStatus(w io.Writer, s fleet.UpdateSummary) {
	t := newTable(w)
	t.row("update", s.ID)
	t.row("state", s.State)
	t.row("created", tableTime(s.CreatedAt)+" by "+orDash(termSafe(s.CreatedBy)))
	t.row("selector", formatSelector(s.Selector))
	t.row("firmware", fmt.Sprintf("%s (%s %s, %s)", cmp.Or(s.Firmware.ID, s.FirmwareID), termSafe(s.Firmware.Name), termSafe(s.Firmware.Version), humanBytes(s.Firmware.Size)))
	t.row("devices", fmt.Sprintf("%d/%d finished, %d in flight", s.Finished(), s.Total, s.InFlight))
	t.row("states", formatCounts(s.Counts))
	t.row("bytes", fmt.Sprintf("%s acked, %s sent, %d resends", humanBytes(s.BytesAcked), humanBytes(s.BytesSent), s.Resends))
	if s.ImageBytes > 0 {
		t.row("wire", fmt.Sprintf("%s of %s images (%d%%)", humanBytes(s.BytesSent), humanBytes(s.ImageBytes), s.BytesSent*100/s.ImageBytes))
	}
	if len(s.Encodings) > 0 {
		t.row("payloads", formatEncodings(s.Encodings))
	}
	t.row("rate", humanBytes(int64(s.RateBps))+"/s")
	if !s.State.Terminal() {
		t.row("eta", formatETA(s.ETASeconds))
	}
	if w := s.Explain(); w != "" {
		t.row("waiting", w)
	}
	if s.EndedReason != "" {
		t.row("ended", termSafe(s.EndedReason))
	}
	_ = t.flush() // stdout; nothing to report to
}

func (c *cli) updateWatch(ctx context.Context, args []string) error {
	fs, sp := c.newFlags("update watch")
	server := c.serverFlag(fs)
	interval := fs.Duration("interval", 500*time.Millisecond, "polling interval")
	asJSON := fs.Bool("json", false, "print each changed summary as one line of JSON")
	reconnectFor := reconnectFlag(fs)
	pos, err := c.parse(fs, sp, args, "ID")
	if err != nil {
		return err
	}
	if *interval <= 0 {
		return &usageError{msg: "--interval must be positive", spec: sp}
	}
	if *asJSON {
		c.tty = false
		c.jsonLines = true
	}
	code, err := c.watch(ctx, c.client(*server), pos[0], *interval, *reconnectFor)
	if err != nil {
		return err
	}
	if code != exitOK {
		return &exitError{code: code}
	}
	return nil
}

// watch polls an update until it is terminal and returns the exit code: 0 if
// it completed, 1 otherwise.
func (c *cli) watch(ctx context.Context, client *Client, id string, interval, reconnectFor time.Duration) (int, error) {
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	var last string
	re := &reconnector{stderr: c.stderr, limit: reconnectFor, before: func() {
		if c.tty && last != "" {
			fmt.Fprintln(c.stdout) // end the progress line before the notice
		}
	}}
	for {
		var sum fleet.UpdateSummary
		err := re.do(ctx, func() (err error) {
			sum, err = client.Update(ctx, id)
			return err
		})
		if err != nil {
			if c.tty && last != "" {
				fmt.Fprintln(c.stdout)
			}
			return exitFail, err
		}
		line := progressLine(sum)
		switch {
		case c.jsonLines:
			if changeKey(sum) != last || sum.State.Terminal() {
				if err := c.printJSONLine(sum); err != nil {
					return exitFail, err
				}
			}
		case c.tty:
			fmt.Fprintf(c.stdout, "\r%s\x1b[K", line)
		case changeKey(sum) != last:
			fmt.Fprintln(c.stdout, line)
		}
		last = changeKey(sum)
		if sum.State.Terminal() {
			if c.tty {
				fmt.Fprintln(c.stdout)
			}
			if !c.jsonLines {
				fmt.Fprintf(c.stdout, "update %s %s: %s\n", sum.ID, sum.State, formatCounts(sum.Counts))
			}
			if sum.State == fleet.UpdateCompleted {
				return exitOK, nil
			}
			return exitFail, nil
		}
		select {
		case <-ctx.Done():
			if c.tty {
				fmt.Fprintln(c.stdout)
			}
			return exitFail, context.Cause(ctx)
		case <-ticker.C:
		}
	}
}

// changeKey identifies what a non-terminal watcher reports a change of: the
// progress line without the rate and the ETA, which change on every poll.
func changeKey(s fleet.UpdateSummary) string {
	return progressCore(s) + "  " + string(s.State) + "  " + s.Explain()
}

// progressLine renders a summary as one line with a progress bar.
func progressLine(s fleet.UpdateSummary) string {
	line := progressCore(s) + fmt.Sprintf("  %s/s", humanBytes(int64(s.RateBps)))
	if !s.State.Terminal() {
		line += "  ETA " + formatETA(s.ETASeconds)
	}
	line += "  " + string(s.State)
	if w := s.Explain(); w != "" {
		line += " (" + w + ")"
	}
	return line
}

// progressCore is the bar and the device counts of a progress line.
func progressCore(s fleet.UpdateSummary) string {
	const width = 24
	done := s.Finished()
	frac := 0.0
	if s.Total > 0 {
		frac = float64(done) / float64(s.Total)
	}
	filled := int(frac * width)
	bar := strings.Repeat("=", filled)
	if filled < width {
		bar += ">" + strings.Repeat(" ", width-filled-1)
	}
	return fmt.Sprintf("[%s] %3.0f%% %d/%d  ok %d  failed %d  in flight %d",
		bar, frac*100, done, s.Total, s.Counts[fleet.StateSucceeded],
		s.Counts[fleet.StateFailed]+s.Counts[fleet.StateRejected], s.InFlight)
}

func (c *cli) updateList(ctx context.Context, args []string) error {
	fs, sp := c.newFlags("update list")
	server := c.serverFlag(fs)
	state := fs.String("state", "", "only updates in this state (waiting, scheduled, running, paused, completed, completed_with_failures, aborted, cancelled, failed)")
	asJSON := fs.Bool("json", false, "print JSON")
	if _, err := c.parse(fs, sp, args); err != nil {
		return err
	}
	cl := c.client(*server)
	cl.UpdateState = fleet.UpdateState(*state)
	ups, err := cl.ListUpdates(ctx)
	if err != nil {
		return err
	}
	if *asJSON {
		return c.printJSON(nonNilSlice(ups))
	}
	t := newTable(c.stdout, "ID", "STATE", "FIRMWARE", "DONE", "IN FLIGHT", "CREATED")
	for _, u := range ups {
		state := string(u.State)
		if u.FirmwareFetch != nil {
			state += " (" + u.FirmwareFetch.String() + ")"
		}
		t.row(u.ID, state, cmp.Or(u.Firmware.ID, u.FirmwareID), fmt.Sprintf("%d/%d", u.Finished(), u.Total),
			u.InFlight, tableTime(u.CreatedAt))
	}
	return t.flush()
}

func (c *cli) updateDevices(ctx context.Context, args []string) error {
	fs, sp := c.newFlags("update devices")
	server := c.serverFlag(fs)
	state := fs.String("state", "", "only devices in this state (queued, downloading, succeeded, failed, ...)")
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := c.parse(fs, sp, args, "ID")
	if err != nil {
		return err
	}
	if st := fleet.DeviceState(*state); st != "" && !st.Valid() {
		return &usageError{msg: fmt.Sprintf("--state %q: unknown device state; the states are %s", *state, fleet.StateNames()), spec: sp}
	}
	ps, err := c.client(*server).AllUpdateDevices(ctx, pos[0], fleet.DeviceState(*state))
	if err != nil {
		return err
	}
	if *asJSON {
		return c.printJSON(nonNilSlice(ps))
	}
	t := newTable(c.stdout, "DEVICE", "STATE", "OFFSET", "ATTEMPTS", "REASON", "PAYLOAD", "SIZE", "WIRE", "UPDATED")
	for _, p := range ps {
		size := "-"
		if p.Encoding != "" {
			size = humanBytes(p.PayloadSize)
		}
		t.row(p.DeviceID, p.State, p.Offset, p.Attempts, orDash(string(p.Reason)),
			orDash(p.Encoding), size, humanBytes(p.WireBytes), tableTime(p.UpdatedAt))
	}
	return t.flush()
}

func (c *cli) updateEvents(ctx context.Context, args []string) error {
	fs, sp := c.newFlags("update events")
	server := c.serverFlag(fs)
	after := fs.Int64("after", 0, "print events after this sequence number")
	follow := fs.Bool("follow", false, "keep printing new events until the update ends")
	interval := fs.Duration("interval", 500*time.Millisecond, "polling interval of --follow")
	asJSON := fs.Bool("json", false, "print JSON (with --follow: one event per line)")
	reconnectFor := reconnectFlag(fs)
	fs.StringVar(&c.events.device, "device", "", "only this device's events")
	fs.StringVar(&c.events.typ, "type", "", "only events of this type: "+strings.Join(fleet.EventTypes, ", "))
	pos, err := c.parse(fs, sp, args, "ID")
	if err != nil {
		return err
	}
	if err := c.events.check(); err != nil {
		return &usageError{msg: err.Error(), spec: sp}
	}
	if *after < 0 {
		return &usageError{msg: "--after must not be negative", spec: sp}
	}
	if *interval <= 0 {
		return &usageError{msg: "--interval must be positive", spec: sp}
	}
	client := c.client(*server)
	if *follow {
		return c.followEvents(ctx, client, pos[0], *after, *interval, *reconnectFor, *asJSON)
	}
	var all []fleet.Event
	for seq := *after; ; {
		page, err := client.Events(ctx, pos[0], seq, httpapi.MaxPageSize)
		if err != nil {
			return err
		}
		all = append(all, c.events.filter(page.Events)...)
		if len(page.Events) == 0 || page.Next <= seq {
			break
		}
		seq = page.Next
	}
	if *asJSON {
		return c.printJSON(nonNilSlice(all))
	}
	t := newTable(c.stdout, eventHeader...)
	for _, e := range all {
		t.row(eventCells(e)...)
	}
	return t.flush()
}

var eventHeader = []string{"SEQ", "TIME", "TYPE", "DEVICE", "STATE", "REASON", "OFFSET", "ATTEMPT"}

// eventCells is an event as the columns of eventHeader.
func eventCells(e fleet.Event) []any {
	state := e.State
	if e.From != "" {
		state = e.From + " -> " + e.State
	}
	return []any{e.Seq, tableTime(e.Time), e.Type,
		orDash(e.DeviceID), state, orDash(string(e.Reason)), e.Offset, e.Attempt}
}

// followEvents prints the update's events after seq as they are stored,
// each once and in order, until the update's own event says it ended and
// the log has nothing more; it returns an exitError unless it completed.
func (c *cli) followEvents(ctx context.Context, client *Client, id string, seq int64, interval, reconnectFor time.Duration, asJSON bool) error {
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	var end fleet.UpdateState
	if !asJSON {
		fmt.Fprintln(c.stdout, strings.Join(eventHeader, "  "))
	}
	re := &reconnector{stderr: c.stderr, limit: reconnectFor}
	for {
		var page httpapi.EventList
		err := re.do(ctx, func() (err error) {
			page, err = client.Events(ctx, id, seq, httpapi.MaxPageSize)
			return err
		})
		if err != nil {
			return err
		}
		for _, e := range page.Events {
			if e.Seq <= seq {
				continue
			}
			seq = e.Seq
			switch {
			case !c.events.match(e): // not printed; an update event still tells the end
			case asJSON:
				err = c.printJSONLine(e)
			default:
				_, err = fmt.Fprintln(c.stdout, cellsLine(eventCells(e), "  "))
			}
			if err != nil {
				return err
			}
			if st := fleet.UpdateState(e.State); e.Type == fleet.EventUpdate && st.Terminal() {
				end = st
			}
		}
		if len(page.Events) == httpapi.MaxPageSize {
			continue // more are stored: no need to wait
		}
		if end != "" {
			if end == fleet.UpdateCompleted {
				return nil
			}
			return &exitError{code: exitFail}
		}
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-ticker.C:
		}
	}
}

func (c *cli) updateControl(ctx context.Context, name string, args []string) error {
	fs, sp := c.newFlags(name)
	server := c.serverFlag(fs)
	pos, err := c.parse(fs, sp, args, "ID")
	if err != nil {
		return err
	}
	client := c.client(*server)
	op := map[string]func(context.Context, string) (fleet.UpdateSummary, error){
		"update pause": client.Pause, "update resume": client.Resume, "update cancel": client.Cancel,
	}[name]
	sum, err := op(ctx, pos[0])
	if err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "update %s %s\n", sum.ID, sum.State)
	return nil
}

func (c *cli) updateRetryFailed(ctx context.Context, args []string) error {
	fs, sp := c.newFlags("update retry-failed")
	server := c.serverFlag(fs)
	pos, err := c.parse(fs, sp, args, "ID")
	if err != nil {
		return err
	}
	res, err := c.client(*server).RetryFailed(ctx, pos[0])
	if err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "update %s %s: %d failed devices queued again\n", res.Update.ID, res.Update.State, res.Retried)
	return nil
}

func (c *cli) deviceSummary(ctx context.Context, args []string) error {
	fs, sp := c.newFlags("device summary")
	server := c.serverFlag(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	if _, err := c.parse(fs, sp, args); err != nil {
		return err
	}
	sum, err := c.client(*server).FleetSummary(ctx)
	if err != nil {
		return err
	}
	if *asJSON {
		return c.printJSON(sum)
	}
	fmt.Fprintf(c.stdout, "%d devices: %d online, %d offline\n\n", sum.Total, sum.Online, sum.Offline)
	t := newTable(c.stdout, "MODEL", "VERSION", "DEVICES", "ONLINE")
	for _, v := range sum.Versions {
		t.row(orDash(v.Model), orDash(v.Version), v.Devices, v.Online)
	}
	return t.flush()
}

func (c *cli) deviceList(ctx context.Context, args []string) error {
	fs, sp := c.newFlags("device list")
	server := c.serverFlag(fs)
	online := fs.Bool("online", false, "only devices connected now")
	model := fs.String("model", "", "only devices of this model")
	ver := fs.String("version", "", "only devices running this version")
	tags := tagFlag{}
	fs.Var(tags, "tag", "only devices with this tag `K=V` (repeatable; every one must match)")
	asJSON := fs.Bool("json", false, "print JSON")
	if _, err := c.parse(fs, sp, args); err != nil {
		return err
	}
	q := DeviceQuery{Model: *model, Version: *ver, Tags: tags}
	if *online {
		q.Online = online
	}
	devs, err := c.client(*server).AllDevices(ctx, q)
	if err != nil {
		return err
	}
	if *asJSON {
		return c.printJSON(nonNilSlice(devs))
	}
	t := newTable(c.stdout, "ID", "MODEL", "VERSION", "ONLINE", "LAST SEEN", "TAGS")
	for _, d := range devs {
		t.row(d.ID, d.Model, d.Version, d.Online,
			tableTime(d.LastSeen), formatTags(d.Tags))
	}
	return t.flush()
}

// selectorFlag is --select: comma-separated criteria merged into a selector.
type selectorFlag struct {
	sel *fleet.Selector
	raw []string
}

func (f *selectorFlag) String() string {
	if f == nil {
		return ""
	}
	return strings.Join(f.raw, ",")
}

func (f *selectorFlag) Set(s string) error {
	if err := parseSelector(s, f.sel); err != nil {
		return err
	}
	f.raw = append(f.raw, s)
	return nil
}

// parseSelector merges "model=M,version=V,tag:K=V,device=ID,..." into sel.
func parseSelector(s string, sel *fleet.Selector) error {
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		k, v, ok := strings.Cut(item, "=")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if !ok || v == "" {
			return fmt.Errorf("%q: want key=value (model=, version=, tag:K=, device=)", item)
		}
		switch {
		case k == "model":
			if sel.Model != "" && sel.Model != v {
				return fmt.Errorf("%q: model already set to %q", item, sel.Model)
			}
			sel.Model = v
		case k == "version":
			if sel.Version != "" && sel.Version != v {
				return fmt.Errorf("%q: version already set to %q", item, sel.Version)
			}
			sel.Version = v
		case k == "device":
			if !fleet.ValidDeviceID(v) {
				return fmt.Errorf("%q: invalid device ID", item)
			}
			sel.Devices = append(sel.Devices, v)
		case strings.HasPrefix(k, "tag:"):
			tag := strings.TrimPrefix(k, "tag:")
			if tag == "" {
				return fmt.Errorf("%q: empty tag name", item)
			}
			if old, ok := sel.Tags[tag]; ok && old != v {
				return fmt.Errorf("%q: tag %q already set to %q", item, tag, old)
			}
			if sel.Tags == nil {
				sel.Tags = map[string]string{}
			}
			sel.Tags[tag] = v
		default:
			return fmt.Errorf("%q: unknown key %q (want model, version, tag:NAME or device)", item, k)
		}
	}
	return nil
}

// sizeFlag is a byte count with an optional k/K/KiB suffix (x1024).
type sizeFlag int

func (f *sizeFlag) String() string {
	if f == nil || *f == 0 {
		return ""
	}
	return strconv.Itoa(int(*f))
}

func (f *sizeFlag) Set(s string) error {
	n, err := parseSize(s)
	if err != nil {
		return err
	}
	*f = sizeFlag(n)
	return nil
}

func parseSize(s string) (int, error) {
	num, mult := strings.TrimSpace(s), 1
	for _, suf := range []string{"KiB", "kib", "k", "K"} {
		if strings.HasSuffix(num, suf) {
			num, mult = strings.TrimSuffix(num, suf), 1024
			break
		}
	}
	n, err := strconv.Atoi(strings.TrimSpace(num))
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%q: want a byte count such as 16384 or 16k", s)
	}
	return n * mult, nil
}

// formatCounts lists the non-zero counts in the order of the happy path.
func formatCounts(counts map[fleet.DeviceState]int) string {
	var parts []string
	for _, st := range fleet.AllDeviceStates {
		if n := counts[st]; n > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", st, n))
		}
	}
	if len(parts) == 0 {
		return "no devices"
	}
	return strings.Join(parts, ", ")
}

func formatETA(seconds float64) string {
	if seconds <= 0 {
		return "-"
	}
	return time.Duration(seconds * float64(time.Second)).Round(time.Second).String()
}

func formatTags(tags map[string]string) string {
	if len(tags) == 0 {
		return "-"
	}
	keys := make([]string, 0, len(tags))
	for k := range tags {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + tags[k]
	}
	return strings.Join(parts, ",")
}

// humanBytes formats n in binary units.
func humanBytes(n int64) string { return fleet.HumanBytes(n) }

func shortHash(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return h
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func nonNilSlice[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
