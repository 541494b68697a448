package main

// End-to-end tests of cmd/flota-agent: real flota-agent processes, with the
// hook scripts of cmd/flota-agent/testdata/hooks acting as an A/B device,
// in the same updates as devicesim devices, against a real orchestrator.
// A "reboot" stops the process (the reboot hook sends it SIGTERM) and a
// supervisor starts it again, as the next boot would.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"fmt"
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
)

var (
	flotaAgentOnce sync.Once
	flotaAgentBin  string
	flotaAgentErr  error
)

// flotaAgentBinary builds cmd/flota-agent once per test run.
func flotaAgentBinary(t *testing.T) string {
	t.Helper()
	binaries(t) // skips in -short mode
	flotaAgentOnce.Do(func() {
		dir, err := os.MkdirTemp("", "flota-agent-bin")
		if err != nil {
			flotaAgentErr = err
			return
		}
		flotaAgentBin = filepath.Join(dir, "flota-agent")
		out, err := exec.Command("go", "build", "-o", flotaAgentBin, "../flota-agent").CombinedOutput()
		if err != nil {
			flotaAgentErr = fmt.Errorf("build flota-agent: %v\n%s", err, out)
		}
	})
	require.NoError(t, flotaAgentErr)
	return flotaAgentBin
}

// hooksDir holds the hook scripts of the simulated A/B device.
func hooksDir(t *testing.T) string {
	t.Helper()
	d, err := filepath.Abs("../flota-agent/testdata/hooks")
	require.NoError(t, err)
	return d
}

// flotaAgent is a flota-agent process kept running by a supervisor.
type flotaAgent struct {
	t      *testing.T
	id     string
	secret string
	root   string // the device's files: version, slots, boots (DEVICE_ROOT)
	conf   string
	state  string
	done   chan struct{} // closed when the supervisor ends

	mu       sync.Mutex // guards cmd, log, starts and stopping
	cmd      *exec.Cmd
	log      bytes.Buffer
	starts   int
	stopping bool
}

// Write collects the process's output (stdout and stderr).
func (fa *flotaAgent) Write(p []byte) (int, error) {
	fa.mu.Lock()
	defer fa.mu.Unlock()
	return fa.log.Write(p)
}

func (fa *flotaAgent) logString() string {
	fa.mu.Lock()
	defer fa.mu.Unlock()
	return fa.log.String()
}

// maxStarts bounds the supervisor's restarts: a daemon that keeps exiting
// fails its test rather than spinning.
const maxStarts = 20

// provisionAgents provisions n device accounts with the prefix and returns
// their secrets by ID.
func (s *server) provisionAgents(prefix string, n int) map[string]string {
	s.t.Helper()
	f := filepath.Join(s.t.TempDir(), "agents.csv")
	s.mustCLI("device", "provision", "--prefix", prefix, "--count", strconv.Itoa(n), "--out", f, "--model", "sim-a")
	r, err := os.Open(f)
	require.NoError(s.t, err)
	defer r.Close()
	recs, err := csv.NewReader(r).ReadAll()
	require.NoError(s.t, err)
	out := map[string]string{}
	for _, rec := range recs[1:] {
		out[rec[0]] = rec[1]
	}
	return out
}

// startFlotaAgent writes a config file for device id (version 1.0.0, the
// test hooks, settings added or replaced by extra) and starts flota-agent
// with it under a supervisor.
func startFlotaAgent(t *testing.T, s *server, id, secret string, extra map[string]string) *flotaAgent {
	t.Helper()
	bin := flotaAgentBinary(t)
	dir := t.TempDir()
	fa := &flotaAgent{t: t, id: id, secret: secret, root: filepath.Join(dir, "root"), state: filepath.Join(dir, "state"),
		conf: filepath.Join(dir, "agent.conf"), done: make(chan struct{})}
	require.NoError(t, os.MkdirAll(fa.root, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(fa.root, "version"), []byte("1.0.0\n"), 0o644))
	pw := filepath.Join(dir, "password")
	require.NoError(t, os.WriteFile(pw, []byte(secret+"\n"), 0o600))
	hooks := hooksDir(t)
	settings := map[string]string{
		"broker": "tcp://" + s.mqttAddr, "id": id, "model": "sim-a",
		"version-file": filepath.Join(fa.root, "version"), "password-file": pw, "state-dir": fa.state,
		"install-command": filepath.Join(hooks, "install.sh"), "reboot-command": filepath.Join(hooks, "reboot.sh"),
		"health-command": filepath.Join(hooks, "health.sh"), "confirm-command": filepath.Join(hooks, "mark-good.sh"),
		"rollback-command": filepath.Join(hooks, "rollback.sh"), "log-level": "debug",
	}
	for k, v := range extra {
		settings[k] = v
	}
	var conf strings.Builder
	conf.WriteString("# written by the test\n")
	for k, v := range settings {
		fmt.Fprintf(&conf, "%s = %q\n", k, v)
	}
	require.NoError(t, os.WriteFile(fa.conf, []byte(conf.String()), 0o600))

	go fa.supervise(bin)
	t.Cleanup(func() {
		fa.stop()
		if t.Failed() {
			t.Logf("flota-agent %s log:\n%s", id, fa.logString())
		}
	})
	return fa
}

