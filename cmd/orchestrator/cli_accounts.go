package main

import (
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/flotaio/flota/internal/auth"
	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/httpapi"
)

// accountCommands are the commands that manage MQTT accounts; they are part
// of commands.
var accountCommands = []*spec{
	{name: "device add", args: "ID [--model M] [--tag k=v]... [--json]",
		summary: "create a device's MQTT account and print its secret (its MQTT password), shown this once",
		example: "orchestrator device add sensor-0001 --model sensor-v2 --tag site=lyon"},
	{name: "device provision", args: "--prefix P --count N --out FILE [--model M] [--tag k=v]...",
		summary: "create accounts for devices P00001..PN and write their secrets to a new CSV file (id,secret) for flashing or devicesim --credentials",
		example: "orchestrator device provision --prefix sim- --count 1000 --out creds.csv"},
	{name: "device approve", args: "ID", summary: "let a pending (enrolled) device connect",
		example: "orchestrator device approve sensor-0042"},
	{name: "device revoke", args: "ID", summary: "refuse a device from now on and disconnect it at once",
		example: "orchestrator device revoke sensor-0042"},
	{name: "device accounts", args: "[--status pending|active|revoked] [--json]", summary: "list device accounts (pending ones await approval)",
		example: "orchestrator device accounts --status pending"},
	{name: "monitor add", args: "NAME [--replace] [--out FILE] [--json]",
		summary: "create a read-only MQTT account (flota/events/#, flota/status/#) and print its secret, shown this once; --out writes it as mosquitto_sub options instead, --replace first revokes an account of that name",
		example: "orchestrator monitor add grafana --replace --out ~/.config/mosquitto_sub    # then: mosquitto_sub -t 'flota/events/#'"},
	{name: "monitor revoke", args: "NAME", summary: "refuse a monitor from now on and disconnect it at once",
		example: "orchestrator monitor revoke grafana"},
	{name: "monitor list", args: "[--json]", summary: "list monitor accounts",
		example: "orchestrator monitor list"},
}

// accountCommand runs an account command; ok is false for another command.
func (c *cli) accountCommand(ctx context.Context, sub string, args []string) (ok bool, err error) {
	switch sub {
	case "device add":
		return true, c.deviceAdd(ctx, args)
	case "device provision":
		return true, c.deviceProvision(ctx, args)
	case "device approve":
		return true, c.accountChange(ctx, sub, "approve", "devices", args)
	case "device revoke":
		return true, c.accountChange(ctx, sub, "revoke", "devices", args)
	case "monitor revoke":
		return true, c.accountChange(ctx, sub, "revoke", "monitors", args)
	case "device accounts":
		return true, c.accountList(ctx, sub, fleet.RoleDevice, args)
	case "monitor list":
		return true, c.accountList(ctx, sub, fleet.RoleMonitor, args)
	case "monitor add":
		return true, c.monitorAdd(ctx, args)
	}
	return false, nil
}

// tagFlag is a repeatable --tag k=v.
type tagFlag map[string]string

func (f tagFlag) String() string { return formatTags(f) }

func (f tagFlag) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("tag %q: want key=value", s)
	}
	f[k] = v
	return nil
}

func (c *cli) deviceAdd(ctx context.Context, args []string) error {
	fs, sp := c.newFlags("device add")
	server := c.serverFlag(fs)
	model := fs.String("model", "", "device model")
	tags := tagFlag{}
	fs.Var(tags, "tag", "device tag key=value (repeatable)")
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := c.parse(fs, sp, args, "ID")
	if err != nil {
		return err
	}
	if err := fleet.CheckDeviceID(pos[0]); err != nil {
		return &usageError{msg: invalidInput(err), spec: sp}
	}
	var out httpapi.CredentialList
	req := httpapi.AddDeviceRequest{ID: pos[0], Model: *model, Tags: tags}
	if err := c.client(*server).do(ctx, http.MethodPost, "/api/v1/devices", nil, req, &out); err != nil {
		return err
	}
	return c.printSecret(out, *asJSON)
}

