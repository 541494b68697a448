package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/httpapi"
	"github.com/flotaio/flota/internal/protocol"
)

// secureMain runs Main with authentication on (the default), after cfg
// changes its configuration, and records every message the broker routes.
func secureMain(t *testing.T, cfg func(*Config)) (*Main, *routed) {
	t.Helper()
	m := newTestMain(t)
	if cfg != nil {
		cfg(&m.Config)
	}
	require.NoError(t, m.Run(context.Background()))
	t.Cleanup(func() { assert.NoError(t, m.Close()) })
	r := &routed{}
	require.NoError(t, m.Broker.Subscribe("#", r.add))
	return m, r
}

// routed records the topics of the messages the broker routed.
type routed struct {
	mu     sync.Mutex
	topics []string
}

func (r *routed) add(topic string, _ []byte) {
	r.mu.Lock()
	r.topics = append(r.topics, topic)
	r.mu.Unlock()
}

func (r *routed) count(topic string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, t := range r.topics {
		if t == topic {
			n++
		}
	}
	return n
}

// account creates an active MQTT account and returns its secret.
func account(t *testing.T, m *Main, role fleet.Role, id string) string {
	t.Helper()
	issued, err := m.Accounts.Add(context.Background(), role, []string{id})
	require.NoError(t, err)
	return issued[0].Secret
}

// mosq runs mosquitto_pub or mosquitto_sub against the plain listener and
// returns its combined output and whether it exited with status 0.
func mosq(t *testing.T, m *Main, tool string, args ...string) (string, bool) {
	t.Helper()
	host, port, _ := strings.Cut(m.MQTTAddr(), ":")
	return runTool(t, requireTool(t, tool), append([]string{"-h", host, "-p", port}, args...)...)
}

func runTool(t *testing.T, bin string, args ...string) (string, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // bounds a hang only
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		require.NoError(t, err)
	}
	return string(out), err == nil
}

// publishOwn publishes a message to the device's own up tree and waits until
// the broker routed it: the control case of every refusal test.
func publishOwn(t *testing.T, m *Main, r *routed, id, secret string) {
	t.Helper()
	topic := protocol.UpTopic(id, protocol.KindAck)
	before := r.count(topic)
	out, ok := mosq(t, m, "mosquitto_pub", "-i", id, "-u", id, "-P", secret, "-q", "1", "-t", topic, "-m", "x")
	require.True(t, ok, "own publish refused: %s", out)
	require.Eventually(t, func() bool { return r.count(topic) > before }, waitFor, 10*time.Millisecond)
}

const waitFor = 10 * time.Second

func TestMQTTAuth_RefusesWrongMissingAndForeignCredentials(t *testing.T) {
	m, r := secureMain(t, nil)
	secret := account(t, m, fleet.RoleDevice, "dev-a")
	account(t, m, fleet.RoleDevice, "dev-b")
	topic := protocol.UpTopic("dev-a", protocol.KindAck)

	for name, args := range map[string][]string{
		"no credentials":      {"-i", "dev-a"},
		"wrong password":      {"-i", "dev-a", "-u", "dev-a", "-P", secret + "x"},
		"unknown account":     {"-i", "dev-z", "-u", "dev-z", "-P", secret},
		"another's password":  {"-i", "dev-b", "-u", "dev-b", "-P", secret},
		"username not the ID": {"-i", "dev-b", "-u", "dev-a", "-P", secret},
	} {
		out, ok := mosq(t, m, "mosquitto_pub", append(args, "-q", "1", "-t", topic, "-m", "x")...)
		assert.False(t, ok, "%s: accepted", name)
		assert.Contains(t, out, "not authorised", name)
	}
	assert.Zero(t, r.count(topic), "a refused client's message was routed")
	assert.GreaterOrEqual(t, m.Broker.Stats().AuthRefused, int64(5))

	publishOwn(t, m, r, "dev-a", secret)
	assert.Equal(t, 1, m.Accounts.Cached(), "the verified secret is cached")
	publishOwn(t, m, r, "dev-a", secret) // from the cache
	_, ok := mosq(t, m, "mosquitto_pub", "-i", "dev-a", "-u", "dev-a", "-P", "wrong-but-long-enough-secret", "-t", topic, "-m", "x")
	assert.False(t, ok, "a cached account still checks the secret")
}

