package main

// End-to-end tests with real processes: the orchestrator and devicesim
// binaries, the real mosquitto_sub/mosquitto_pub clients and the sqlite3 CLI,
// over TCP on 127.0.0.1 ports the processes choose themselves.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/testtool"
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// binaries builds orchestrator and devicesim once per test run.
func binaries(t *testing.T) (orchestrator, devicesim string) {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test with real processes")
	}
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "flota-e2e-bin")
		if buildErr != nil {
			return
		}
		for _, pkg := range []string{"orchestrator", "devicesim"} {
			out, err := exec.Command("go", "build", "-o", filepath.Join(binDir, pkg), "../"+pkg).CombinedOutput()
			if err != nil {
				buildErr = fmt.Errorf("build %s: %v\n%s", pkg, err, out)
				return
			}
		}
	})
	require.NoError(t, buildErr)
	return filepath.Join(binDir, "orchestrator"), filepath.Join(binDir, "devicesim")
}

// requireTool returns the path of a program the test runs, or fails it
// with the command that installs it.
func requireTool(t *testing.T, name string) string {
	t.Helper()
	return testtool.Path(t, name)
}

// server is a running `orchestrator serve` process.
type server struct {
	t        *testing.T
	bin      string
	data     string
	mqttAddr string // host:port
	url      string
	token    string     // the admin token printed on the first start
	printed  int        // how many starts printed a token
	mu       sync.Mutex // guards log (written by the stderr reader) and cmd
	cmd      *exec.Cmd
	log      bytes.Buffer
	creds    map[string]string // ID prefix -> credentials file provisioned for it
	// serveArgs are added to every serve command line; tlsAddr is the TLS
	// listener's address when they ask for one.
	serveArgs []string
	tlsAddr   string
	// under is a command line the server runs under (such as prlimit and
	// its arguments), or nil.
	under []string
	// external: the server uses an external broker (serve --broker), at
	// mqttAddr.
	external bool
}

func startServer(t *testing.T, serveArgs ...string) *server {
	t.Helper()
	return startServerAt(t, filepath.Join(t.TempDir(), "data"), nil, serveArgs...)
}

// startServerIn starts a server on the data directory data.
func startServerIn(t *testing.T, data string, serveArgs ...string) *server {
	t.Helper()
	return startServerAt(t, data, nil, serveArgs...)
}

// startServerUnder starts the server as the last argument of the command
// line under.
func startServerUnder(t *testing.T, under []string, serveArgs ...string) *server {
	t.Helper()
	return startServerAt(t, filepath.Join(t.TempDir(), "data"), under, serveArgs...)
}

// startServerAt starts a server on the data directory data, under the
// command line under if it is not nil.
func startServerAt(t *testing.T, data string, under []string, serveArgs ...string) *server {
	t.Helper()
	orch, _ := binaries(t)
	s := &server{t: t, bin: orch, data: data, serveArgs: serveArgs, under: under}
	t.Cleanup(func() {
		s.kill()
		if t.Failed() {
			t.Logf("orchestrator log:\n%s", s.logString())
		}
	})
	s.start("127.0.0.1:0", "127.0.0.1:0")
	return s
}

// start runs `orchestrator serve` on the server's data directory and waits
// until it reports where it listens.
func (s *server) start(mqttAddr, httpAddr string) {
	t := s.t
	t.Helper()
	args := append([]string{s.bin, "serve", "--data", s.data, "--mqtt", mqttAddr, "--http", httpAddr}, s.serveArgs...)
	args = append(append([]string(nil), s.under...), args...)
	cmd := exec.Command(args[0], args[1:]...)
	stderr, err := cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	found := make(chan struct{})
	var mqttSeen, urlSeen string
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64*1024), 1024*1024)
		signalled := false
		for sc.Scan() {
			line := sc.Text()
			s.mu.Lock()
			s.log.WriteString(line + "\n")
			s.mu.Unlock()
			if a, ok := strings.CutPrefix(line, "mqtt listening on tcp://"); ok {
				mqttSeen = a
			}
			if a, ok := strings.CutPrefix(line, "mqtt broker tcp://"); ok {
				mqttSeen = a // an external broker (--broker)
			}
			if a, ok := strings.CutPrefix(line, "mqtt listening on ssl://"); ok {
				s.mu.Lock()
				s.tlsAddr = a
				s.mu.Unlock()
			}
			if a, ok := strings.CutPrefix(line, "http listening on "); ok {
				urlSeen = a
			}
			if strings.HasPrefix(line, "api admin token ") {
				_, tok, _ := strings.Cut(line, "): ")
				s.mu.Lock()
				s.token = tok
				s.printed++
				s.mu.Unlock()
			}
			if !signalled && mqttSeen != "" && urlSeen != "" {
				signalled = true
				close(found)
			}
		}
	}()
	select {
	case <-found:
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatalf("orchestrator did not report its addresses:\n%s", s.logString())
	}
	s.mu.Lock()
	s.cmd, s.mqttAddr, s.url = cmd, mqttSeen, urlSeen
	token, printed := s.token, s.printed
	s.mu.Unlock()
	require.NotEmpty(t, token, "the first start prints an admin token")
	require.Equal(t, 1, printed, "only the first start prints it")
}