func (c *cli) monitorAdd(ctx context.Context, args []string) error {
	fs, sp := c.newFlags("monitor add")
	server := c.serverFlag(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	replace := fs.Bool("replace", false, "revoke an account of this name first (its secret stops working), so the command can run again")
	outFile := fs.String("out", "", "write the account as mosquitto_sub options (-i, -u, -P lines, mode 0600) to this file instead of printing the secret; "+
		"mosquitto_sub reads $XDG_CONFIG_HOME/mosquitto_sub, so the secret never appears on a command line")
	pos, err := c.parse(fs, sp, args, "NAME")
	if err != nil {
		return err
	}
	if *outFile != "" && *asJSON {
		return &usageError{msg: "--out and --json exclude each other", spec: sp}
	}
	client := c.client(*server)
	if *replace {
		path := "/api/v1/monitors/" + url.PathEscape(pos[0]) + "/revoke"
		var apiErr *APIError
		if err := client.do(ctx, http.MethodPost, path, nil, nil, nil); err != nil && !(errors.As(err, &apiErr) && apiErr.Status == http.StatusNotFound) {
			return err
		}
	}
	var out httpapi.CredentialList
	if err := client.do(ctx, http.MethodPost, "/api/v1/monitors", nil, httpapi.AddMonitorRequest{Name: pos[0]}, &out); err != nil {
		return err
	}
	if *outFile != "" {
		return c.writeMosquittoOptions(out, *outFile)
	}
	return c.printSecret(out, *asJSON)
}

// writeMosquittoOptions writes the one new account as the options file of
// mosquitto's clients (one "-option value" per line), readable by its owner
// only. A secret on a command line is visible to every user in ps.
func (c *cli) writeMosquittoOptions(out httpapi.CredentialList, path string) error {
	if len(out.Credentials) != 1 {
		return fmt.Errorf("server returned %d accounts, want 1", len(out.Credentials))
	}
	cr := out.Credentials[0]
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if err := f.Chmod(0o600); err != nil { // a file that existed keeps its mode otherwise
		_ = f.Close()
		return err
	}
	_, err = fmt.Fprintf(f, "-i %s\n-u %s\n-P %s\n", cr.ID, cr.ID, cr.Secret)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	hint := "mosquitto_sub reads such a file as $XDG_CONFIG_HOME/mosquitto_sub"
	if filepath.Base(path) == "mosquitto_sub" {
		hint = "XDG_CONFIG_HOME=" + filepath.Dir(path) + " mosquitto_sub -t 'flota/events/#' -v"
	}
	fmt.Fprintf(c.stderr, "account %s created; its MQTT options (-i, -u, -P) are in %s (%s)\n", cr.ID, path, hint)
	return nil
}

// printSecret prints the one new account's secret alone on stdout (so that
// SECRET=$(orchestrator device add ID) works), with a note on stderr.
func (c *cli) printSecret(out httpapi.CredentialList, asJSON bool) error {
	if len(out.Credentials) != 1 {
		return fmt.Errorf("server returned %d accounts, want 1", len(out.Credentials))
	}
	cr := out.Credentials[0]
	if asJSON {
		return c.printJSON(cr)
	}
	fmt.Fprintf(c.stderr, "account %s created; its MQTT password follows and is shown only this once (username and client ID: %s)\n", cr.ID, cr.ID)
	fmt.Fprintln(c.stdout, cr.Secret)
	return nil
}

func (c *cli) deviceProvision(ctx context.Context, args []string) error {
	fs, sp := c.newFlags("device provision")
	server := c.serverFlag(fs)
	prefix := fs.String("prefix", "", "device ID prefix; IDs are the prefix and a 5-digit number from 00001 (required)")
	count := fs.Int("count", 0, fmt.Sprintf("number of devices, 1..%d (required)", auth.MaxProvision))
	outFile := fs.String("out", "", "CSV file to create, header id,secret, mode 0600 (required; never overwritten)")
	model := fs.String("model", "", "device model")
	tags := tagFlag{}
	fs.Var(tags, "tag", "device tag key=value (repeatable)")
	if _, err := c.parse(fs, sp, args); err != nil {
		return err
	}
	if err := required(sp, "out", *outFile); err != nil {
		return err
	}
	if *count < 1 || *count > auth.MaxProvision {
		return &usageError{msg: fmt.Sprintf("--count must be 1..%d", auth.MaxProvision), spec: sp}
	}
	// Create the file first: a secret that cannot be written is lost.
	f, err := os.OpenFile(*outFile, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("credentials file: %w", err)
	}
	var out httpapi.CredentialList
	req := httpapi.ProvisionRequest{Prefix: *prefix, Count: *count, Model: *model, Tags: tags}
	if err := c.client(*server).do(ctx, http.MethodPost, "/api/v1/devices/provision", nil, req, &out); err != nil {
		f.Close()
		os.Remove(*outFile)
		return err
	}
	if err := writeCredentials(f, out.Credentials); err != nil {
		return fmt.Errorf("write %s: %w (the accounts exist; revoke them or provision another prefix)", *outFile, err)
	}
	fmt.Fprintf(c.stderr, "%d device accounts created; secrets in %s\n", len(out.Credentials), *outFile)
	return nil
}

// writeCredentials writes the id,secret CSV and closes f.
func writeCredentials(f *os.File, creds []auth.Issued) error {
	w := csv.NewWriter(f)
	_ = w.Write([]string{"id", "secret"}) // errors are kept by w and reported by Error
	for _, cr := range creds {
		_ = w.Write([]string{cr.ID, cr.Secret})
	}
	w.Flush()
	if err := w.Error(); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// accountChange approves or revokes an account.
func (c *cli) accountChange(ctx context.Context, name, op, coll string, args []string) error {
	fs, sp := c.newFlags(name)
	server := c.serverFlag(fs)
	pos, err := c.parse(fs, sp, args, "ID")
	if err != nil {
		return err
	}
	var out fleet.Credential
	path := "/api/v1/" + coll + "/" + url.PathEscape(pos[0]) + "/" + op
	if err := c.client(*server).do(ctx, http.MethodPost, path, nil, nil, &out); err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "%s %s: %s\n", out.Role, out.ID, out.Status)
	return nil
}

func (c *cli) accountList(ctx context.Context, name string, role fleet.Role, args []string) error {
	fs, sp := c.newFlags(name)
	server := c.serverFlag(fs)
	status := ""
	if role == fleet.RoleDevice {
		fs.StringVar(&status, "status", "", "only accounts in this status: pending, active or revoked")
	}
	asJSON := fs.Bool("json", false, "print JSON")
	if _, err := c.parse(fs, sp, args); err != nil {
		return err
	}
	q := url.Values{"role": {string(role)}}
	setNonEmpty(q, "status", status)
	var out httpapi.AccountList
	if err := c.client(*server).do(ctx, http.MethodGet, "/api/v1/credentials", q, nil, &out); err != nil {
		return err
	}
	if *asJSON {
		return c.printJSON(out.Accounts)
	}
	t := newTable(c.stdout, "ID", "STATUS", "CREATED", "CHANGED")
	for _, a := range out.Accounts {
		t.row(a.ID, a.Status, tableTime(a.CreatedAt), tableTime(a.UpdatedAt))
	}
	return t.flush()
}
