package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

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

// tokenNew makes a token. With NAME, the server makes and keeps it (its
// hash, in the database): the token goes to stdout, shown this once. With
// --name instead, it is made here for the token file: the token goes to
// stdout and the file's line (its hash, not the token) to stderr.
func (c *cli) tokenNew(ctx context.Context, args []string) error {
	fs, sp := c.newFlags("token new")
	server := c.serverFlag(fs)
	role := fs.String("role", "", "read (GET, the event stream, /metrics) or admin (everything) (required with NAME)")
	expires := fs.String("expires", "", "lifetime of the token, such as 720h or 90d (default: never expires)")
	asJSON := fs.Bool("json", false, "print JSON (the token included)")
	name := fs.String("name", "", "offline, for the token file: name of the token's holder")
	scope := fs.String("scope", "read", "offline, for the token file: read or admin")
	pos, err := parseInterleaved(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		c.usage(c.stdout, fs, sp)
		return err
	}
	if err != nil {
		return &usageError{msg: err.Error(), spec: sp}
	}
	switch {
	case len(pos) > 1:
		return &usageError{msg: fmt.Sprintf("unexpected argument %q", pos[1]), spec: sp}
	case len(pos) == 1 && *name != "":
		return &usageError{msg: "give NAME (a token the server keeps) or --name (a line for the token file), not both", spec: sp}
	case len(pos) == 0 && *name == "":
		return &usageError{msg: "missing NAME", spec: sp}
	case len(pos) == 0:
		return c.tokenForFile(sp, *name, *scope)
	}
	if *role == "" {
		return &usageError{msg: "--role is required: read or admin", spec: sp}
	}
	if _, err := httpapi.ParseScope(*role); err != nil {
		return &usageError{msg: "--role: " + strings.Replace(err.Error(), "scope", "role", 1), spec: sp}
	}
	req := httpapi.CreateTokenRequest{Name: pos[0], Role: *role}
	if *expires != "" {
		d, err := parseLifetime(*expires)
		if err != nil {
			return &usageError{msg: "--expires: " + err.Error(), spec: sp}
		}
		at := time.Now().Add(d).UTC()
		req.ExpiresAt = &at
	}
	var out httpapi.NewAPIToken
	if err := c.client(*server).do(ctx, http.MethodPost, "/api/v1/tokens", nil, req, &out); err != nil {
		return err
	}
	if *asJSON {
		return c.printJSON(out)
	}
	until := "never expires"
	if out.ExpiresAt != nil {
		until = "expires " + tableTime(*out.ExpiresAt)
	}
	fmt.Fprintf(c.stderr, "%s token %s created (%s); it follows and is shown only this once\n", out.Role, out.Name, until)
	fmt.Fprintln(c.stdout, out.Token)
	return nil
}

// tokenForFile makes a token for the token file, without a server.
func (c *cli) tokenForFile(sp *spec, name, scope string) error {
	if strings.ContainsAny(name, " \t\r\n#") {
		return &usageError{msg: "--name must not contain spaces or #", spec: sp}
	}
	if _, err := httpapi.ParseScope(scope); err != nil {
		return &usageError{msg: "--scope: " + err.Error(), spec: sp}
	}
	token := httpapi.NewToken()
	fmt.Fprintln(c.stdout, token)
	fmt.Fprintf(c.stderr, "%s %s %s\n", name, scope, httpapi.HashToken(token))
	return nil
}

// parseLifetime reads a positive duration: Go's (720h, 90m) or whole days
// (90d).
func parseLifetime(s string) (time.Duration, error) {
	var d time.Duration
	if n, ok := strings.CutSuffix(s, "d"); ok {
		days, err := strconv.Atoi(n)
		if err != nil || days <= 0 || days > 100*365 {
			return 0, fmt.Errorf("%q: want a positive number of days such as 90d, or a duration such as 720h", s)
		}
		d = time.Duration(days) * 24 * time.Hour
	} else {
		var err error
		if d, err = time.ParseDuration(s); err != nil || d <= 0 {
			return 0, fmt.Errorf("%q: want a positive duration such as 720h, or days such as 90d", s)
		}
	}
	return d, nil
}

func (c *cli) tokenList(ctx context.Context, args []string) error {
	fs, sp := c.newFlags("token list")
	server := c.serverFlag(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	if _, err := c.parse(fs, sp, args); err != nil {
		return err
	}
	var out httpapi.APITokenList
	if err := c.client(*server).do(ctx, http.MethodGet, "/api/v1/tokens", nil, nil, &out); err != nil {
		return err
	}
	if *asJSON {
		return c.printJSON(out.Tokens)
	}
	when := func(t *time.Time, none string) string {
		if t == nil {
			return none
		}
		return tableTime(*t)
	}
	now := time.Now()
	t := newTable(c.stdout, "NAME", "ROLE", "SOURCE", "CREATED", "LAST USED", "EXPIRES")
	for _, e := range out.Tokens {
		exp := when(e.ExpiresAt, "never")
		if e.ExpiresAt != nil && !now.Before(*e.ExpiresAt) {
			exp += " (expired)"
		}
		t.row(e.Name, e.Role, e.Source, when(e.CreatedAt, "-"), when(e.LastUsedAt, "never"), exp)
	}
	return t.flush()
}

func (c *cli) tokenRevoke(ctx context.Context, args []string) error {
	fs, sp := c.newFlags("token revoke")
	server := c.serverFlag(fs)
	pos, err := c.parse(fs, sp, args, "NAME")
	if err != nil {
		return err
	}
	var out httpapi.APITokenInfo
	if err := c.client(*server).do(ctx, http.MethodPost, "/api/v1/tokens/"+url.PathEscape(pos[0])+"/revoke", nil, nil, &out); err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "token %s revoked\n", out.Name)
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