// subscribeDenied subscribes with mosquitto_sub while the broker publishes
// on topic, and reports what mosquitto_sub printed within 3 s: a denied
// subscription prints nothing, so the whole wait is spent each time, and a
// leak that came later would be missed, never invented.
func subscribeDenied(t *testing.T, m *Main, filter, topic string, creds ...string) string {
	t.Helper()
	return subscribeWhilePublished(t, m, 3, filter, topic, creds...)
}

// subscribeReads is subscribeDenied's control, for a subscription that must
// read topic: mosquitto_sub ends at the first message, and is given 30 s to
// connect and get it on a loaded machine.
func subscribeReads(t *testing.T, m *Main, filter, topic string, creds ...string) string {
	t.Helper()
	return subscribeWhilePublished(t, m, 30, filter, topic, creds...)
}

// subscribeWhilePublished subscribes with mosquitto_sub for at most wait
// seconds while the broker publishes "leak" on topic, and reports what
// mosquitto_sub printed.
func subscribeWhilePublished(t *testing.T, m *Main, wait int, filter, topic string, creds ...string) string {
	t.Helper()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				_ = m.Broker.Publish(topic, []byte("leak"), false, 0)
			}
		}
	})
	defer func() { close(stop); wg.Wait() }()
	out, _ := mosq(t, m, "mosquitto_sub", append(creds, "-t", filter, "-C", "1", "-W", strconv.Itoa(wait), "-v")...)
	return out
}

func TestMQTTAuth_DeviceReadsOnlyItsOwnTopics(t *testing.T) {
	m, _ := secureMain(t, nil)
	secret := account(t, m, fleet.RoleDevice, "dev-a")
	creds := []string{"-i", "dev-a", "-u", "dev-a", "-P", secret}
	cases := []struct{ filter, topic string }{
		{"flota/devices/dev-b/down/#", "flota/devices/dev-b/down/chunk"},
		{"flota/devices/+/down/#", "flota/devices/dev-b/down/chunk"},
		{"flota/devices/dev-b/up/#", "flota/devices/dev-b/up/hello"},
		{"#", "flota/devices/dev-b/down/offer"},
		{"$SYS/#", "$SYS/broker/clients/connected"},
	}
	for _, c := range cases {
		out := subscribeDenied(t, m, c.filter, c.topic, creds...)
		assert.NotContains(t, out, "leak", "device read %s through %s", c.topic, c.filter)
		// mochi keeps its $SYS topics retained: a granted $SYS/# gets them at once.
		assert.NotContains(t, out, "$SYS/", "device read $SYS through %s", c.filter)
	}
	assert.GreaterOrEqual(t, m.Broker.Stats().ACLDenied, int64(len(cases)))

	// Control: its own down tree is readable.
	assert.Contains(t, subscribeReads(t, m, "flota/devices/dev-a/down/#", "flota/devices/dev-a/down/offer", creds...), "leak")
}

func TestMQTTAuth_DeviceCannotPublishAsAnother(t *testing.T) {
	m, r := secureMain(t, nil)
	secret := account(t, m, fleet.RoleDevice, "dev-a")
	account(t, m, fleet.RoleDevice, "dev-b")
	forged := protocol.UpTopic("dev-b", protocol.KindHello)
	for _, topic := range []string{forged, "flota/events/forged", "flota/status/devices/dev-b"} {
		out, ok := mosq(t, m, "mosquitto_pub", "-i", "dev-a", "-u", "dev-a", "-P", secret, "-q", "1", "-t", topic, "-m", `{"v":1}`)
		assert.False(t, ok, "forged publish to %s acknowledged: %s", topic, out)
	}
	publishOwn(t, m, r, "dev-a", secret)
	assert.Zero(t, r.count(forged))
	assert.Zero(t, r.count("flota/events/forged"))
	assert.Zero(t, r.count("flota/status/devices/dev-b"))
}