// supervise starts the agent and starts it again each time it exits, until
// stop.
func (fa *flotaAgent) supervise(bin string) {
	defer close(fa.done)
	for {
		fa.mu.Lock()
		if fa.stopping || fa.starts >= maxStarts {
			fa.mu.Unlock()
			return
		}
		cmd := exec.Command(bin, "--config", fa.conf)
		cmd.Env = append(os.Environ(), "DEVICE_ROOT="+fa.root)
		cmd.Stdout, cmd.Stderr = fa, fa
		err := cmd.Start()
		fa.cmd = cmd
		fa.starts++
		fa.mu.Unlock()
		if err != nil {
			fmt.Fprintf(fa, "start: %v\n", err)
			return
		}
		_ = cmd.Wait()
		time.Sleep(50 * time.Millisecond) // not a synchronisation: bounds a crash loop's rate
	}
}

// kill SIGKILLs the running process; the supervisor starts it again.
func (fa *flotaAgent) kill() {
	fa.mu.Lock()
	defer fa.mu.Unlock()
	require.NoError(fa.t, fa.cmd.Process.Signal(syscall.SIGKILL))
}

// stop ends the supervisor and the process (SIGTERM).
func (fa *flotaAgent) stop() {
	fa.mu.Lock()
	fa.stopping = true
	cmd := fa.cmd
	fa.mu.Unlock()
	if cmd != nil {
		_ = cmd.Process.Signal(syscall.SIGTERM)
	}
	select {
	case <-fa.done:
	case <-time.After(30 * time.Second): // bounds a hang, not a speed
		_ = cmd.Process.Kill()
		<-fa.done
	}
}

// file returns the content of a file of the device root ("" if missing).
func (fa *flotaAgent) file(name string) string {
	b, err := os.ReadFile(filepath.Join(fa.root, name))
	if err != nil {
		return ""
	}
	return string(b)
}

// exists reports whether the state directory holds name.
func (fa *flotaAgent) stateHas(name string) bool {
	_, err := os.Stat(filepath.Join(fa.state, name))
	return err == nil
}

// heldOffset is the offset of the download the agent's state file holds,
// or -1.
func (fa *flotaAgent) heldOffset() int64 {
	b, err := os.ReadFile(filepath.Join(fa.state, "state.json"))
	if err != nil {
		return -1
	}
	var st struct {
		Held *struct {
			Offset int64             `json:"offset"`
			State  fleet.DeviceState `json:"state"`
		} `json:"held"`
	}
	if json.Unmarshal(b, &st) != nil || st.Held == nil || st.Held.State != fleet.StateDownloading {
		return -1
	}
	return st.Held.Offset
}

