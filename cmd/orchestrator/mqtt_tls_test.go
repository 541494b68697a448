package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
)

// testCA is a certificate authority made at run time.
type testCA struct {
	t    *testing.T
	dir  string
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	file string // PEM of cert
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	ca := &testCA{t: t, dir: t.TempDir(), cert: cert, key: key}
	ca.file = ca.write(name+".pem", "CERTIFICATE", der)
	return ca
}

func (ca *testCA) write(name, typ string, der []byte) string {
	p := filepath.Join(ca.dir, name)
	require.NoError(ca.t, os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600))
	return p
}

// issue signs a certificate for cn (a server one for 127.0.0.1 when server)
// and returns the certificate and key files.
func (ca *testCA) issue(cn string, server bool) (certFile, keyFile string) {
	ca.t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(ca.t, err)
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	require.NoError(ca.t, err)
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
		tmpl.DNSNames = []string{"localhost"}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	require.NoError(ca.t, err)
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	require.NoError(ca.t, err)
	return ca.write(cn+".crt", "CERTIFICATE", der), ca.write(cn+".key", "PRIVATE KEY", kder)
}

// tlsPub runs mosquitto_pub against the TLS listener.
func tlsPub(t *testing.T, m *Main, args ...string) (string, bool) {
	t.Helper()
	host, port, _ := strings.Cut(m.MQTTTLSAddr(), ":")
	return runTool(t, requireTool(t, "mosquitto_pub"), append([]string{"-h", host, "-p", port, "-q", "1", "-m", "x"}, args...)...)
}

func TestMQTTTLS_ServerCertificateAndPassword(t *testing.T) {
	ca := newTestCA(t, "flota-test-ca")
	cert, key := ca.issue("broker", true)
	m, r := secureMain(t, func(c *Config) { c.MQTTTLSAddr, c.TLSCert, c.TLSKey = "127.0.0.1:0", cert, key })
	secret := account(t, m, fleet.RoleDevice, "dev-a")
	topic := protocol.UpTopic("dev-a", protocol.KindAck)
	creds := []string{"-i", "dev-a", "-u", "dev-a", "-P", secret, "-t", topic}

	out, ok := tlsPub(t, m, append(creds, "--cafile", ca.file)...)
	require.True(t, ok, "TLS publish refused: %s", out)
	routedOnce(t, r, topic)

	other := newTestCA(t, "other-ca")
	_, ok = tlsPub(t, m, append(creds, "--cafile", other.file)...)
	assert.False(t, ok, "a broker certificate from an unknown CA was accepted")
	_, ok = tlsPub(t, m, "-i", "dev-a", "-u", "dev-a", "-P", "wrong-secret-0123456789ab", "-t", topic, "--cafile", ca.file)
	assert.False(t, ok, "TLS does not replace the password without a client CA")
	assert.Equal(t, 1, r.count(topic))
}

