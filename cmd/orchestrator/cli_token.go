package main

import (
	"flag"
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/flotaio/flota/internal/httpapi"
)

// tokenFlag adds --token to an operator command; client falls back to
// $FLOTA_TOKEN. The flag has no default so that --help never shows a token.
func (c *cli) tokenFlag(fs *flag.FlagSet) {
	fs.StringVar(&c.token, "token", "", "HTTP API token (default $FLOTA_TOKEN); changes need an admin token")
}

// client returns a client of the API at server with the command's token.
func (c *cli) client(server string) *Client {
	cl := NewClient(server)
	cl.Token = c.token
	if cl.Token == "" {
		cl.Token = c.getenv("FLOTA_TOKEN")
	}
	return cl
}

// tokenNew makes a token: the token goes to stdout, the line for a token
// file (its hash, not the token) to stderr.
func (c *cli) tokenNew(args []string) error {
	fs, sp := c.newFlags("token new")
	name := fs.String("name", "", "name of the token's holder, named when the token is refused a change (required)")
	scope := fs.String("scope", "read", "read (GET, the event stream, /metrics) or admin (everything)")
	if _, err := c.parse(fs, sp, args); err != nil {
		return err
	}
	if err := required(sp, "name", *name); err != nil {
		return err
	}
	if strings.ContainsAny(*name, " \t\r\n#") {
		return &usageError{msg: "--name must not contain spaces or #", spec: sp}
	}
	if _, err := httpapi.ParseScope(*scope); err != nil {
		return &usageError{msg: "--scope: " + err.Error(), spec: sp}
	}
	token := httpapi.NewToken()
	fmt.Fprintln(c.stdout, token)
	fmt.Fprintf(c.stderr, "%s %s %s\n", *name, *scope, httpapi.HashToken(token))
	return nil
}

// sizeFlag64 is a byte count with an optional suffix: KB, MB, GB (powers
// of 1000), KiB, MiB, GiB (powers of 1024), k and K (1024).
type sizeFlag64 int64

func (f *sizeFlag64) String() string {
	if f == nil {
		return ""
	}
	return strconv.FormatInt(int64(*f), 10)
}

func (f *sizeFlag64) Set(s string) error {
	n, err := parseSize64(s)
	if err != nil {
		return err
	}
	*f = sizeFlag64(n)
	return nil
}

// parseSize64 reads a positive byte count with an optional unit: KiB, MiB,
// GiB (k and K for KiB), or KB, MB, GB as powers of 1000, or B.
func parseSize64(s string) (int64, error) {
	num, mult := strings.TrimSpace(s), int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"k", 1 << 10}, {"K", 1 << 10}, {"B", 1}} {
		if v, ok := strings.CutSuffix(num, u.suffix); ok {
			num, mult = v, u.mult
			break
		}
	}
	n, err := strconv.ParseInt(strings.TrimSpace(num), 10, 64)
	if err != nil || n <= 0 || n > math.MaxInt64/mult {
		return 0, fmt.Errorf("%q: want a positive byte count such as 268435456, 256MiB or 1GB", s)
	}
	return n * mult, nil
}