// confirmWhenAsked runs `flota-agent confirm` once the agent waits for it.
func (fa *flotaAgent) confirmWhenAsked(ctx context.Context) <-chan error {
	res := make(chan error, 1)
	go func() {
		for ctx.Err() == nil {
			if fa.stateHas("confirm.pending") {
				out, err := exec.Command(flotaAgentBin, "confirm", "--config", fa.conf).CombinedOutput()
				if err != nil {
					err = fmt.Errorf("%v: %s", err, out)
				}
				res <- err
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		res <- ctx.Err()
	}()
	return res
}

// requireDigest checks that file holds an image of the given SHA-256.
func requireDigest(t *testing.T, file, digest string) {
	t.Helper()
	b, err := os.ReadFile(file)
	require.NoError(t, err)
	sum := sha256.Sum256(b)
	require.Equal(t, digest, hex.EncodeToString(sum[:]), file)
}

func TestE2E_FlotaAgentInstallsConfirmsAndRollsBackAlongsideDevicesim(t *testing.T) {
	s := startServer(t)
	priv, pub := keyPair(t)
	sm := startSim(t, s, "--devices", "5", "--id-prefix", "mix-", "--model", "sim-a", "--tags", "grp=mix", "--public-key", pub)
	secrets := s.provisionAgents("fa-", 4)
	common := map[string]string{"tags": "grp=mix", "public-key": pub}
	with := func(kv ...string) map[string]string {
		m := map[string]string{}
		for k, v := range common {
			m[k] = v
		}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	good := startFlotaAgent(t, s, "fa-00001", secrets["fa-00001"], with("require-confirm", "true", "confirm-timeout", "2m"))
	failing := startFlotaAgent(t, s, "fa-00002", secrets["fa-00002"], with())
	unhealthy := startFlotaAgent(t, s, "fa-00003", secrets["fa-00003"], with())
	unconfirmed := startFlotaAgent(t, s, "fa-00004", secrets["fa-00004"], with("require-confirm", "true", "confirm-timeout", "1s"))
	require.NoError(t, os.WriteFile(filepath.Join(failing.root, "fail-install"), nil, 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(unhealthy.root, "unhealthy"), nil, 0o644))
	s.waitOnline(9)

	path, digest := image(t, 512<<10)
	fw := s.addSigned(path, "1.1.0", priv)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	confirmed := good.confirmWhenAsked(ctx)
	start := time.Now()
	id, st := s.runUpdate(fw, "mix")
	t.Logf("update with 9 devices (4 flota-agent, 2 reboots and 2 rollbacks among them) ended in %s", time.Since(start).Round(10*time.Millisecond))
	require.NoError(t, <-confirmed, "flota-agent confirm")

	assert.Equal(t, 6, st.Counts[fleet.StateSucceeded], "5 devicesim devices and fa-00001: %v", st.Counts)
	s.requireReasons(id, fleet.StateFailed, map[string]fleet.Reason{
		"fa-00002": fleet.ReasonInstallFailed, // the install command exited 1
		"fa-00003": fleet.ReasonBootFailed,    // the health command failed: rolled back
		"fa-00004": fleet.ReasonBootFailed,    // flota-agent confirm never came: rolled back
	})

	// The confirmed device runs the image, marked good; its download is gone.
	assert.Equal(t, "1.1.0\n", good.file("version"))
	assert.Equal(t, "1.1.0\n", good.file("marked-good"))
	requireDigest(t, filepath.Join(good.root, "slot-b"), digest)
	assert.Equal(t, "boot\n", good.file("boots"))
	// The failed install kept the old version and never rebooted.
	assert.Equal(t, "1.0.0\n", failing.file("version"))
	assert.Empty(t, failing.file("boots"))
	// The rolled-back devices booted the new version, then the old one again.
	for _, fa := range []*flotaAgent{unhealthy, unconfirmed} {
		assert.Equal(t, "1.0.0\n", fa.file("version"), fa.id)
		assert.Equal(t, "boot\nrollback\n", fa.file("boots"), fa.id)
		assert.Empty(t, fa.file("marked-good"), fa.id)
	}
	for _, fa := range []*flotaAgent{good, failing, unhealthy, unconfirmed} {
		poll(t, 10*time.Second, func() bool { return !fa.stateHas("image.part") }, fa.id+" discards its download")
		assert.NotContains(t, fa.logString(), fa.secret, "%s logs its secret", fa.id)
	}
	sum := sm.stop(t)
	assert.Equal(t, 5, sum.Updated)
}

func TestE2E_FlotaAgentKilledMidTransferResumesFromItsCheckpoint(t *testing.T) {
	const size = 8 << 20
	s := startServer(t)
	sm := startSim(t, s, "--devices", "3", "--id-prefix", "res-", "--model", "sim-a", "--tags", "grp=res")
	secrets := s.provisionAgents("fa-", 1)
	fa := startFlotaAgent(t, s, "fa-00001", secrets["fa-00001"], map[string]string{"tags": "grp=res", "checkpoint-bytes": "65536"})
	s.waitOnline(4)
	fw, digest := s.firmware(size, "1.1.0")

	start := time.Now()
	id := strings.TrimSpace(s.mustCLI("update", "create", "--firmware", fw, "--select", "tag:grp=res",
		"--chunk-size", "4096", "--window", "2", "--max-attempts", "1", "--confirm-timeout", "60s"))
	// Kill once the state file holds half a megabyte: a device that
	// started again from zero would be sent at least that much again.
	const killAt = 512 << 10
	deadline := time.Now().Add(60 * time.Second)
	for fa.heldOffset() < killAt {
		require.True(t, time.Now().Before(deadline), "no checkpoint past %d bytes", killAt)
		time.Sleep(2 * time.Millisecond)
	}
	fa.kill()
	_, code := s.cli("update", "watch", id, "--interval", "250ms")
	require.Zero(t, code)
	elapsed := time.Since(start)
	st := s.status(id)
	require.Equal(t, map[fleet.DeviceState]int{fleet.StateSucceeded: 4}, st.Counts)
	requireDigest(t, filepath.Join(fa.root, "slot-b"), digest)

	resent := st.BytesSent - 4*size
	t.Logf("SIGKILL mid-transfer: %d bytes re-sent (%d chunks of 4 KiB) for a %d-byte image; update of 4 devices took %s",
		resent, (resent+4095)/4096, size, elapsed.Round(10*time.Millisecond))
	assert.Less(t, resent, int64(256<<10), "resumed from a checkpoint at most 64 KiB behind, plus the window")
	assert.Contains(t, fa.logString(), "state restored")
	t.Logf("flota-agent peak RSS of the process that downloaded the rest of the image, installed it and rebooted: %s", fa.peakRSS())
	sm.stop(t)
}

// peakRSS is the largest max_rss_kib the agent's processes logged when
// they stopped (a reboot or a SIGTERM; a SIGKILLed one logs nothing).
func (fa *flotaAgent) peakRSS() string {
	peak := int64(-1)
	for _, l := range strings.Split(fa.logString(), "\n") {
		if _, v, ok := strings.Cut(l, "max_rss_kib="); ok && strings.Contains(l, "msg=stopped") {
			if n, err := strconv.ParseInt(strings.Fields(v)[0], 10, 64); err == nil && n > peak {
				peak = n
			}
		}
	}
	return fmt.Sprintf("%d KiB", peak)
}

func TestE2E_FlotaAgentRefusesABadSignature(t *testing.T) {
	s := startServer(t)
	_, pub := keyPair(t)
	otherPriv, _ := keyPair(t)
	sm := startSim(t, s, "--devices", "2", "--id-prefix", "sig-", "--model", "sim-a", "--tags", "grp=sig", "--public-key", pub)
	secrets := s.provisionAgents("fa-", 1)
	fa := startFlotaAgent(t, s, "fa-00001", secrets["fa-00001"], map[string]string{"tags": "grp=sig", "public-key": pub})
	s.waitOnline(3)
	path, _ := image(t, 64<<10)
	fw := s.addSigned(path, "1.1.0", otherPriv)
	start := time.Now()
	id, _ := s.runUpdate(fw, "sig")
	t.Logf("bad signature: update of 3 devices ended in %s", time.Since(start).Round(10*time.Millisecond))
	s.requireReasons(id, fleet.StateFailed, map[string]fleet.Reason{
		"fa-00001": fleet.ReasonBadSignature, "sig-00001": fleet.ReasonBadSignature, "sig-00002": fleet.ReasonBadSignature})
	assert.Equal(t, "1.0.0\n", fa.file("version"))
	assert.False(t, fa.stateHas("image.part"), "nothing downloaded")
	assert.Empty(t, fa.file("slot-b"), "nothing installed")
	requireUntouched(t, sm.stop(t), "1.0.0")
}

func TestE2E_FlotaAgentCancelledMidTransferDiscardsTheDownload(t *testing.T) {
	s := startServer(t)
	sm := startSim(t, s, "--devices", "2", "--id-prefix", "can-", "--model", "sim-a", "--tags", "grp=can")
	secrets := s.provisionAgents("fa-", 1)
	fa := startFlotaAgent(t, s, "fa-00001", secrets["fa-00001"], map[string]string{"tags": "grp=can", "checkpoint-bytes": "4096"})
	s.waitOnline(3)
	// Small chunks, one at a time: the transfer lasts long enough to be
	// cancelled in the middle on any machine.
	fw, _ := s.firmware(32<<20, "1.1.0")
	start := time.Now()
	id := strings.TrimSpace(s.mustCLI("update", "create", "--firmware", fw, "--select", "tag:grp=can",
		"--chunk-size", "1024", "--window", "1", "--max-attempts", "1"))
	poll(t, 60*time.Second, func() bool { return fa.heldOffset() > 0 }, "the download started")
	s.mustCLI("update", "cancel", id)
	poll(t, 30*time.Second, func() bool { return s.status(id).State.Terminal() }, "update "+id+" ends")
	t.Logf("cancel mid-transfer: update of 3 devices ended in %s", time.Since(start).Round(10*time.Millisecond))
	s.requireReasons(id, fleet.StateCancelled, map[string]fleet.Reason{
		"fa-00001": fleet.ReasonOperator, "can-00001": fleet.ReasonOperator, "can-00002": fleet.ReasonOperator})
	poll(t, 10*time.Second, func() bool { return !fa.stateHas("image.part") && fa.heldOffset() < 0 }, "the download is discarded")
	assert.Equal(t, "1.0.0\n", fa.file("version"))
	assert.Empty(t, fa.file("slot-b"), "nothing installed")
	assert.Contains(t, fa.logString(), "cancel")
	requireUntouched(t, sm.stop(t), "1.0.0")
}
