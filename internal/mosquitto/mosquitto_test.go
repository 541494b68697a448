package mosquitto

import (
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func start(t *testing.T) *Server {
	t.Helper()
	s := &Server{Dir: t.TempDir(), ConfigDir: "../../testdata/mosquitto"}
	require.NoError(t, s.Start())
	t.Cleanup(func() {
		assert.NoError(t, s.Stop())
		if t.Failed() {
			t.Logf("mosquitto log:\n%s", s.Log())
		}
	})
	return s
}

func tool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	require.NoError(t, err, "%s must be installed (.ci/run installs it)", name)
	return p
}

// pub publishes a retained message with mosquitto_pub as client id (as the
// orchestrator's user when asOrchestrator).
func pub(t *testing.T, s *Server, id string, asOrchestrator bool, topic, msg string) {
	t.Helper()
	args := []string{"-h", "127.0.0.1", "-p", strconv.Itoa(s.Port), "-i", id, "-q", "1", "-r", "-t", topic, "-m", msg}
	if asOrchestrator {
		args = append(args, "-u", OrchestratorUser, "-P", s.Password(OrchestratorUser))
	}
	out, err := exec.Command(tool(t, "mosquitto_pub"), args...).CombinedOutput()
	require.NoError(t, err, "%s", out)
}

// firstMessage subscribes with mosquitto_sub as client id to the filters, in
// order, and returns the first message it receives as "topic payload". The
// broker sends retained messages in the order of the filters.
func firstMessage(t *testing.T, s *Server, id string, asOrchestrator bool, filters ...string) string {
	t.Helper()
	args := []string{"-h", "127.0.0.1", "-p", strconv.Itoa(s.Port), "-i", id, "-q", "1", "-v", "-C", "1", "-W", "20"}
	if asOrchestrator {
		args = append(args, "-u", OrchestratorUser, "-P", s.Password(OrchestratorUser))
	}
	for _, f := range filters {
		args = append(args, "-t", f)
	}
	out, err := exec.Command(tool(t, "mosquitto_sub"), args...).CombinedOutput()
	require.NoError(t, err, "%s", out)
	return strings.TrimSpace(string(out))
}

func TestConfig_DeviceReadsOnlyItsOwnDownTopic(t *testing.T) {
	s := start(t)
	pub(t, s, "orch-1", true, "flota/devices/dev-a/down/offer", "for-a")
	pub(t, s, "orch-2", true, "flota/devices/dev-b/down/offer", "for-b")

	// dev-b asks for dev-a's tree first: it gets its own message only.
	got := firstMessage(t, s, "dev-b", false, "flota/devices/dev-a/down/#", "flota/devices/dev-b/down/#")
	assert.Equal(t, "flota/devices/dev-b/down/offer for-b", got)
	got = firstMessage(t, s, "dev-b", false, "flota/devices/+/down/#")
	assert.Equal(t, "flota/devices/dev-b/down/offer for-b", got)
	// And dev-a does read its own.
	got = firstMessage(t, s, "dev-a", false, "flota/devices/dev-a/down/#")
	assert.Equal(t, "flota/devices/dev-a/down/offer for-a", got)
}

func TestConfig_DeviceWritesOnlyItsOwnUpTopic(t *testing.T) {
	s := start(t)
	pub(t, s, "dev-b", false, "flota/devices/dev-a/up/hello", "spoofed") // dropped by the broker
	pub(t, s, "dev-b", false, "flota/devices/dev-b/down/offer", "spoofed")
	pub(t, s, "dev-b", false, "flota/events/updates/u-1", "spoofed")
	pub(t, s, "dev-b", false, "flota/devices/dev-b/up/hello", "own")

	got := firstMessage(t, s, "orch-sub", true,
		"flota/devices/dev-a/up/#", "flota/devices/dev-b/down/#", "flota/events/#", "flota/devices/dev-b/up/#")
	assert.Equal(t, "flota/devices/dev-b/up/hello own", got)
}

func TestConfig_MonitorReadsEventsAndStatus(t *testing.T) {
	s := start(t)
	pub(t, s, "orch-1", true, "flota/devices/dev-a/down/offer", "for-a")
	pub(t, s, "orch-2", true, "flota/status/updates/u-1", "summary")
	pub(t, s, "orch-3", true, "flota/events/updates/u-1", "event")

	got := firstMessage(t, s, "monitor-1", false, "flota/devices/#", "flota/status/#")
	assert.Equal(t, "flota/status/updates/u-1 summary", got)
	got = firstMessage(t, s, "monitor-1", false, "flota/events/#")
	assert.Equal(t, "flota/events/updates/u-1 event", got)
}

func TestServer_RestartsOnTheSamePort(t *testing.T) {
	s := start(t)
	port := s.Port
	require.NoError(t, s.Kill())
	require.NoError(t, s.Start())
	assert.Equal(t, port, s.Port)
	pub(t, s, "orch-1", true, "flota/status/devices/d", "x")
	assert.Equal(t, "flota/status/devices/d x", firstMessage(t, s, "m", false, "flota/status/#"))
}