func TestMQTTAuth_MonitorReadsEventsAndStatusOnly(t *testing.T) {
	m, r := secureMain(t, nil)
	monSecret := account(t, m, fleet.RoleMonitor, "ops")
	devSecret := account(t, m, fleet.RoleDevice, "dev-a")
	mon := []string{"-i", "ops", "-u", "ops", "-P", monSecret}

	assert.Contains(t, subscribeReads(t, m, "flota/events/#", "flota/events/updates/u1", mon...), "leak")
	assert.Contains(t, subscribeReads(t, m, "flota/status/#", "flota/status/updates/u1", mon...), "leak")
	for _, c := range []struct{ filter, topic string }{
		{"flota/devices/+/down/#", "flota/devices/dev-a/down/chunk"},
		{"flota/devices/ops/down/#", "flota/devices/ops/down/chunk"},
		{"flota/#", "flota/devices/dev-a/up/ack"},
	} {
		assert.NotContains(t, subscribeDenied(t, m, c.filter, c.topic, mon...), "leak", c.filter)
	}

	for _, topic := range []string{"flota/events/forged", "flota/status/forged", protocol.UpTopic("ops", "hello")} {
		_, ok := mosq(t, m, "mosquitto_pub", append(mon, "-q", "1", "-t", topic, "-m", "x")...)
		assert.False(t, ok, "monitor published to %s", topic)
		assert.Zero(t, r.count(topic), "monitor's message on %s routed", topic)
	}

	// No client-ID takeover: a monitor cannot connect as a device (its
	// username must be its client ID), so a connected device stays online.
	sub := startSub(t, m, "dev-a", devSecret)
	_, ok := mosq(t, m, "mosquitto_pub", "-i", "dev-a", "-u", "ops", "-P", monSecret, "-t", "flota/events/x", "-m", "x")
	assert.False(t, ok, "monitor connected with a device's client ID")
	assert.True(t, m.Broker.Online("dev-a"))
	assert.False(t, sub.exited())
}

// sub is a mosquitto_sub process left running as a device.
type sub struct {
	done chan struct{}
	out  *lockedBuffer
}

func (s *sub) exited() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startSub runs mosquitto_sub as device id on its down tree until the test
// ends, and waits until the device is online.
func startSub(t *testing.T, m *Main, id, secret string) *sub {
	t.Helper()
	host, port, _ := strings.Cut(m.MQTTAddr(), ":")
	cmd := exec.Command(requireTool(t, "mosquitto_sub"), "-h", host, "-p", port, "-i", id, "-u", id, "-P", secret,
		"-t", "flota/devices/"+id+"/down/#")
	s := &sub{done: make(chan struct{}), out: &lockedBuffer{}}
	cmd.Stdout, cmd.Stderr = s.out, s.out
	require.NoError(t, cmd.Start())
	go func() { _ = cmd.Wait(); close(s.done) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-s.done })
	require.Eventually(t, func() bool { return m.Broker.Online(id) }, waitFor, 10*time.Millisecond, "mosquitto_sub: %s", s.out)
	return s
}

func TestMQTTAuth_RevokedDeviceIsDisconnectedAndRefused(t *testing.T) {
	m, r := secureMain(t, nil)
	secret := account(t, m, fleet.RoleDevice, "dev-a")
	publishOwn(t, m, r, "dev-a", secret) // its secret is now cached
	s := startSub(t, m, "dev-a", secret)

	res := runCLI(t, m.HTTPURL(), "device", "revoke", "dev-a")
	require.Zero(t, res.code, res.stderr)
	assert.Equal(t, "device dev-a: revoked\n", res.stdout)

	require.Eventually(t, s.exited, waitFor, 10*time.Millisecond, "mosquitto_sub still connected")
	assert.False(t, m.Broker.Online("dev-a"))
	out, ok := mosq(t, m, "mosquitto_pub", "-i", "dev-a", "-u", "dev-a", "-P", secret, "-t", protocol.UpTopic("dev-a", protocol.KindAck), "-m", "x")
	assert.False(t, ok, "revoked device connected: %s", out)
	assert.Zero(t, m.Accounts.Cached())
}

