package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/flotaio/flota/broker"
	"github.com/flotaio/flota/internal/auth"
)

// securityFlags adds serve's security flags.
func securityFlags(fs *flag.FlagSet, c *Config) {
	fs.BoolVar(&c.AllowAnonymous, "allow-anonymous", false, "DEVELOPMENT ONLY: accept MQTT clients without credentials, as the device named by their client ID")
	fs.StringVar(&c.EnrollTokenFile, "enroll-token-file", "", "file holding the fleet enrollment token: unknown devices presenting it register as pending")
	fs.BoolVar(&c.AutoApprove, "auto-approve", false, "enrolled devices are active at once instead of pending (needs --enroll-token-file)")
	fs.StringVar(&c.MQTTTLSAddr, "mqtt-tls", "", "MQTT over TLS listen address, HOST:PORT (needs --tls-cert and --tls-key)")
	fs.StringVar(&c.TLSCert, "tls-cert", "", "PEM server certificate of --mqtt-tls")
	fs.StringVar(&c.TLSKey, "tls-key", "", "PEM key of --tls-cert")
	fs.StringVar(&c.TLSClientCA, "tls-client-ca", "", "PEM CA of client certificates: mutual TLS on --mqtt-tls, certificate common name = client ID")
	fs.Float64Var(&c.RateLimit, "mqtt-rate-limit", 0, "messages per second one MQTT client may publish; over it they are dropped (0: default 10000, -1: no limit)")
	fs.IntVar(&c.RateBurst, "mqtt-rate-burst", 0, "burst of --mqtt-rate-limit (0: default 10000)")
	fs.IntVar(&c.ConnectRate, "mqtt-connect-rate", 0, "connections one MQTT client ID may make per minute; over it they are refused for --mqtt-connect-ban (0: default 30, -1: no limit)")
	fs.DurationVar(&c.ConnectBan, "mqtt-connect-ban", 0, "how long a client ID over --mqtt-connect-rate is refused (0: default 1m)")
}

// checkSecurity validates the combination of security flags.
func (c *Config) checkSecurity() error {
	if c.Broker != "" && (c.AllowAnonymous || c.EnrollTokenFile != "" || c.MQTTTLSAddr != "" || c.RateLimit != 0) {
		return errors.New("--allow-anonymous, --enroll-token-file, --mqtt-tls and --mqtt-rate-limit configure the embedded broker, not --broker")
	}
	if c.Broker != "" && (c.ConnectRate != 0 || c.ConnectBan != 0) {
		return errors.New("--mqtt-connect-rate and --mqtt-connect-ban configure the embedded broker, not --broker")
	}
	if c.ConnectBan < 0 {
		return errors.New("--mqtt-connect-ban must not be negative")
	}
	if c.AutoApprove && c.EnrollTokenFile == "" {
		return errors.New("--auto-approve needs --enroll-token-file")
	}
	if (c.MQTTTLSAddr == "") != (c.TLSCert == "" && c.TLSKey == "") || (c.MQTTTLSAddr != "" && (c.TLSCert == "" || c.TLSKey == "")) {
		return errors.New("--mqtt-tls, --tls-cert and --tls-key go together")
	}
	if c.TLSClientCA != "" && c.MQTTTLSAddr == "" {
		return errors.New("--tls-client-ca needs --mqtt-tls")
	}
	return nil
}

// enrollToken reads the enrollment token file, if any.
func (c *Config) enrollToken() (string, error) {
	if c.EnrollTokenFile == "" {
		return "", nil
	}
	b, err := os.ReadFile(c.EnrollTokenFile)
	if err != nil {
		return "", fmt.Errorf("enrollment token: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if len(tok) < auth.MinSecretLen || strings.ContainsAny(tok, ": \t\r\n") {
		return "", fmt.Errorf("enrollment token in %s: want at least %d characters, no ':' or spaces (such as the output of: openssl rand -hex 16)", c.EnrollTokenFile, auth.MinSecretLen)
	}
	return tok, nil
}

// tlsConfig loads the TLS listener's certificate and client CA, or returns
// nil without --mqtt-tls.
func (c *Config) tlsConfig() (*tls.Config, error) {
	if c.MQTTTLSAddr == "" {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(c.TLSCert, c.TLSKey)
	if err != nil {
		return nil, fmt.Errorf("tls certificate: %w", err)
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	if c.TLSClientCA != "" {
		pem, err := os.ReadFile(c.TLSClientCA)
		if err != nil {
			return nil, fmt.Errorf("tls client CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls client CA %s holds no PEM certificate", c.TLSClientCA)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// anonymousWarning is logged at every start with --allow-anonymous.
const anonymousWarning = "MQTT AUTHENTICATION IS OFF (--allow-anonymous): anyone who reaches the broker can connect as any device without an account and report progress for it; development only"

// brokerOptions builds the embedded broker's options and m.Accounts, which
// authenticates its connections.
func (m *Main) brokerOptions() (broker.Options, error) {
	c := &m.Config
	if err := c.checkSecurity(); err != nil {
		return broker.Options{}, err
	}
	tok, err := c.enrollToken()
	if err != nil {
		return broker.Options{}, err
	}
	tlsCfg, err := c.tlsConfig()
	if err != nil {
		return broker.Options{}, err
	}
	m.Accounts = &auth.Accounts{
		Store:          m.Store,
		AllowAnonymous: c.AllowAnonymous,
		EnrollToken:    tok,
		AutoApprove:    c.AutoApprove,
	}
	if c.AllowAnonymous {
		m.Logger.Warn(anonymousWarning)
	}
	opts := broker.Options{
		Addr:         c.MQTTAddr,
		Window:       c.Window,
		Logger:       m.Logger.With("component", "broker"),
		Authenticate: m.Accounts.Authenticate,
		RateLimit:    c.RateLimit,
		RateBurst:    c.RateBurst,
		ConnectRate:  c.ConnectRate,
		ConnectBan:   c.ConnectBan,
		Topics:       c.TopicLimits,
		TLSAddr:      c.MQTTTLSAddr,
		TLSConfig:    tlsCfg,
		LogLimit:     c.LogLimit,
	}
	if err := c.Conns.apply(&opts); err != nil {
		return broker.Options{}, err
	}
	return opts, nil
}