func TestMQTTTLS_MutualTLSNeedsTheClientIDInTheCommonName(t *testing.T) {
	ca := newTestCA(t, "flota-test-ca")
	cert, key := ca.issue("broker", true)
	m, r := secureMain(t, func(c *Config) {
		c.MQTTTLSAddr, c.TLSCert, c.TLSKey, c.TLSClientCA = "127.0.0.1:0", cert, key, ca.file
	})
	account(t, m, fleet.RoleDevice, "dev-a")
	account(t, m, fleet.RoleDevice, "dev-b")
	devA, devAKey := ca.issue("dev-a", false)
	topic := protocol.UpTopic("dev-a", protocol.KindAck)

	out, ok := tlsPub(t, m, "--cafile", ca.file, "--cert", devA, "--key", devAKey, "-i", "dev-a", "-t", topic)
	require.True(t, ok, "a verified certificate replaces the password: %s", out)
	routedOnce(t, r, topic)

	_, ok = tlsPub(t, m, "--cafile", ca.file, "--cert", devA, "--key", devAKey, "-i", "dev-b", "-t", protocol.UpTopic("dev-b", protocol.KindAck))
	assert.False(t, ok, "dev-a's certificate connected as dev-b")
	_, ok = tlsPub(t, m, "--cafile", ca.file, "-i", "dev-a", "-t", topic)
	assert.False(t, ok, "no client certificate accepted")
	rogue := newTestCA(t, "rogue-ca")
	rc, rk := rogue.issue("dev-a", false)
	_, ok = tlsPub(t, m, "--cafile", ca.file, "--cert", rc, "--key", rk, "-i", "dev-a", "-t", topic)
	assert.False(t, ok, "a certificate from another CA accepted")
	assert.Equal(t, 1, r.count(topic))
	assert.Zero(t, r.count(protocol.UpTopic("dev-b", protocol.KindAck)))

	// Revocation applies to certificates too.
	res := runCLI(t, m.HTTPURL(), "device", "revoke", "dev-a")
	require.Zero(t, res.code, res.stderr)
	_, ok = tlsPub(t, m, "--cafile", ca.file, "--cert", devA, "--key", devAKey, "-i", "dev-a", "-t", topic)
	assert.False(t, ok, "revoked device connected with its certificate")
}

// routedOnce waits until the broker routed one message on topic: mochi
// acknowledges a QoS 1 publish before it routes it.
func routedOnce(t *testing.T, r *routed, topic string) {
	t.Helper()
	require.Eventually(t, func() bool { return r.count(topic) == 1 }, waitFor, 10*time.Millisecond)
}

func TestMQTTTLS_DevicesimConnectsWithPerDeviceCertificates(t *testing.T) {
	ca := newTestCA(t, "flota-test-ca")
	cert, key := ca.issue("broker", true)
	m, _ := secureMain(t, func(c *Config) {
		c.MQTTTLSAddr, c.TLSCert, c.TLSKey, c.TLSClientCA = "127.0.0.1:0", cert, key, ca.file
	})
	_, err := m.Accounts.Add(context.Background(), fleet.RoleDevice, []string{"tls-00001", "tls-00002"})
	require.NoError(t, err)
	ca.issue("tls-00001", false)
	ca.issue("tls-00002", false)

	_, bin := binaries(t)
	cmd := exec.Command(bin, "--broker", "ssl://"+m.MQTTTLSAddr(), "--devices", "2", "--id-prefix", "tls-",
		"--ca-file", ca.file, "--cert", filepath.Join(ca.dir, "{id}.crt"), "--key", filepath.Join(ca.dir, "{id}.key"))
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	require.Eventually(t, func() bool { return m.Broker.Online("tls-00001") && m.Broker.Online("tls-00002") },
		waitFor, 20*time.Millisecond, "devicesim: %s", out)
}

func TestE2E_ServeWithMutualTLSFlags(t *testing.T) {
	ca := newTestCA(t, "flota-test-ca")
	cert, key := ca.issue("broker", true)
	s := startServer(t, "--mqtt-tls", "127.0.0.1:0", "--tls-cert", cert, "--tls-key", key, "--tls-client-ca", ca.file)
	s.mu.Lock()
	tlsAddr := s.tlsAddr
	s.mu.Unlock()
	require.NotEmpty(t, tlsAddr, "serve printed its TLS address")
	s.mustCLI("device", "add", "dev-a")
	devA, devAKey := ca.issue("dev-a", false)
	host, port, _ := strings.Cut(tlsAddr, ":")
	pub := func() (string, bool) {
		return runTool(t, requireTool(t, "mosquitto_pub"), "-h", host, "-p", port, "--cafile", ca.file,
			"--cert", devA, "--key", devAKey, "-i", "dev-a", "-q", "1", "-t", protocol.UpTopic("dev-a", protocol.KindAck), "-m", "x")
	}
	out, ok := pub()
	require.True(t, ok, "mTLS publish refused: %s", out)
	s.mustCLI("device", "revoke", "dev-a")
	_, ok = pub()
	assert.False(t, ok, "revoked device connected")
}