func TestMQTTAuth_EnrolledDeviceWaitsForApproval(t *testing.T) {
	token := "fleet-token-0123456789abcdef"
	tokenFile := filepath.Join(t.TempDir(), "token")
	require.NoError(t, os.WriteFile(tokenFile, []byte(token+"\n"), 0o600))
	m, r := secureMain(t, func(c *Config) { c.EnrollTokenFile = tokenFile })
	secret := "device-chosen-secret-0123456789"
	pw := protocol.EnrollPassword(token, secret)
	topic := protocol.UpTopic("new-1", protocol.KindAck)
	pub := func(password string) (string, bool) {
		return mosq(t, m, "mosquitto_pub", "-i", "new-1", "-u", "new-1", "-P", password, "-q", "1", "-t", topic, "-m", "x")
	}

	_, ok := pub(protocol.EnrollPassword("wrong-token-0123456789abcdef", secret))
	assert.False(t, ok, "wrong token accepted")
	_, err := m.Store.Credential(context.Background(), "new-1")
	require.ErrorIs(t, err, fleet.ErrCredentialNotFound, "a wrong token registers nothing")

	out, ok := pub(pw)
	assert.False(t, ok, "pending device accepted")
	assert.Contains(t, out, "not authorised")
	res := runCLI(t, m.HTTPURL(), "device", "accounts", "--status", "pending")
	require.Zero(t, res.code, res.stderr)
	assert.Contains(t, res.stdout, "new-1")
	_, ok = pub(pw)
	assert.False(t, ok, "still pending")

	res = runCLI(t, m.HTTPURL(), "device", "approve", "new-1")
	require.Zero(t, res.code, res.stderr)
	out, ok = pub(pw)
	require.True(t, ok, "approved device refused: %s", out)
	routedOnce(t, r, topic)
	out, ok = pub(secret)
	require.True(t, ok, "the plain secret works too: %s", out)
	_, ok = pub(protocol.EnrollPassword(token, "another-secret-0123456789abc"))
	assert.False(t, ok, "the token does not replace the device's secret")
}

func TestMQTTAuth_AutoApproveAndAnonymousModes(t *testing.T) {
	tokenFile := filepath.Join(t.TempDir(), "token")
	require.NoError(t, os.WriteFile(tokenFile, []byte("fleet-token-0123456789abcdef"), 0o600))
	m, r := secureMain(t, func(c *Config) { c.EnrollTokenFile, c.AutoApprove = tokenFile, true })
	pw := protocol.EnrollPassword("fleet-token-0123456789abcdef", "device-chosen-secret-0123456789")
	out, ok := mosq(t, m, "mosquitto_pub", "-i", "auto-1", "-u", "auto-1", "-P", pw, "-q", "1", "-t", protocol.UpTopic("auto-1", protocol.KindAck), "-m", "x")
	require.True(t, ok, out)
	routedOnce(t, r, protocol.UpTopic("auto-1", protocol.KindAck))

	anon, r2 := secureMain(t, func(c *Config) { c.AllowAnonymous = true })
	out, ok = mosq(t, anon, "mosquitto_pub", "-i", "dev-x", "-q", "1", "-t", protocol.UpTopic("dev-x", protocol.KindAck), "-m", "x")
	require.True(t, ok, out)
	_, ok = mosq(t, anon, "mosquitto_pub", "-i", "dev-x", "-q", "1", "-t", protocol.UpTopic("dev-y", protocol.KindAck), "-m", "x")
	assert.False(t, ok, "the client-ID ACL still applies without authentication")
	routedOnce(t, r2, protocol.UpTopic("dev-x", protocol.KindAck))
	assert.Zero(t, r2.count(protocol.UpTopic("dev-y", protocol.KindAck)))
}

