package main

import (
	"context"
	"flag"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// configTestFlags is a flag set of each kind serve has.
func configTestFlags() (*flag.FlagSet, *configChoice, map[string]any) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	v := map[string]any{
		"data":      fs.String("data", "./default", "data directory"),
		"log-level": fs.String("log-level", "info", "log level"),
		"window":    fs.Int("window", 0, "window"),
		"ban":       fs.Duration("ban", time.Minute, "ban"),
		"anonymous": fs.Bool("anonymous", false, "anonymous"),
		"size":      new(sizeFlag64),
	}
	fs.Var(v["size"].(*sizeFlag64), "size", "size")
	return fs, addConfigFlags(fs), v
}

func writeConfigFile(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "orchestrator.conf")
	require.NoError(t, os.WriteFile(p, []byte(text), 0o600))
	return p
}

func TestServeConfig_FlagBeatsEnvBeatsFileBeatsDefault(t *testing.T) {
	fs, choice, v := configTestFlags()
	file := writeConfigFile(t, `# a comment
   # an indented comment

data = /from/file
log-level=debug
window = 7
ban = "90s"
anonymous = true
size = 1MiB
`)
	env := map[string]string{"FLOTA_DATA": "/from/env", "FLOTA_WINDOW": "9", ConfigEnv: "/not/read/because/of/the/flag"}
	require.NoError(t, fs.Parse([]string{"--config", file, "--window", "11"}))
	require.NoError(t, applyConfig(fs, func(k string) string { return env[k] }, choice))
	assert.Equal(t, "/from/env", *v["data"].(*string), "env over file")
	assert.Equal(t, "debug", *v["log-level"].(*string), "file over default")
	assert.Equal(t, 11, *v["window"].(*int), "flag over env and file")
	assert.Equal(t, 90*time.Second, *v["ban"].(*time.Duration), "quoted value")
	assert.True(t, *v["anonymous"].(*bool))
	assert.Equal(t, sizeFlag64(1<<20), *v["size"].(*sizeFlag64))

	// Without --config, FLOTA_CONFIG names the file; nothing set keeps defaults.
	fs, choice, v = configTestFlags()
	require.NoError(t, fs.Parse(nil))
	env = map[string]string{ConfigEnv: writeConfigFile(t, "window = 3\n")}
	require.NoError(t, applyConfig(fs, func(k string) string { return env[k] }, choice))
	assert.Equal(t, 3, *v["window"].(*int))
	assert.Equal(t, "./default", *v["data"].(*string))
	assert.Equal(t, time.Minute, *v["ban"].(*time.Duration))
}

func TestServeConfig_BadFilesAndVariablesAreRefusedWithTheirPlace(t *testing.T) {
	for name, tc := range map[string]struct{ file, want string }{
		"unknown key":     {"data = x\n\nwindw = 3\n", `.conf: line 3: unknown key "windw"`},
		"key with dashes": {"--data = x\n", "line 1: key \"--data\": write flags without their dashes"},
		"no equals":       {"data x\n", "line 1: want KEY = VALUE"},
		"no key":          {" = x\n", "line 1: want KEY = VALUE"},
		"twice":           {"data = a\n# c\ndata = b\n", "line 3: data is set already on line 1"},
		"bad value":       {"window = many\n", ".conf: line 1: window: "},
		"bad bool":        {"\nanonymous = yes please\n", ".conf: line 2: anonymous: "},
		"bad quote":       {"data = \"x\n", "line 1: data: bad quoted value"},
		"config in file":  {"config = other.conf\n", `unknown key "config"`},
		"print in file":   {"print-config = true\n", `unknown key "print-config"`},
		"comment after":   {"window = 3 # three\n", ".conf: line 1: window: "},
		// A string flag would take the comment as part of its value.
		"comment after a string": {"\ndata = /var/lib/flota   # the state\n", `.conf: line 2: data: a # in a value must be quoted ("…#…"); comments go on lines of their own`},
		"# in a string":          {"data = a#b\n", `line 1: data: a # in a value must be quoted`},
	} {
		t.Run(name, func(t *testing.T) {
			fs, choice, _ := configTestFlags()
			require.NoError(t, fs.Parse([]string{"--config", writeConfigFile(t, tc.file)}))
			err := applyConfig(fs, func(string) string { return "" }, choice)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
	fs, choice, _ := configTestFlags()
	require.NoError(t, fs.Parse(nil))
	err := applyConfig(fs, func(k string) string { return map[string]string{"FLOTA_BAN": "forever"}[k] }, choice)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "$FLOTA_BAN")

	fs, choice, _ = configTestFlags()
	fs.String(secretKey, "", "a secret")
	secret := writeConfigFile(t, "broker-password = hunter2hunter2\n")
	require.NoError(t, os.Chmod(secret, 0o644))
	require.NoError(t, fs.Parse([]string{"--config", secret}))
	err = applyConfig(fs, func(string) string { return "" }, choice)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "every user can read")
	assert.NotContains(t, err.Error(), "hunter2")

	fs, choice, _ = configTestFlags()
	require.NoError(t, fs.Parse([]string{"--config", filepath.Join(t.TempDir(), "missing.conf")}))
	assert.Error(t, applyConfig(fs, func(string) string { return "" }, choice))

	fs, choice, _ = configTestFlags()
	require.NoError(t, fs.Parse([]string{"--config", writeConfigFile(t, "data = "+strings.Repeat("x", maxConfigSize)+"\n")}))
	err = applyConfig(fs, func(string) string { return "" }, choice)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "larger than")
}

