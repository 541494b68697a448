package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"unicode"
)

// serve's configuration comes from four places, the first that sets a flag
// winning: the command line, the environment (FLOTA_ and the flag's name in
// upper case, dashes as underscores: --log-level is FLOTA_LOG_LEVEL), a
// configuration file (--config FILE or $FLOTA_CONFIG) and the defaults.
// The file is lines of KEY = VALUE, KEY a flag's name without its dashes,
// parsed strictly: an unknown key, a key given twice or a bad value stops
// the start with the file's name and line. --print-config writes every flag
// with its help and default, commented out, so that the documentation of
// the file is the flag set itself and cannot drift from it.

// Names of the flags that choose the configuration; they cannot be set in
// the file or, but for the file's name, the environment.
const (
	configFlag      = "config"
	printConfigFlag = "print-config"
	// ConfigEnv names the configuration file when --config is not given.
	ConfigEnv = "FLOTA_CONFIG"
)

// configChoice is what the command line said about the configuration.
type configChoice struct {
	file  string
	print bool
}

// addConfigFlags adds --config and --print-config to fs.
func addConfigFlags(fs *flag.FlagSet) *configChoice {
	c := &configChoice{}
	fs.StringVar(&c.file, configFlag, "", "configuration `file` of KEY = VALUE lines, KEY a flag without dashes (default $"+ConfigEnv+"); flags and FLOTA_<FLAG> variables override it")
	fs.BoolVar(&c.print, printConfigFlag, false, "print a configuration file with every flag, its help and its default, and exit")
	return c
}

// envName returns the environment variable of flag name: log-level is
// FLOTA_LOG_LEVEL.
func envName(name string) string {
	return "FLOTA_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// applyConfig sets every flag of fs that the command line did not: from
// the environment, else from the configuration file, if any. Errors name
// the variable, or the file and line.
func applyConfig(fs *flag.FlagSet, getenv func(string) string, choice *configChoice) error {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	path := choice.file
	if !given[configFlag] {
		path = getenv(ConfigEnv)
	}
	var file map[string]configLine
	if path != "" {
		var err error
		if file, err = readConfigFile(fs, path); err != nil {
			return err
		}
	}
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if err != nil || given[f.Name] || f.Name == configFlag || f.Name == printConfigFlag {
			return
		}
		if v := getenv(envName(f.Name)); v != "" {
			if serr := fs.Set(f.Name, v); serr != nil {
				err = fmt.Errorf("$%s: %w", envName(f.Name), serr)
			}
			return
		}
		if l, ok := file[f.Name]; ok {
			if serr := fs.Set(f.Name, l.value); serr != nil {
				err = fmt.Errorf("config %s: line %d: %s: %w", path, l.n, f.Name, serr)
			}
		}
	})
	return err
}

// secretKey is the one flag that holds a secret; a file that sets it must
// not be readable by every user.
const secretKey = "broker-password"

// configLine is a value of the file and its line number.
type configLine struct {
	value string
	n     int
}

// maxConfigSize bounds the configuration file: a few hundred lines.
const maxConfigSize = 1 << 20

// readConfigFile reads the configuration file at path against fs's flags.
func readConfigFile(fs *flag.FlagSet, path string) (map[string]configLine, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	lines, err := parseConfig(fs, io.LimitReader(f, maxConfigSize+1))
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	if l, ok := lines[secretKey]; ok {
		if st, err := f.Stat(); err == nil && st.Mode().Perm()&0o007 != 0 {
			return nil, fmt.Errorf("config %s: line %d: %s in a file every user can read (mode %v); chmod o-rwx it", path, l.n, secretKey, st.Mode().Perm())
		}
	}
	return lines, nil
}

// parseConfig parses KEY = VALUE lines. Blank lines and lines whose first
// non-blank character is # are skipped; there are no comments after a
// value. VALUE is the rest of the line without surrounding blanks, or a Go
// double-quoted string (for a value with surrounding blanks or a #: an
// unquoted one is refused, since it is most likely a comment). KEY
// must name a flag of fs other than --config and --print-config.
func parseConfig(fs *flag.FlagSet, r io.Reader) (map[string]configLine, error) {
	out := map[string]configLine{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), maxConfigSize)
	size := 0
	for n := 1; sc.Scan(); n++ {
		size += len(sc.Bytes()) + 1
		if size > maxConfigSize {
			return nil, fmt.Errorf("larger than %d bytes", maxConfigSize)
		}
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		key, value, ok := strings.Cut(line, "=")
		key, value = strings.TrimSpace(key), strings.TrimSpace(value)
		if !ok || key == "" {
			return nil, fmt.Errorf("line %d: want KEY = VALUE", n)
		}
		if strings.HasPrefix(key, "-") {
			return nil, fmt.Errorf("line %d: key %q: write flags without their dashes", n, key)
		}
		if fs.Lookup(key) == nil || key == configFlag || key == printConfigFlag {
			return nil, fmt.Errorf("line %d: unknown key %.64q (keys are serve's flags; orchestrator serve --print-config lists them)", n, key)
		}
		if prev, dup := out[key]; dup {
			return nil, fmt.Errorf("line %d: %s is set already on line %d", n, key, prev.n)
		}
		if strings.HasPrefix(value, `"`) {
			uq, err := strconv.Unquote(value)
			if err != nil {
				return nil, fmt.Errorf("line %d: %s: bad quoted value", n, key)
			}
			value = uq
		} else if strings.Contains(value, "#") {
			// A string flag would take a trailing comment as part of
			// its value: an address, a path or a user name that then
			// fails far from here, or not at all.
			return nil, fmt.Errorf(`line %d: %s: a # in a value must be quoted ("…#…"); comments go on lines of their own`, n, key)
		}
		out[key] = configLine{value: value, n: n}
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return nil, fmt.Errorf("larger than %d bytes", maxConfigSize)
		}
		return nil, err
	}
	return out, nil
}

// writeConfig writes a configuration file with every flag of fs but
// --config and --print-config, commented out at its default, with its help
// and its environment variable.
func writeConfig(w io.Writer, fs *flag.FlagSet) error {
	bw := bufio.NewWriter(w)
	fmt.Fprint(bw, `# Configuration of orchestrator serve: orchestrator serve --config FILE
# (or FLOTA_CONFIG=FILE). Lines of KEY = VALUE, KEY a flag of serve without
# its dashes; a value with surrounding blanks or a # is written in Go double
# quotes. Every line below is commented out at its default: uncomment and
# change the ones you need. An unknown key stops the start.
# Precedence: a flag on the command line, then the environment variable
# named on each entry, then this file, then the default.
# Written by: orchestrator serve --print-config
`)
	fs.VisitAll(func(f *flag.Flag) {
		if f.Name == configFlag || f.Name == printConfigFlag {
			return
		}
		_, usage := flag.UnquoteUsage(f)
		usage = strings.ReplaceAll(usage, "\n", "\n# ")
		fmt.Fprintf(bw, "\n# %s\n# env %s\n%s\n", usage, envName(f.Name), strings.TrimRight("#"+f.Name+" = "+configValue(f.DefValue), " "))
	})
	return bw.Flush()
}

// configValue writes v as parseConfig reads it back.
func configValue(v string) string {
	if v != strings.TrimFunc(v, unicode.IsSpace) || strings.ContainsAny(v, "#\"\n") {
		return strconv.Quote(v)
	}
	return v
}
