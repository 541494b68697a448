package main

import (
	"bytes"
	"context"
	"flag"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/agent"
)

// parse runs the flag and config layering of run on args.
func parse(t *testing.T, args []string, env map[string]string) (*config, error) {
	t.Helper()
	var c config
	fs := flag.NewFlagSet("flota-agent", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	c.flags(fs)
	require.NoError(t, fs.Parse(args))
	return &c, c.load(fs, func(k string) string { return env[k] })
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	require.NoError(t, os.WriteFile(p, []byte(content), 0o600))
	return p
}

func TestConfig_FlagsOverrideEnvironmentOverrideFile(t *testing.T) {
	conf := writeFile(t, "agent.conf", `# comment
broker = tcp://file:1883
id = dev-1
model = "pi 4"
state-dir = /file/state
install-timeout = 10m
require-confirm = true
`)
	c, err := parse(t, []string{"--config", conf, "--broker", "tcp://flag:1883"},
		map[string]string{"FLOTA_AGENT_BROKER": "tcp://env:1883", "FLOTA_AGENT_STATE_DIR": "/env/state"})
	require.NoError(t, err)
	assert.Equal(t, "tcp://flag:1883", c.broker, "the flag wins")
	assert.Equal(t, "/env/state", c.stateDir, "the environment beats the file")
	assert.Equal(t, "dev-1", c.id)
	assert.Equal(t, "pi 4", c.model, "quotes are removed")
	assert.Equal(t, "10m0s", c.installTimeout.String())
	assert.True(t, c.requireConfirm)
	assert.Equal(t, defaultMaxImageSize, int(c.maxImageSize), "defaults stay")

	c, err = parse(t, []string{"--config", writeFile(t, "quoted.conf", `install-command = "install #1"`+"\n")}, nil)
	require.NoError(t, err)
	assert.Equal(t, "install #1", c.installCmd, "a quoted value keeps its #")

	c, err = parse(t, nil, map[string]string{"FLOTA_AGENT_CONFIG": conf})
	require.NoError(t, err)
	assert.Equal(t, "tcp://file:1883", c.broker, "FLOTA_AGENT_CONFIG names the file")
}

func TestConfig_RefusesUnknownKeysBadValuesAndHugeFiles(t *testing.T) {
	for name, content := range map[string]string{
		"unknown key":  "brokr = tcp://x:1883\n",
		"no equals":    "broker tcp://x:1883\n",
		"bad duration": "install-timeout = soon\n",
		"config key":   "config = /etc/other.conf\n",
		"too large":    "# " + strings.Repeat("x", maxConfigFile) + "\n",
		// sh -c 'CMD "$@"' would comment out the image path.
		"comment after a value": "install-command = /usr/local/bin/install   # the installer\n",
	} {
		t.Run(name, func(t *testing.T) {
			_, err := parse(t, []string{"--config", writeFile(t, "agent.conf", content)}, nil)
			require.Error(t, err)
		})
	}
}

func TestConfig_CheckNamesWhatIsMissing(t *testing.T) {
	c, err := parse(t, []string{"--version", "1.0.0", "--version-file", "/etc/version", "--cert-file", "c.pem", "--image-name", "../x", "--subscribe-qos", "2"}, nil)
	require.NoError(t, err)
	err = c.check()
	require.Error(t, err)
	for _, want := range []string{"--broker", "--id", "--model", "--install-command", "exactly one of --version", "--cert-file and --key-file", "--image-name", "--subscribe-qos"} {
		assert.Contains(t, err.Error(), want)
	}
}

func TestReadSecret_TrimsTheNewlineAndBoundsTheSize(t *testing.T) {
	s, err := readSecret(writeFile(t, "pw", "s3cret\n"))
	require.NoError(t, err)
	assert.Equal(t, "s3cret", s)
	_, err = readSecret(writeFile(t, "pw", "\n"))
	assert.Error(t, err, "empty")
	_, err = readSecret(writeFile(t, "pw", strings.Repeat("x", maxSecretFile+1)))
	assert.Error(t, err, "too large")
}

func TestConfirm_WritesTheWaitedVersionOrRefuses(t *testing.T) {
	dir := t.TempDir()
	var out bytes.Buffer
	err := run(context.Background(), []string{"confirm", "--state-dir", dir}, &out, func(string) string { return "" })
	require.ErrorContains(t, err, "no version waits")
	require.NoError(t, os.WriteFile(filepath.Join(dir, confirmPendingName), []byte("2.0.0\n"), 0o600))
	require.NoError(t, run(context.Background(), []string{"confirm", "--state-dir", dir}, &out, func(string) string { return "" }))
	b, err := os.ReadFile(filepath.Join(dir, confirmedName))
	require.NoError(t, err)
	assert.Equal(t, "2.0.0\n", string(b))
	assert.Equal(t, "confirmed 2.0.0\n", out.String())
}

func testDevice(t *testing.T, c *config) *device {
	t.Helper()
	if c.stateDir == "" {
		c.stateDir = t.TempDir()
	}
	if c.imageName == "" {
		c.imageName = defaultImageName
	}
	if c.hookTimeout == 0 {
		c.hookTimeout = defaultHookTimeout
	}
	return &device{cfg: c, log: slog.New(slog.DiscardHandler)}
}

func TestDevice_WriteBelowTheEndDropsTheRest(t *testing.T) {
	d := testDevice(t, &config{})
	require.NoError(t, d.WriteImage("u1", 0, []byte("aaaa")))
	require.NoError(t, d.WriteImage("u1", 4, []byte("bbbb")))
	// A restarted agent resumes from an older checkpoint.
	d.closeImage()
	require.NoError(t, d.WriteImage("u1", 4, []byte("cc")))
	require.NoError(t, d.SyncImage())
	b, err := os.ReadFile(d.path(d.cfg.imageName))
	require.NoError(t, err)
	assert.Equal(t, "aaaacc", string(b))
	// A new download starts over.
	require.NoError(t, d.WriteImage("u2", 0, []byte("x")))
	b, _ = os.ReadFile(d.path(d.cfg.imageName))
	assert.Equal(t, "x", string(b))
	d.Discard("u2")
	assert.NoFileExists(t, d.path(d.cfg.imageName))
}

func TestDevice_InstallRefusesAnImageThatChangedOnDisk(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "ran")
	d := testDevice(t, &config{installCmd: "touch " + marker + "; true", installTimeout: defaultInstallTimeout})
	require.NoError(t, d.WriteImage("u1", 0, []byte("image")))
	fw := agent.Firmware{Version: "2.0.0", Size: 5, SHA256: "0000000000000000000000000000000000000000000000000000000000000000"}
	require.ErrorContains(t, d.Install(context.Background(), "u1", fw), "does not match")
	assert.NoFileExists(t, marker, "the install command did not run")
}

