package main

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Limits of what the daemon reads from files it is pointed at: a config or
// secret file larger than these is refused rather than read into memory.
const (
	maxConfigFile = 64 << 10
	maxSecretFile = 4 << 10
)

// Defaults of the daemon (docs/AGENT.md, "Configuration").
const (
	defaultStateDir       = "/var/lib/flota-agent"
	defaultImageName      = "image.part"
	defaultMaxImageSize   = 1 << 30
	defaultInstallTimeout = 30 * time.Minute
	defaultHookTimeout    = 5 * time.Minute
	defaultConfirmTimeout = 5 * time.Minute
	defaultRebootWait     = 5 * time.Minute
	// envPrefix prefixes the environment variable of each setting:
	// FLOTA_AGENT_BROKER for broker, FLOTA_AGENT_STATE_DIR for state-dir.
	envPrefix = "FLOTA_AGENT_"
)

// config is the daemon's configuration: flags over environment variables
// over the config file over defaults.
type config struct {
	file string // --config

	broker       string
	id           string
	model        string
	version      string // the running version, fixed
	versionFile  string // or the first line of this file
	versionCmd   string // or the first line of this command's output
	tags         string // k=v,k=v
	username     string
	passwordFile string
	caFile       string
	certFile     string
	keyFile      string
	publicKey    string
	stateDir     string
	imageName    string
	runningImage string
	maxImageSize int64
	maxChunk     int
	maxWindow    int
	checkpoint   int64
	subscribeQoS int
	resubscribe  time.Duration

	installCmd     string
	installTimeout time.Duration
	rebootCmd      string
	rebootWait     time.Duration
	healthCmd      string
	confirmCmd     string
	rollbackCmd    string
	requireConfirm bool
	confirmTimeout time.Duration
	hookTimeout    time.Duration

	logLevel string
}

// flags declares the settings on fs. The names are also the config file's
// keys and, upper-cased with FLOTA_AGENT_ before them and - as _, the
// environment variables.
func (c *config) flags(fs *flag.FlagSet) {
	fs.StringVar(&c.file, "config", "", "config file of key = value lines; the keys are these flags' names")
	fs.StringVar(&c.broker, "broker", "", "MQTT broker URL: tcp://host:1883, or ssl://host:8883 (required)")
	fs.StringVar(&c.id, "id", "", "device ID, also the MQTT client ID (required)")
	fs.StringVar(&c.model, "model", "", "hardware model, compared with the firmware's model (required)")
	fs.StringVar(&c.version, "version", "", "firmware version running (a fixed string; prefer --version-file or --version-command)")
	fs.StringVar(&c.versionFile, "version-file", "", "file whose first line is the firmware version running (such as one the image ships)")
	fs.StringVar(&c.versionCmd, "version-command", "", "shell command whose first line of output is the firmware version running")
	fs.StringVar(&c.tags, "tags", "", "device tags for update selectors: key=value,key=value")
	fs.StringVar(&c.username, "username", "", "MQTT username (default: the device ID when a password is set)")
	fs.StringVar(&c.passwordFile, "password-file", "", "file holding the device's MQTT secret (orchestrator device provision)")
	fs.StringVar(&c.caFile, "ca-file", "", "PEM CA certificates the broker's certificate is checked against (ssl://; default: system roots)")
	fs.StringVar(&c.certFile, "cert-file", "", "PEM client certificate (ssl://, with --key-file)")
	fs.StringVar(&c.keyFile, "key-file", "", "PEM private key of --cert-file")
	fs.StringVar(&c.publicKey, "public-key", "", "PEM ed25519 public key the firmware signatures must verify with (strongly advised)")
	fs.StringVar(&c.stateDir, "state-dir", defaultStateDir, "directory of the agent's state file and of the image being downloaded")
	fs.StringVar(&c.imageName, "image-name", defaultImageName, "file name of the image being downloaded, in --state-dir (an installer may want a suffix: update.raucb)")
	fs.StringVar(&c.runningImage, "running-image", "", "file holding exactly the image the device runs: its SHA-256 is stated in the hello, and deltas are applied to it (none: full images only, compressed or not)")
	fs.Int64Var(&c.maxImageSize, "max-image-size", defaultMaxImageSize, "largest image accepted, in bytes; larger offers are rejected insufficient_space")
	fs.IntVar(&c.maxChunk, "max-chunk", 0, "largest chunk payload taken, in bytes, stated in the hello (0: the update's)")
	fs.IntVar(&c.maxWindow, "max-window", 0, "largest window taken, in chunks, stated in the hello (0: the update's)")
	fs.Int64Var(&c.checkpoint, "checkpoint-bytes", 0, "bytes between two saves of a download's progress (0: 1 MiB); a crash re-downloads at most this much")
	fs.IntVar(&c.subscribeQoS, "subscribe-qos", 1, "QoS of the subscription to the device's down topics, 0 or 1 (docs/BROKERS.md, \"Large fleets on RabbitMQ 3.10\")")
	fs.DurationVar(&c.resubscribe, "resubscribe-after", 0, "subscribe again this long after each connection, then at doubling intervals, so that a subscription the broker lost ends the connection (RabbitMQ: docs/BROKERS.md); 0: never")
	fs.StringVar(&c.installCmd, "install-command", "", "shell command that installs the image, whose path is its last argument; exit 0: installed (required)")
	fs.DurationVar(&c.installTimeout, "install-timeout", defaultInstallTimeout, "longest an install command may run; then it is killed and the install failed")
	fs.StringVar(&c.rebootCmd, "reboot-command", "", "shell command that reboots into the installed image (empty: the new version runs without a reboot)")
	fs.DurationVar(&c.rebootWait, "reboot-wait", defaultRebootWait, "how long to wait for the reboot to stop the agent before reporting what runs")
	fs.StringVar(&c.healthCmd, "health-command", "", "shell command run after booting into a new version; non-zero exit: roll back")
	fs.StringVar(&c.confirmCmd, "confirm-command", "", "shell command that marks the new version good after it is healthy (rauc status mark-good); non-zero exit: roll back")
	fs.StringVar(&c.rollbackCmd, "rollback-command", "", "shell command that goes back to the previous version when the new one is not healthy or not confirmed")
	fs.BoolVar(&c.requireConfirm, "require-confirm", false, "after booting into a new version, wait for \"flota-agent confirm\" before reporting success")
	fs.DurationVar(&c.confirmTimeout, "confirm-timeout", defaultConfirmTimeout, "how long to wait for \"flota-agent confirm\"; then roll back")
	fs.DurationVar(&c.hookTimeout, "hook-timeout", defaultHookTimeout, "longest the reboot, health, confirm, rollback and version commands may run")
	fs.StringVar(&c.logLevel, "log-level", "info", "debug, info, warn or error")
}