// restart starts the server again on the same data directory and addresses.
func (s *server) restart() {
	s.t.Helper()
	s.start(s.mqttAddr, strings.TrimPrefix(s.url, "http://"))
}

// kill SIGKILLs the server process, if it runs.
func (s *server) kill() {
	s.mu.Lock()
	cmd := s.cmd
	s.cmd = nil
	s.mu.Unlock()
	if cmd != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}
}

// cliTimeout bounds an operator command (update watch runs until the update
// ends): an update that never ends fails its test, with the orchestrator's
// log, instead of running into the package's timeout, whose goroutine dump
// shows neither.
const cliTimeout = 5 * time.Minute

// cli runs an operator command against the server and returns its stdout
// and exit code.
func (s *server) cli(args ...string) (string, int) {
	s.t.Helper()
	res := s.cliFull(args...)
	if res.code != 0 {
		s.t.Logf("orchestrator %s: exit %d: %s", strings.Join(args, " "), res.code, res.stderr)
	}
	return res.stdout, res.code
}

// cliFull runs an operator command against the server and returns its
// exit code, stdout and stderr.
func (s *server) cliFull(args ...string) result {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cliTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, s.bin, append(args, "--server", s.url)...)
	cmd.Env = append(os.Environ(), "FLOTA_TOKEN="+s.token)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ctx.Err() != nil {
		s.t.Fatalf("orchestrator %s: still running after %s:\n%s%s", strings.Join(args, " "), cliTimeout, out.String(), errb.String())
	}
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else {
		require.NoError(s.t, err)
	}
	return result{code: code, stdout: out.String(), stderr: errb.String()}
}

func (s *server) mustCLI(args ...string) string {
	s.t.Helper()
	out, code := s.cli(args...)
	require.Zero(s.t, code, "orchestrator %v", args)
	return out
}

func (s *server) getJSON(path string, v any) {
	s.t.Helper()
	req, err := http.NewRequest("GET", s.url+path, nil)
	require.NoError(s.t, err)
	req.Header.Set("Authorization", "Bearer "+s.token)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(s.t, err)
	defer resp.Body.Close()
	require.Equal(s.t, http.StatusOK, resp.StatusCode)
	require.NoError(s.t, json.NewDecoder(resp.Body).Decode(v))
}

// waitOnline waits until n devices are online.
func (s *server) waitOnline(n int) {
	s.t.Helper()
	s.waitOnlineWithin(n, 60*time.Second)
}

// waitOnlineWithin waits until n devices are online, for at most within.
func (s *server) waitOnlineWithin(n int, within time.Duration) {
	s.t.Helper()
	poll(s.t, within, func() bool {
		out, code := s.cli("device", "list", "--online", "--json")
		if code != 0 {
			return false
		}
		var ds []fleet.Device
		return json.Unmarshal([]byte(out), &ds) == nil && len(ds) >= n
	}, fmt.Sprintf("%d devices online", n))
}

// sim is a running devicesim process.
type sim struct {
	cmd     *exec.Cmd
	summary string
	out     *bytes.Buffer
	done    chan error
}

type simDevice struct {
	ID            string `json:"id"`
	Version       string `json:"version"`
	Installs      int    `json:"installs"`
	BytesReceived int64  `json:"bytes_received"`
	ImageSHA256   string `json:"image_sha256"`
	Failed        bool   `json:"failed"`
	Reason        string `json:"reason"`
	Image         string `json:"image"`    // SHA-256 of the image it runs
	Encoding      string `json:"encoding"` // payload encoding of its last transfer
}

type simSummary struct {
	Devices       int         `json:"devices"`
	Updated       int         `json:"updated"`
	Failed        int         `json:"failed"`
	Installs      int         `json:"installs"`
	BytesReceived int64       `json:"bytes_received"`
	ChunksDropped int         `json:"chunks_dropped"`
	DevicesDetail []simDevice `json:"devices_detail"`
}

