package main

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/httpapi"
)

// fetchPoll is how often firmware add --url asks how its fetch goes.
const fetchPoll = time.Second

// StartFetch asks the server to fetch an image from a URL.
func (c *Client) StartFetch(ctx context.Context, req httpapi.FetchRequest) (httpapi.FetchJob, error) {
	var out httpapi.FetchJob
	return out, c.do(ctx, http.MethodPost, "/api/v1/firmware/fetches", nil, req, &out)
}

// FetchJob returns a fetch job.
func (c *Client) FetchJob(ctx context.Context, id string) (httpapi.FetchJob, error) {
	var out httpapi.FetchJob
	return out, c.do(ctx, http.MethodGet, "/api/v1/firmware/fetches/"+url.PathEscape(id), nil, nil, &out)
}

// CancelFetch cancels a fetch job and returns it ended.
func (c *Client) CancelFetch(ctx context.Context, id string) (httpapi.FetchJob, error) {
	var out httpapi.FetchJob
	return out, c.do(ctx, http.MethodPost, "/api/v1/firmware/fetches/"+url.PathEscape(id)+"/cancel", nil, nil, &out)
}

// wantsURL reports whether firmware add's arguments name --url.
func wantsURL(args []string) bool {
	for _, a := range args {
		if a == "--" {
			return false
		}
		if a == "--url" || a == "-url" || strings.HasPrefix(a, "--url=") || strings.HasPrefix(a, "-url=") {
			return true
		}
	}
	return false
}

// urlFlags are firmware add's flags of a fetch by URL.
type urlFlags struct {
	url, sha256, signature string
	noWait                 bool
}

func addURLFlags(fs *flag.FlagSet) *urlFlags {
	var u urlFlags
	fs.StringVar(&u.url, "url", "", "have the server fetch the image from this http(s) URL instead of uploading FILE")
	fs.StringVar(&u.sha256, "sha256", "", "with --url: the image's SHA-256 in hex; another image is discarded")
	fs.StringVar(&u.signature, "signature", "", "with --url: the image's base64 ed25519 signature over name, version, model, size, SHA-256 and allow_downgrade")
	fs.BoolVar(&u.noWait, "no-wait", false, "with --url: print the fetch job's ID and return at once")
	return &u
}

// firmwareFetch is firmware add --url: the server downloads the image; the
// command shows the progress until it is stored, then prints its ID (with
// --no-wait, the fetch job's ID at once).
func (c *cli) firmwareFetch(ctx context.Context, args []string) error {
	fs, sp := c.newFlags("firmware add")
	server := c.serverFlag(fs)
	var req httpapi.FetchRequest
	fs.StringVar(&req.Version, "version", "", "firmware version (required)")
	fs.StringVar(&req.Name, "name", "", "firmware name (default: the URL's file name)")
	fs.StringVar(&req.Model, "model", "", "device model the image is for (default: any)")
	fs.BoolVar(&req.AllowDowngrade, "allow-downgrade", false, "the signature permits installing over a newer version")
	fs.String("sign-key", "", "not with --url: give --signature")
	byURL := addURLFlags(fs)
	if _, err := c.parse(fs, sp, args); err != nil {
		return err
	}
	if err := required(sp, "version", req.Version); err != nil {
		return err
	}
	if fs.Lookup("sign-key").Value.String() != "" {
		return &usageError{msg: "--sign-key needs the file: with --url, give the image's --signature", spec: sp}
	}
	if err := fleet.CheckVersion(req.Version); err != nil {
		return &usageError{msg: "--version: " + invalidInput(err), spec: sp}
	}
	req.URL, req.SHA256, req.Signature = byURL.url, strings.ToLower(byURL.sha256), byURL.signature
	if req.Name == "" {
		if u, err := url.Parse(req.URL); err == nil && u.Path != "" {
			req.Name = u.Path[strings.LastIndex(u.Path, "/")+1:]
		}
	}
	if req.SHA256 == "" && req.Signature == "" {
		fmt.Fprintln(c.stderr, "warning: neither --sha256 nor --signature: nothing vouches for the bytes the server fetches")
	}
	cl := c.client(*server)
	job, err := cl.StartFetch(ctx, req)
	if err != nil {
		return err
	}
	if byURL.noWait {
		fmt.Fprintln(c.stdout, job.ID)
		return nil
	}
	tick := time.NewTicker(fetchPoll)
	defer tick.Stop()
	for job.State == httpapi.FetchRunning {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
		if job, err = cl.FetchJob(ctx, job.ID); err != nil {
			return err
		}
		fmt.Fprintf(c.stderr, "%s: %s\n", job.ID, fetchProgress(job))
	}
	if job.State != httpapi.FetchDone || job.Firmware == nil {
		return fmt.Errorf("fetch %s %s: %s", job.ID, job.State, termSafe(job.Error))
	}
	fmt.Fprintln(c.stdout, job.Firmware.ID)
	return nil
}

// fetchProgress is one line of a fetch's progress: bytes, total, rate.
func fetchProgress(j httpapi.FetchJob) string {
	total := "?"
	if j.Total >= 0 {
		total = humanBytes(j.Total)
	}
	return fmt.Sprintf("%s %s of %s, %s/s", j.State, humanBytes(j.Bytes), total, humanBytes(int64(j.Rate)))
}