// serveUntilListening runs serve with args and env until it listens, then
// stops it and returns its stderr.
func serveUntilListening(t *testing.T, env map[string]string, args ...string) string {
	t.Helper()
	var stdout, stderr lockedBuffer
	c := newCLI(&stdout, &stderr, func(k string) string { return env[k] })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() { done <- c.run(ctx, append([]string{"serve"}, args...)) }()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(stderr.String(), "http listening on") {
		select {
		case code := <-done:
			cancel()
			t.Fatalf("serve exited %d: %s", code, stderr.String())
		default:
		}
		require.True(t, time.Now().Before(deadline), "serve never listened: %s", stderr.String())
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	require.Equal(t, exitOK, <-done, stderr.String())
	return stderr.String()
}

// --print-config lists every flag of serve; uncommented as it is, it is a
// valid configuration file: the documentation is the flag set itself.
func TestServeConfig_PrintedFileListsEveryFlagAndStartsServe(t *testing.T) {
	r := runCLI(t, "", "serve", "--print-config")
	require.Zero(t, r.code, r.stderr)
	help := runCLI(t, "", "serve", "--help")
	for _, f := range regexp.MustCompile(`(?m)^  -([a-z-]+)`).FindAllStringSubmatch(help.stdout, -1) {
		if f[1] == configFlag || f[1] == printConfigFlag {
			assert.NotContains(t, r.stdout, "\n#"+f[1]+" =")
			continue
		}
		assert.Regexp(t, `(?m)^# env `+envName(f[1])+"\n#"+f[1]+"( =.*)?$", r.stdout, "flag --%s", f[1])
	}

	fileDir, envDir := t.TempDir(), t.TempDir()
	var conf strings.Builder
	for _, line := range strings.Split(r.stdout, "\n") {
		if key, _, ok := strings.Cut(strings.TrimPrefix(line, "#"), " ="); ok && strings.HasPrefix(line, "#") && !strings.Contains(key, " ") {
			switch key {
			case "data":
				line = "data = " + fileDir
			case "mqtt", "http":
				line = key + " = 127.0.0.1:0"
			default:
				line = strings.TrimPrefix(line, "#") // the default, uncommented
			}
		}
		conf.WriteString(line + "\n")
	}
	path := writeConfigFile(t, conf.String())
	out := serveUntilListening(t, map[string]string{"FLOTA_DATA": envDir}, "--config", path, "--http", "127.0.0.1:0")
	assert.Contains(t, out, "api admin token")
	_, err := os.Stat(filepath.Join(envDir, TokenFile))
	assert.NoError(t, err, "FLOTA_DATA beats the file's data")
	_, err = os.Stat(filepath.Join(fileDir, TokenFile))
	assert.ErrorIs(t, err, os.ErrNotExist)
}

func TestCLI_ServeConfigErrorExits2WithTheLine(t *testing.T) {
	path := writeConfigFile(t, "http = 127.0.0.1:0\nmqtt-tls-please = 1\n")
	r := runCLI(t, "", "serve", "--config", path)
	assert.Equal(t, exitUsage, r.code)
	assert.Contains(t, r.stderr, path+": line 2: unknown key \"mqtt-tls-please\"")
}

// --print-config prints defaults only: never a value from the environment,
// so that a secret there does not end up in a file.
func TestServeConfig_PrintedFileHoldsNoValueFromTheEnvironment(t *testing.T) {
	var out, errOut lockedBuffer
	env := map[string]string{"FLOTA_BROKER_PASSWORD": "s3cret-from-env", "FLOTA_LOG_LEVEL": "debug"}
	c := newCLI(&out, &errOut, func(k string) string { return env[k] })
	require.Equal(t, exitOK, c.run(context.Background(), []string{"serve", "--print-config"}), errOut.String())
	assert.NotContains(t, out.String(), "s3cret-from-env")
	assert.Contains(t, out.String(), "\n#broker-password =\n")
	assert.Contains(t, out.String(), "\n#log-level = info\n")
}