// load applies the config file and the environment to the settings the
// command line did not set.
func (c *config) load(fs *flag.FlagSet, getenv func(string) string) error {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if c.file == "" {
		c.file = getenv(envPrefix + "CONFIG")
	}
	if c.file != "" {
		kv, err := readConfigFile(c.file)
		if err != nil {
			return err
		}
		for _, e := range kv {
			if e.key == "config" || fs.Lookup(e.key) == nil {
				return fmt.Errorf("%s:%d: unknown setting %q", c.file, e.line, e.key)
			}
			if set[e.key] || getenv(envName(e.key)) != "" {
				continue
			}
			if err := fs.Set(e.key, e.value); err != nil {
				return fmt.Errorf("%s:%d: %s: %w", c.file, e.line, e.key, err)
			}
		}
	}
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if err != nil || set[f.Name] || f.Name == "config" {
			return
		}
		if v := getenv(envName(f.Name)); v != "" {
			if e := fs.Set(f.Name, v); e != nil {
				err = fmt.Errorf("%s: %w", envName(f.Name), e)
			}
		}
	})
	return err
}

// envName is the environment variable of a setting.
func envName(key string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(key, "-", "_"))
}

// check says what is missing or contradictory.
func (c *config) check() error {
	var errs []error
	for _, r := range []struct{ name, v string }{
		{"broker", c.broker}, {"id", c.id}, {"model", c.model}, {"install-command", c.installCmd},
	} {
		if r.v == "" {
			errs = append(errs, fmt.Errorf("--%s is required", r.name))
		}
	}
	n := 0
	for _, v := range []string{c.version, c.versionFile, c.versionCmd} {
		if v != "" {
			n++
		}
	}
	if n != 1 {
		errs = append(errs, errors.New("give exactly one of --version, --version-file and --version-command"))
	}
	if (c.certFile == "") != (c.keyFile == "") {
		errs = append(errs, errors.New("--cert-file and --key-file go together"))
	}
	if c.resubscribe < 0 {
		errs = append(errs, errors.New("--resubscribe-after must not be negative"))
	}
	if c.subscribeQoS != 0 && c.subscribeQoS != 1 {
		errs = append(errs, fmt.Errorf("--subscribe-qos must be 0 or 1, got %d", c.subscribeQoS))
	}
	if c.maxImageSize <= 0 {
		errs = append(errs, errors.New("--max-image-size must be positive"))
	}
	if n := c.imageName; n == "" || n != filepath.Base(n) || n == "." || n == ".." || strings.HasPrefix(n, stateFileName) || strings.HasPrefix(n, "confirm.") {
		errs = append(errs, fmt.Errorf("--image-name %q: want a plain file name, not one of the agent's own", n))
	}
	if c.stateDir == "" {
		errs = append(errs, errors.New("--state-dir is required"))
	}
	return errors.Join(errs...)
}

// parseTags parses key=value,key=value.
func parseTags(s string) (map[string]string, error) {
	if s == "" {
		return nil, nil
	}
	tags := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--tags: %q is not key=value", kv)
		}
		tags[k] = v
	}
	return tags, nil
}

// entry is one setting of a config file.
type entry struct {
	line       int
	key, value string
}

// readConfigFile reads key = value lines; blank lines and lines starting
// with # are skipped, and a value may be quoted with double quotes. An
// unquoted value with a blank before a # is refused as a trailing comment.
func readConfigFile(path string) ([]entry, error) {
	b, err := readBounded(path, maxConfigFile)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	var out []entry
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("%s:%d: want key = value", path, n)
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
			v = v[1 : len(v)-1]
		} else if strings.Contains(v, " #") || strings.Contains(v, "\t#") {
			// Most likely a comment, which would become part of the
			// value: in a hook, sh -c 'CMD "$@"' would comment out
			// the image path.
			return nil, fmt.Errorf("%s:%d: %s: a comment after a value; put it on a line of its own, or quote the value", path, n, k)
		}
		out = append(out, entry{n, k, v})
	}
	return out, sc.Err()
}

// readBounded reads a file of at most max bytes.
func readBounded(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, max)
	}
	return b, nil
}

// readSecret reads a secret file: its content without the trailing newline.
func readSecret(path string) (string, error) {
	b, err := readBounded(path, maxSecretFile)
	if err != nil {
		return "", err
	}
	s := strings.TrimRight(string(b), "\r\n")
	if s == "" {
		return "", fmt.Errorf("%s is empty", path)
	}
	return s, nil
}