func TestDevice_HookExitStatusTimeoutAndOutputBound(t *testing.T) {
	d := testDevice(t, &config{})
	require.NoError(t, d.hook(context.Background(), "ok", "true", defaultHookTimeout, nil))
	require.Error(t, d.hook(context.Background(), "fails", "exit 3", defaultHookTimeout, nil))
	err := d.hook(context.Background(), "slow", "sleep 30", 100*1e6, nil)
	require.ErrorContains(t, err, "killed after")

	h := &headBuffer{max: 8}
	_, _ = h.Write([]byte("0123456789"))
	_, _ = h.Write([]byte("abc"))
	assert.Equal(t, "01234567 [+5 bytes]", h.String())
}

func TestDevice_VersionMustBeAProtocolVersion(t *testing.T) {
	for content, ok := range map[string]bool{
		"1.2.3\n":               true,
		"1.2.3\nsecond line\n":  true,
		"\n":                    false,
		strings.Repeat("9", 65): false,
		"1.2.3\x1b[31m":         false,
	} {
		d := testDevice(t, &config{versionFile: writeFile(t, "version", content)})
		v, err := d.version(context.Background())
		if ok {
			assert.NoError(t, err, "%q", content)
			assert.Equal(t, "1.2.3", v)
		} else {
			assert.Error(t, err, "%q", content)
		}
	}
}

func TestRun_HelpShowsUsageSubcommandAndFlagTypes(t *testing.T) {
	var out strings.Builder
	err := run(context.Background(), []string{"--help"}, &out, func(string) string { return "" })
	require.ErrorIs(t, err, flag.ErrHelp)
	help := out.String()
	assert.Contains(t, help, "usage: flota-agent [--config FILE] [flags]")
	assert.Contains(t, help, "flota-agent confirm")
	assert.Contains(t, help, "example:")
	// A back-quoted word in a flag's help would become its value's name.
	assert.Regexp(t, `-confirm-timeout duration\n`, help)
	assert.Regexp(t, `-require-confirm\n`, help)
}