func startSim(t *testing.T, s *server, args ...string) *sim {
	t.Helper()
	all := []string{"--broker", "tcp://" + s.mqttAddr}
	if !s.external { // an external broker has its own accounts
		all = append(all, "--credentials", s.provision(args))
	}
	return runSim(t, append(all, args...)...)
}

// runSim starts devicesim with args (and a summary file), killed at cleanup.
func runSim(t *testing.T, args ...string) *sim {
	t.Helper()
	_, bin := binaries(t)
	sm := &sim{summary: filepath.Join(t.TempDir(), "summary.json"), out: &bytes.Buffer{}, done: make(chan error, 1)}
	all := append([]string{"--summary", sm.summary, "--reboot-delay", "100ms"}, args...)
	sm.cmd = exec.Command(bin, all...)
	sm.cmd.Stdout, sm.cmd.Stderr = sm.out, sm.out
	require.NoError(t, sm.cmd.Start())
	go func() { sm.done <- sm.cmd.Wait() }()
	t.Cleanup(func() {
		_ = sm.cmd.Process.Kill()
		<-sm.done
		sm.done <- nil
	})
	return sm
}

// provision creates, once per ID prefix, the accounts of the devices that
// devicesim args name (--id-prefix, --devices, --model) with orchestrator device
// provision, and returns the credentials file.
func (s *server) provision(args []string) string {
	s.t.Helper()
	prefix, devices, model := "sim-", "10", []string(nil)
	for i := 0; i+1 < len(args); i++ {
		switch args[i] {
		case "--id-prefix":
			prefix = args[i+1]
		case "--devices":
			devices = args[i+1]
		case "--model":
			model = []string{"--model", args[i+1]}
		}
	}
	if f, ok := s.creds[prefix]; ok {
		return f
	}
	f := filepath.Join(s.t.TempDir(), "creds.csv")
	s.mustCLI(append([]string{"device", "provision", "--prefix", prefix, "--count", devices, "--out", f}, model...)...)
	if s.creds == nil {
		s.creds = make(map[string]string)
	}
	s.creds[prefix] = f
	return f
}

// heldBack is how many devices holdBack provisions.
const heldBack = 3

// holdBack provisions heldBack devices of model sim-a that connect only
// when the returned function is called. An update created before then
// targets them, so it cannot end before the test is ready for it to,
// however fast the machine is.
func (s *server) holdBack(prefix string) func() *sim {
	args := []string{"--devices", strconv.Itoa(heldBack), "--id-prefix", prefix, "--model", "sim-a"}
	s.provision(args)
	return func() *sim { return startSim(s.t, s, args...) }
}

// stop interrupts devicesim (it prints and writes its summary) and reads the
// summary.
func (sm *sim) stop(t *testing.T) simSummary {
	t.Helper()
	_ = sm.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-sm.done:
		sm.done <- nil
	case <-time.After(30 * time.Second):
		t.Fatalf("devicesim did not exit on SIGINT:\n%s", sm.out.String())
	}
	b, err := os.ReadFile(sm.summary)
	require.NoError(t, err, "devicesim output:\n%s", sm.out.String())
	var sum simSummary
	require.NoError(t, json.Unmarshal(b, &sum))
	return sum
}