func TestMQTTAuth_RateLimitDropsAFloodAndKeepsTheClient(t *testing.T) {
	m, r := secureMain(t, func(c *Config) { c.RateLimit, c.RateBurst = 50, 50 })
	secret := account(t, m, fleet.RoleDevice, "dev-a")
	host, port, _ := strings.Cut(m.MQTTAddr(), ":")
	topic := protocol.UpTopic("dev-a", "ack")
	const sent = 2000
	cmd := exec.Command(requireTool(t, "mosquitto_pub"), "-h", host, "-p", port, "-i", "dev-a", "-u", "dev-a", "-P", secret,
		"-q", "1", "-t", topic, "-l")
	cmd.Stdin = strings.NewReader(strings.Repeat("{}\n", sent))
	start := time.Now()
	out, err := cmd.CombinedOutput()
	elapsed := time.Since(start)
	require.NoError(t, err, "the offender keeps its connection: %s", out)

	// Every message is either routed or counted as dropped.
	require.Eventually(t, func() bool {
		return int64(r.count(topic))+m.Broker.Stats().RateLimited == sent
	}, waitFor, 10*time.Millisecond, "routed %d, dropped %d", r.count(topic), m.Broker.Stats().RateLimited)
	got := r.count(topic)
	limit := 50 + int(elapsed.Seconds()*50) + 1
	assert.LessOrEqual(t, got, limit, "%d of %d routed in %s", got, sent, elapsed)
	assert.Positive(t, got)
}

func TestMQTTAuth_OversizedPacketDisconnects(t *testing.T) {
	m, r := secureMain(t, nil)
	secret := account(t, m, fleet.RoleDevice, "dev-a")
	host, port, _ := strings.Cut(m.MQTTAddr(), ":")
	topic := protocol.UpTopic("dev-a", "report")
	cmd := exec.Command(requireTool(t, "mosquitto_pub"), "-h", host, "-p", port, "-i", "dev-a", "-u", "dev-a", "-P", secret,
		"-q", "1", "-t", topic, "-s")
	cmd.Stdin = strings.NewReader(strings.Repeat("x", 200*1024)) // over the 128 KiB packet limit
	out, err := cmd.CombinedOutput()
	assert.Error(t, err, "oversized publish acknowledged: %s", out)
	publishOwn(t, m, r, "dev-a", secret)
	assert.Zero(t, r.count(topic), "oversized message routed")
}

