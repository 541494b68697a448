package main

import (
	"flag"
	"fmt"
	"time"

	"github.com/flotaio/flota/internal/httpapi"
	"github.com/flotaio/flota/internal/urlfetch"
)

// fetchCredentialsEnv holds the artifact stores' credentials, in the
// format of --fetch-credentials-file, when no file is named.
const fetchCredentialsEnv = "FLOTA_FETCH_CREDENTIALS"

// FetchConfig configures the firmware the orchestrator fetches from URLs
// (POST /api/v1/firmware/fetches, firmware add --url).
type FetchConfig struct {
	// Allow lists the hosts and networks a fetch may reach although they
	// are loopback, link-local or private (urlfetch.ParsePolicy).
	Allow string
	// CredentialsFile holds lines of HOST bearer TOKEN or HOST basic
	// USER:PASSWORD (urlfetch.ParseCredentials); EnvCredentials is the
	// same text from $FLOTA_FETCH_CREDENTIALS, used without a file.
	CredentialsFile string
	EnvCredentials  string
	ConnectTimeout  time.Duration
	ReadTimeout     time.Duration
	Attempts        int
	Backoff         time.Duration
	// MaxFetches bounds the fetches running at once (0: the default).
	MaxFetches int
}

func fetchFlags(fs *flag.FlagSet, c *FetchConfig) {
	fs.StringVar(&c.Allow, "fetch-allow", "", "hosts and networks firmware may be fetched from although loopback, link-local or private, comma-separated: 10.0.0.0/8,artifacts.internal")
	fs.StringVar(&c.CredentialsFile, "fetch-credentials-file", "", "artifact store credentials, lines of HOST bearer TOKEN or HOST basic USER:PASSWORD, each sent to its host only (default: $"+fetchCredentialsEnv+")")
	fs.DurationVar(&c.ConnectTimeout, "fetch-connect-timeout", urlfetch.DefaultConnectTimeout, "firmware fetch: TCP and TLS connection timeout")
	fs.DurationVar(&c.ReadTimeout, "fetch-read-timeout", urlfetch.DefaultReadTimeout, "firmware fetch: longest wait for the answer's headers or for the next bytes")
	fs.IntVar(&c.Attempts, "fetch-attempts", urlfetch.DefaultAttempts, "firmware fetch: requests per fetch on transient errors, resumed with Range where the server allows")
	fs.DurationVar(&c.Backoff, "fetch-backoff", urlfetch.DefaultBackoff, "firmware fetch: pause before the second attempt, doubled for each next one up to 30s")
	fs.IntVar(&c.MaxFetches, "max-fetches", httpapi.DefaultMaxFetches, "firmware fetches running at once; more are refused with 503")
}

// options checks the configuration and returns the fetcher's options.
func (c FetchConfig) options() (urlfetch.Options, error) {
	policy, err := urlfetch.ParsePolicy(c.Allow)
	if err != nil {
		return urlfetch.Options{}, err
	}
	creds := urlfetch.Credentials{}
	switch {
	case c.CredentialsFile != "":
		if creds, err = urlfetch.ReadCredentials(c.CredentialsFile); err != nil {
			return urlfetch.Options{}, fmt.Errorf("--fetch-credentials-file: %w", err)
		}
	case c.EnvCredentials != "":
		if creds, err = urlfetch.ParseCredentials(c.EnvCredentials); err != nil {
			return urlfetch.Options{}, fmt.Errorf("$%s: %w", fetchCredentialsEnv, err)
		}
	}
	if c.Attempts < 0 || c.MaxFetches < 0 || c.ConnectTimeout < 0 || c.ReadTimeout < 0 || c.Backoff < 0 {
		return urlfetch.Options{}, fmt.Errorf("--fetch-* and --max-fetches must not be negative")
	}
	return urlfetch.Options{Policy: policy, Credentials: creds, ConnectTimeout: c.ConnectTimeout,
		ReadTimeout: c.ReadTimeout, Attempts: c.Attempts, Backoff: c.Backoff}, nil
}