func poll(t *testing.T, within time.Duration, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for: %s", within, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// firmware writes a random image and adds it through the CLI.
func (s *server) firmware(size int, version string) (id, digest string) {
	s.t.Helper()
	path, digest := image(s.t, size)
	id = strings.TrimSpace(s.mustCLI("firmware", "add", path, "--version", version, "--name", "app", "--model", "sim-a"))
	require.True(s.t, strings.HasPrefix(id, "fw-"), "firmware ID %q", id)
	return id, digest
}

func (s *server) status(id string) fleet.UpdateSummary {
	s.t.Helper()
	var sum fleet.UpdateSummary
	require.NoError(s.t, json.Unmarshal([]byte(s.mustCLI("update", "status", id, "--json")), &sum))
	return sum
}

// sqlite3 runs a query with the sqlite3 CLI on the server's database.
func (s *server) sqlite3(query string) string {
	s.t.Helper()
	return strings.TrimSpace(runSQLite(s.t, filepath.Join(s.data, "flota.db"), query))
}

func TestE2E_FleetOf100DevicesSucceeds(t *testing.T) {
	s := startServer(t)

	// A monitor watches the event stream with the real mosquitto_sub.
	host, port, _ := strings.Cut(s.mqttAddr, ":")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// stdbuf: mosquitto_sub's debug lines are block-buffered on a pipe.
	// A read-only monitor account, as an operator would create one.
	monSecret := strings.TrimSpace(s.mustCLI("monitor", "add", "monitor-e2e"))
	monitor := exec.CommandContext(ctx, requireTool(t, "stdbuf"), "-oL", requireTool(t, "mosquitto_sub"),
		"-h", host, "-p", port, "-i", "monitor-e2e", "-u", "monitor-e2e", "-P", monSecret,
		"-t", "flota/events/#", "-v", "-q", "1", "-d")
	var events bytes.Buffer
	var evMu sync.Mutex // guards events
	subscribed := make(chan struct{})
	pipe, pw, err := os.Pipe() // -d prints SUBACK on one stream and messages on the other
	require.NoError(t, err)
	monitor.Stdout, monitor.Stderr = pw, pw
	require.NoError(t, monitor.Start())
	pw.Close()
	t.Cleanup(func() { cancel(); _ = monitor.Wait() })
	go func() {
		sc := bufio.NewScanner(pipe)
		sc.Buffer(make([]byte, 64*1024), 1024*1024)
		once := sync.Once{}
		for sc.Scan() {
			line := sc.Text()
			if strings.Contains(line, "received SUBACK") {
				once.Do(func() { close(subscribed) })
			}
			evMu.Lock()
			events.WriteString(line + "\n")
			evMu.Unlock()
		}
	}()
	select {
	case <-subscribed:
	case <-time.After(10 * time.Second):
		t.Fatal("mosquitto_sub did not subscribe")
	}

	sm := startSim(t, s, "--devices", "100", "--id-prefix", "e2e-", "--model", "sim-a", "--version", "1.0.0",
		"--tags", "site=lab")
	s.waitOnline(100)
	fw, digest := s.firmware(256*1024, "1.1.0")
	id := strings.TrimSpace(s.mustCLI("update", "create", "--firmware", fw, "--select", "model=sim-a,tag:site=lab"))
	require.True(t, strings.HasPrefix(id, "u-"), "update ID %q", id)

	_, code := s.cli("update", "watch", id, "--interval", "200ms")
	assert.Zero(t, code, "watch exits 0 on a completed update")

	// The API and the store agree.
	st := s.status(id)
	assert.Equal(t, fleet.UpdateCompleted, st.State)
	assert.Equal(t, 100, st.Total)
	assert.Equal(t, map[fleet.DeviceState]int{fleet.StateSucceeded: 100}, st.Counts)
	poll(t, 10*time.Second, func() bool {
		return s.sqlite3("SELECT state, count(*) FROM progress WHERE update_id='"+id+"' GROUP BY state") == "succeeded|100"
	}, "store records 100 succeeded devices")
	poll(t, 30*time.Second, func() bool {
		return s.sqlite3("SELECT state FROM updates WHERE id='"+id+"'") == "completed"
	}, "store records the update completed")

	// Every device received exactly the image and installed it once.
	sum := sm.stop(t)
	assert.Equal(t, 100, sum.Devices)
	assert.Equal(t, 100, sum.Updated)
	require.Len(t, sum.DevicesDetail, 100)
	for _, d := range sum.DevicesDetail {
		assert.Equal(t, "1.1.0", d.Version, d.ID)
		assert.Equal(t, 1, d.Installs, d.ID)
		assert.Equal(t, digest, d.ImageSHA256, d.ID)
	}

	// mosquitto_sub saw every device's succeeded event.
	poll(t, 10*time.Second, func() bool {
		evMu.Lock()
		defer evMu.Unlock()
		return len(succeededDevices(events.String(), id)) == 100
	}, "mosquitto_sub receives 100 succeeded events")
}

// succeededDevices parses mosquitto_sub -v lines ("topic payload").
func succeededDevices(out, update string) map[string]bool {
	seen := map[string]bool{}
	prefix := "flota/events/updates/" + update + " "
	for _, line := range strings.Split(out, "\n") {
		payload, ok := strings.CutPrefix(line, prefix)
		if !ok {
			continue
		}
		var ev fleet.Event
		if json.Unmarshal([]byte(payload), &ev) == nil && ev.Type == fleet.EventDevice && ev.State == string(fleet.StateSucceeded) {
			seen[ev.DeviceID] = true
		}
	}
	return seen
}

func TestE2E_DroppedChunksAreResent(t *testing.T) {
	s := startServer(t)
	sm := startSim(t, s, "--devices", "40", "--id-prefix", "lossy-", "--model", "sim-a", "--drop-chunks", "0.1", "--seed", "7")
	s.waitOnline(40)
	fw, digest := s.firmware(128*1024, "1.1.0")
	id := strings.TrimSpace(s.mustCLI("update", "create", "--firmware", fw, "--chunk-size", "4096"))
	_, code := s.cli("update", "watch", id, "--interval", "200ms")
	require.Zero(t, code)
	st := s.status(id)
	assert.Equal(t, 40, st.Counts[fleet.StateSucceeded])
	assert.Positive(t, st.Resends)

	sum := sm.stop(t)
	assert.Positive(t, sum.ChunksDropped)
	for _, d := range sum.DevicesDetail {
		assert.Equal(t, digest, d.ImageSHA256, d.ID)
	}
}

func TestE2E_FailedInstallEndsFailedWithReason(t *testing.T) {
	s := startServer(t)
	good := startSim(t, s, "--devices", "10", "--id-prefix", "good-", "--model", "sim-a")
	bad := startSim(t, s, "--devices", "1", "--id-prefix", "bad-", "--model", "sim-a", "--fail-install", "1")
	s.waitOnline(11)
	fw, _ := s.firmware(64*1024, "1.1.0")
	id := strings.TrimSpace(s.mustCLI("update", "create", "--firmware", fw))
	_, code := s.cli("update", "watch", id, "--interval", "200ms")
	assert.Equal(t, 1, code, "watch exits 1 when devices failed")

	st := s.status(id)
	assert.Equal(t, fleet.UpdateCompletedWithFailures, st.State)
	assert.Equal(t, 10, st.Counts[fleet.StateSucceeded])
	assert.Equal(t, 1, st.Counts[fleet.StateFailed])
	var failed []fleet.Progress
	require.NoError(t, json.Unmarshal([]byte(s.mustCLI("update", "devices", id, "--state", "failed", "--json")), &failed))
	require.Len(t, failed, 1)
	assert.Equal(t, "bad-00001", failed[0].DeviceID)
	assert.Equal(t, fleet.ReasonInstallFailed, failed[0].Reason)

	assert.Equal(t, 10, good.stop(t).Updated)
	b := bad.stop(t)
	assert.Equal(t, 0, b.Updated)
	assert.Equal(t, 1, b.Failed)
}

func TestE2E_GarbageFromMosquittoPubIsCountedAndHarmless(t *testing.T) {
	s := startServer(t)
	sm := startSim(t, s, "--devices", "20", "--id-prefix", "ok-", "--model", "sim-a")
	s.waitOnline(20)
	fw, _ := s.firmware(64*1024, "1.1.0")
	id := strings.TrimSpace(s.mustCLI("update", "create", "--firmware", fw, "--max-in-flight", "4"))

	host, port, _ := strings.Cut(s.mqttAddr, ":")
	pub := requireTool(t, "mosquitto_pub")
	// A device with valid credentials that sends garbage: the worst a
	// compromised device can do on its own topics.
	secret := strings.TrimSpace(s.mustCLI("device", "add", "junk"))
	for i, msg := range []struct{ topic, payload string }{
		{"flota/devices/junk/up/report", "\x01\x02 not json at all"},
		{"flota/devices/junk/up/hello", `{"v":1,"version":7}`},
		{"flota/devices/junk/up/ack", `{"v":1,"handle":1,"offset":-5}`},
		{"flota/devices/junk/up/report", `{"v":1,"update":"u-000000000000","handle":1,"state":"accepted"}`},
		{"flota/devices/junk/up/report", `{"v":1,"update":"` + id + `","handle":1,"state":"teleported"}`},
	} {
		out, err := exec.Command(pub, "-h", host, "-p", port, "-i", "junk", "-u", "junk", "-P", secret, "-q", "1", "-t", msg.topic, "-m", msg.payload).CombinedOutput()
		require.NoError(t, err, "message %d: %s", i, out)
	}
	var stats struct {
		Engine struct {
			BadMessages int64 `json:"bad_messages"`
		} `json:"engine"`
	}
	poll(t, 10*time.Second, func() bool {
		s.getJSON("/api/v1/stats", &stats)
		return stats.Engine.BadMessages >= 5
	}, "five bad messages counted, got "+strconv.FormatInt(stats.Engine.BadMessages, 10))
	assert.Contains(t, s.logString(), "bad device message")

	_, code := s.cli("update", "watch", id, "--interval", "200ms")
	require.Zero(t, code)
	assert.Equal(t, 20, s.status(id).Counts[fleet.StateSucceeded])
	assert.Equal(t, 20, sm.stop(t).Updated)
}

func (s *server) logString() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.log.String()
}
