package main

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/flotaio/flota/agent"
	"github.com/flotaio/flota/mqttclient"
)

// security is how the simulated devices authenticate: per-device secrets
// from --credentials, the fleet enrollment token, and TLS.
type security struct {
	secrets map[string]string // device ID -> secret, from --credentials
	token   string            // --enroll-token
	tls     *tls.Config       // for ssl:// brokers; nil for tcp://
	cert    string            // --cert, may contain {id}
	key     string            // --key, may contain {id}
}

// loadSecurity reads the credentials file and the TLS files. Each device
// keeps its own ID (--id-prefix and a number, as always); with
// --credentials, every one of them must have a row in the file.
func loadSecurity(o options) (*security, error) {
	s := &security{token: o.enrollToken, cert: o.certFile, key: o.keyFile}
	if o.credentials != "" {
		secrets, err := readCredentials(o.credentials)
		if err != nil {
			return nil, err
		}
		for i := 1; i <= o.devices; i++ {
			if id := deviceID(o.idPrefix, i); secrets[id] == "" && o.enrollToken == "" {
				return nil, usagef("--credentials %s has no secret for device %s (IDs are --id-prefix %q and 00001..%05d)",
					o.credentials, id, o.idPrefix, o.devices)
			}
		}
		s.secrets = secrets
	}
	if strings.HasPrefix(o.broker, "ssl://") || strings.HasPrefix(o.broker, "tls://") || strings.HasPrefix(o.broker, "mqtts://") {
		if (o.certFile == "") != (o.keyFile == "") {
			return nil, usagef("--cert and --key go together")
		}
		base, err := mqttclient.LoadTLSConfig(o.caFile, "", "")
		if err != nil {
			return nil, err
		}
		s.tls = base
	} else if o.caFile != "" || o.certFile != "" {
		return nil, usagef("--ca-file, --cert and --key need an ssl:// broker URL")
	}
	return s, nil
}

// readCredentials reads a CSV file with the header id,secret.
func readCredentials(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("credentials: %w", err)
	}
	defer f.Close()
	r := csv.NewReader(f)
	r.FieldsPerRecord = 2
	head, err := r.Read()
	if err != nil || head[0] != "id" || head[1] != "secret" {
		return nil, fmt.Errorf("credentials %s: want a CSV file with the header id,secret (orchestrator device provision writes one)", path)
	}
	out := make(map[string]string)
	for {
		rec, err := r.Read()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("credentials %s: %w", path, err)
		}
		out[rec[0]] = rec[1]
	}
}

// apply sets a device's credentials and TLS configuration.
func (s *security) apply(cfg *agent.Config) error {
	if secret := s.secrets[cfg.ID]; secret != "" {
		cfg.Password = secret
	} else if s.token != "" {
		cfg.Password = enrollSecret(s.token, cfg.ID)
	}
	if s.token != "" {
		cfg.EnrollToken = s.token
	}
	if s.tls == nil {
		return nil
	}
	tc := s.tls.Clone()
	if s.cert != "" {
		cert, err := tls.LoadX509KeyPair(strings.ReplaceAll(s.cert, "{id}", cfg.ID), strings.ReplaceAll(s.key, "{id}", cfg.ID))
		if err != nil {
			return fmt.Errorf("device %s: client certificate: %w", cfg.ID, err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	cfg.TLSConfig = tc
	return nil
}

// enrollSecret is the secret a simulated device enrolls with when
// --credentials gives it none: derived from the token and the ID, so that a
// restarted devicesim presents the same secrets. Real devices generate a
// random secret once and keep it.
func enrollSecret(token, id string) string {
	m := hmac.New(sha256.New, []byte(token))
	m.Write([]byte("devicesim secret:" + id))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil)[:18])
}