func TestAccountCLI_ErrorsAreClearAndLoseNothing(t *testing.T) {
	m, _ := secureMain(t, nil)
	url := m.HTTPURL()

	res := runCLI(t, url, "device", "add", "dev-1", "--model", "sensor-v2", "--tag", "site=lyon")
	require.Zero(t, res.code, res.stderr)
	secret := strings.TrimSpace(res.stdout)
	assert.Len(t, secret, 22, "only the secret on stdout")
	assert.Contains(t, res.stderr, "shown only this once")
	d, err := m.Store.Device(context.Background(), "dev-1")
	require.NoError(t, err, "a device added with a model is registered at once")
	assert.Equal(t, "sensor-v2", d.Model)
	assert.Equal(t, map[string]string{"site": "lyon"}, d.Tags)

	res = runCLI(t, url, "device", "add", "dev-1")
	assert.Equal(t, exitFail, res.code)
	assert.Contains(t, res.stderr, "credential_exists")
	res = runCLI(t, url, "monitor", "add", "dev-1")
	assert.Equal(t, exitFail, res.code, "a monitor cannot take a device's ID")
	res = runCLI(t, url, "device", "add", "bad/id")
	assert.Equal(t, exitUsage, res.code, "refused before asking the server")
	assert.Contains(t, res.stderr, `"/" at position 4 is not allowed`)
	var e httpapi.Error
	code, body := postJSON(t, url+"/api/v1/devices", `{"id":"bad/id"}`)
	require.NoError(t, json.Unmarshal(body, &e))
	assert.Equal(t, http.StatusBadRequest, code)
	assert.Equal(t, httpapi.CodeInvalidInput, e.Code)
	assert.Contains(t, e.Message, `"/" at position 4 is not allowed; an ID holds letters, digits, '.', '_' and '-' only`)

	out := filepath.Join(t.TempDir(), "creds.csv")
	res = runCLI(t, url, "device", "provision", "--prefix", "f-", "--count", "3", "--out", out)
	require.Zero(t, res.code, res.stderr)
	b, err := os.ReadFile(out)
	require.NoError(t, err)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	require.Len(t, lines, 4)
	assert.Equal(t, "id,secret", lines[0])
	assert.True(t, strings.HasPrefix(lines[1], "f-00001,"), lines[1])
	st, err := os.Stat(out)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), st.Mode().Perm())

	res = runCLI(t, url, "device", "provision", "--prefix", "g-", "--count", "2", "--out", out)
	assert.Equal(t, exitFail, res.code, "an existing file is never overwritten")
	b2, _ := os.ReadFile(out)
	assert.Equal(t, b, b2)
	_, err = m.Store.Credential(context.Background(), "g-00001")
	assert.ErrorIs(t, err, fleet.ErrCredentialNotFound, "nothing created when the file cannot be written")

	res = runCLI(t, url, "device", "provision", "--prefix", "f-", "--count", "5", "--out", filepath.Join(t.TempDir(), "x.csv"))
	assert.Equal(t, exitFail, res.code, "overlapping IDs")
	_, err = m.Store.Credential(context.Background(), "f-00004")
	assert.ErrorIs(t, err, fleet.ErrCredentialNotFound, "all or nothing")

	res = runCLI(t, url, "device", "provision", "--prefix", "h-", "--count", "0", "--out", filepath.Join(t.TempDir(), "y.csv"))
	assert.Equal(t, exitUsage, res.code)
	res = runCLI(t, url, "device", "approve", "dev-1")
	assert.Equal(t, exitFail, res.code, "an active device is not pending")
	res = runCLI(t, url, "monitor", "revoke", "dev-1")
	assert.Equal(t, exitFail, res.code, "a device is not revoked as a monitor")

	res = runCLI(t, url, "monitor", "add", "ops", "--json")
	require.Zero(t, res.code, res.stderr)
	assert.Contains(t, res.stdout, `"secret"`)
	res = runCLI(t, url, "monitor", "list")
	require.Zero(t, res.code, res.stderr)
	assert.Contains(t, res.stdout, "ops")
	assert.NotContains(t, res.stdout, "dev-1")
}

func TestE2E_DevicesimEnrollsAndWaitsForApproval(t *testing.T) {
	token := "fleet-token-0123456789abcdef"
	tokenFile := filepath.Join(t.TempDir(), "token")
	require.NoError(t, os.WriteFile(tokenFile, []byte(token), 0o600))
	m, _ := secureMain(t, func(c *Config) { c.EnrollTokenFile = tokenFile })

	_, bin := binaries(t)
	cmd := exec.Command(bin, "--broker", "tcp://"+m.MQTTAddr(), "--devices", "2", "--id-prefix", "enr-", "--enroll-token", token)
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })

	pending := func() bool {
		list, err := m.Store.ListCredentials(context.Background(), fleet.RoleDevice, fleet.CredentialPending)
		return err == nil && len(list) == 2
	}
	require.Eventually(t, pending, waitFor, 20*time.Millisecond, "devicesim: %s", out)
	assert.False(t, m.Broker.Online("enr-00001"), "a pending device is refused")

	res := runCLI(t, m.HTTPURL(), "device", "approve", "enr-00001")
	require.Zero(t, res.code, res.stderr)
	require.Eventually(t, func() bool { return m.Broker.Online("enr-00001") }, 30*time.Second, 50*time.Millisecond,
		"the approved device connects on its next retry")
	assert.False(t, m.Broker.Online("enr-00002"), "the other is still pending")
}

// postJSON posts body with the admin token and returns the status and the
// answer.
func postJSON(t *testing.T, url, body string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest("POST", url, strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+testAdminToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, data
}
