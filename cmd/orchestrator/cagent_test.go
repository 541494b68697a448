package main

// End-to-end tests of the C agent (agents/c): flota-agent-c processes, built
// with ASan and UBSan, against a real orchestrator, next to devicesim
// devices in the same updates.

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
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
	cagentOnce sync.Once
	cagentBin  string
	cagentErr  error
)

// cagentBinary builds flota-agent-c with sanitizers once per test run. It
// fails, naming scripts/deps.sh, when the C toolchain or the libmosquitto
// and libsodium headers are missing.
func cagentBinary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test with real processes")
	}
	// A missing toolchain fails the test with the command that installs it.
	testtool.Path(t, "cc")
	mk := testtool.Path(t, "make")
	for _, h := range []string{"/usr/include/mosquitto.h", "/usr/include/sodium.h"} {
		if _, err := os.Stat(h); err != nil {
			t.Fatalf("%s is missing: run ./scripts/deps.sh (make deps), which installs libmosquitto-dev and libsodium-dev as root or prints the apt-get command", h)
		}
	}
	cagentOnce.Do(func() {
		dir, err := os.MkdirTemp("", "flota-cagent-bin")
		if err != nil {
			cagentErr = err
			return
		}
		out, err := exec.Command(mk, "-C", "../../agents/c", "B="+dir, "san").CombinedOutput()
		if err != nil {
			cagentErr = fmt.Errorf("make -C agents/c san: %v\n%s", err, out)
			return
		}
		cagentBin = filepath.Join(dir, "flota-agent-c-san")
	})
	require.NoError(t, cagentErr)
	return cagentBin
}

// runLog is the output of a process, read by the test while it writes:
// b holds the current run's, all every run's.
type runLog struct {
	mu  sync.Mutex // guards b and all
	b   bytes.Buffer
	all bytes.Buffer // every run's output, for the failure log
}

func (l *runLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.all.Write(p)
	return l.b.Write(p)
}

func (l *runLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// cagent is one flota-agent-c process (and its later runs on the same state
// directory).
type cagent struct {
	t    *testing.T
	ID   string
	Dir  string
	args []string
	out  *runLog
	cmd  *exec.Cmd
	done chan error
}

// startCAgent provisions a device prefix+"00001" and starts flota-agent-c as
// that device, of model sim-a, with args added.
func startCAgent(t *testing.T, s *server, prefix string, args ...string) *cagent {
	t.Helper()
	bin := cagentBinary(t)
	creds := s.provision([]string{"--id-prefix", prefix, "--devices", "1", "--model", "sim-a"})
	c := &cagent{t: t, ID: prefix + "00001", Dir: filepath.Join(t.TempDir(), "state"), out: &runLog{}}
	c.args = append([]string{bin, "--broker", "tcp://" + s.mqttAddr, "--id", c.ID, "--credentials", creds,
		"--state-dir", c.Dir, "--model", "sim-a"}, args...)
	t.Cleanup(func() {
		c.kill()
		if t.Failed() {
			c.out.mu.Lock()
			t.Logf("flota-agent-c %s output:\n%s", c.ID, c.out.all.String())
			c.out.mu.Unlock()
		}
	})
	c.start()
	return c
}

// start runs the agent again on its state directory, with a fresh log.
func (c *cagent) start() {
	c.t.Helper()
	c.out.mu.Lock()
	c.out.b.Reset()
	c.out.mu.Unlock()
	c.cmd = exec.Command(c.args[0], c.args[1:]...)
	c.cmd.Env = append(os.Environ(), "ASAN_OPTIONS=detect_leaks=1:abort_on_error=0", "UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1")
	c.cmd.Stdout, c.cmd.Stderr = c.out, c.out
	// A hook's child left running holds the output pipe: Wait must not
	// wait for it.
	c.cmd.WaitDelay = 5 * time.Second
	require.NoError(c.t, c.cmd.Start())
	c.done = make(chan error, 1)
	go func(cmd *exec.Cmd, done chan error) { done <- cmd.Wait() }(c.cmd, c.done)
}

// kill SIGKILLs the agent, as a power cut.
func (c *cagent) kill() {
	if c.cmd == nil {
		return
	}
	_ = c.cmd.Process.Signal(syscall.SIGKILL)
	<-c.done
	c.cmd = nil
}

// stop ends the agent with SIGTERM and requires a clean exit: no sanitizer
// report, exit status 0.
func (c *cagent) stop() string {
	c.t.Helper()
	require.NotNil(c.t, c.cmd, "agent running")
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	var err error
	select {
	case err = <-c.done:
	case <-time.After(30 * time.Second):
		c.t.Fatalf("flota-agent-c did not exit on SIGTERM")
	}
	c.cmd = nil
	out := c.out.String()
	assert.NotContains(c.t, out, "runtime error", "UBSan")
	assert.NotContains(c.t, out, "Sanitizer", "ASan")
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		c.t.Errorf("flota-agent-c exited %d", ee.ExitCode())
	} else {
		require.NoError(c.t, err)
	}
	return out
}

// exited waits for the agent to exit by itself and requires a clean exit.
func (c *cagent) exited(within time.Duration) string {
	c.t.Helper()
	select {
	case err := <-c.done:
		c.cmd = nil
		require.NoError(c.t, err)
	case <-time.After(within):
		c.t.Fatalf("flota-agent-c did not exit within %s", within)
	}
	out := c.out.String()
	assert.NotContains(c.t, out, "runtime error", "UBSan")
	assert.NotContains(c.t, out, "Sanitizer", "ASan")
	return out
}

var persistedRE = regexp.MustCompile(`persist state=downloading update=\S+ offset=(\d+)`)

// persisted is the last offset of a downloading transfer the agent wrote to
// its state, in this run (-1: none).
func (c *cagent) persisted() int64 {
	m := persistedRE.FindAllStringSubmatch(c.out.String(), -1)
	if len(m) == 0 {
		return -1
	}
	n, _ := strconv.ParseInt(m[len(m)-1][1], 10, 64)
	return n
}

func (c *cagent) file(name string) string {
	b, err := os.ReadFile(filepath.Join(c.Dir, name))
	if err != nil {
		return ""
	}
	return string(b)
}

// slotDigest is the SHA-256 of the image in the agent's slot.
func (c *cagent) slotDigest() string {
	b, err := os.ReadFile(filepath.Join(c.Dir, "slot.bin"))
	require.NoError(c.t, err)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// stat is a figure of the agent's final stats line.
func stat(out, name string) int64 {
	m := regexp.MustCompile(`stats .*\b` + name + `=(\d+)`).FindStringSubmatch(out)
	if m == nil {
		return -1
	}
	n, _ := strconv.ParseInt(m[1], 10, 64)
	return n
}

func TestCAgent_SignedUpdateSucceedsAlongsideDevicesim(t *testing.T) {
	begin := time.Now()
	s := startServer(t)
	priv, pub := keyPair(t)
	c := startCAgent(t, s, "c-", "--tags", "grp=a", "--public-key", pub)
	sm := startSim(t, s, "--devices", "3", "--id-prefix", "sim-", "--model", "sim-a", "--tags", "grp=a", "--public-key", pub)
	s.waitOnline(4)

	path, digest := image(t, 300*1024)
	fw := s.addSigned(path, "1.1.0", priv)
	id, st := s.runUpdate(fw, "a")
	assert.Equal(t, fleet.UpdateCompleted, st.State)
	assert.Equal(t, map[fleet.DeviceState]int{fleet.StateSucceeded: 4}, st.Counts)
	s.requireReasons(id, fleet.StateSucceeded, map[string]fleet.Reason{c.ID: "", "sim-00001": "", "sim-00002": "", "sim-00003": ""})

	out := c.stop()
	assert.Equal(t, "1.1.0", c.file("version"), "the agent booted the new version")
	assert.Equal(t, "ok 1.1.0", c.file("confirmed"), "and confirmed it at the PUBACK of its hello")
	assert.Equal(t, digest, c.slotDigest())
	// The hello stated a 4 KiB buffer (1.1): the orchestrator sent 4 KiB
	// chunks, not the update's 16 KiB.
	assert.Contains(t, out, `"max_chunk":4096,"max_window":4`)
	assert.Contains(t, out, `"chunk_size":4096,"window":4`)
	assert.Contains(t, out, `"state":"rebooting"}}`, "hello after the reboot holds the transfer")
	assert.Zero(t, stat(out, "frames_bad"))
	assert.Equal(t, 3, sm.stop(t).Updated)
	t.Logf("signed update of 300 KiB, C agent and 3 devicesim devices: %s", time.Since(begin).Round(10*time.Millisecond))
}

func TestCAgent_SIGKILLMidTransferResumesFromPersistedOffset(t *testing.T) {
	begin := time.Now()
	const size = 2 << 20
	s := startServer(t)
	// Slow flash (2 ms per 4 KiB write) so that the kill lands mid-transfer.
	c := startCAgent(t, s, "k-", "--tags", "grp=k", "--write-delay-ms", "2")
	s.waitOnline(1)
	fw, digest := s.firmware(size, "1.1.0")
	id := strings.TrimSpace(s.mustCLI("update", "create", "--firmware", fw, "--select", "tag:grp=k", "--max-attempts", "1"))

	var held int64
	deadline := time.Now().Add(60 * time.Second)
	for held = c.persisted(); held < 256<<10; held = c.persisted() {
		require.True(t, time.Now().Before(deadline), "a persisted offset of 256 KiB")
		time.Sleep(5 * time.Millisecond)
	}
	c.kill()
	killed := time.Now()
	require.Less(t, held, int64(size), "killed mid-transfer")

	c.start()
	poll(t, 60*time.Second, func() bool { return strings.Contains(c.out.String(), `"state":"accepted","offset":`) }, "the resumed accept")
	m := regexp.MustCompile(`"state":"accepted","offset":(\d+)`).FindStringSubmatch(c.out.String())
	resumed, _ := strconv.ParseInt(m[1], 10, 64)
	sinceKill := time.Since(killed)

	assert.GreaterOrEqual(t, resumed, held, "resumes from what it persisted")
	assert.Contains(t, c.out.String(), `"offset":`+m[1]+`,"state":"downloading"}}`, "the hello told the held offset")

	_, code := s.cli("update", "watch", id, "--interval", "200ms")
	require.Zero(t, code)
	st := s.status(id)
	assert.Equal(t, map[fleet.DeviceState]int{fleet.StateSucceeded: 1}, st.Counts)
	out := c.stop()
	assert.Equal(t, digest, c.slotDigest(), "the resumed image is whole")
	m = regexp.MustCompile(`persist state=downloaded \S+ offset=\d+ applied=(\d+)`).FindStringSubmatch(out)
	require.NotNil(t, m, "the downloaded state persisted")
	assert.Equal(t, strconv.FormatInt(int64(size)-resumed, 10), m[1], "the second run wrote only what it lacked")
	resent := st.BytesSent - size
	assert.Less(t, resent, int64(64<<10), "bytes sent twice")
	t.Logf("killed at %d persisted bytes, resumed at %d of %d within %s of the kill; bytes re-sent %d; took %s",
		held, resumed, size, sinceKill.Round(time.Millisecond), resent, time.Since(begin).Round(10*time.Millisecond))
}

func TestCAgent_BadSignatureAndUnsignedImagesAreRefusedBeforeDownload(t *testing.T) {
	begin := time.Now()
	s := startServer(t)
	priv, pub := keyPair(t)
	_, otherPub := keyPair(t)
	c := startCAgent(t, s, "w-", "--tags", "grp=a", "--public-key", otherPub)
	u := startCAgent(t, s, "u-", "--tags", "grp=u", "--public-key", pub)
	sm := startSim(t, s, "--devices", "2", "--id-prefix", "sim-", "--model", "sim-a", "--tags", "grp=a", "--public-key", pub)
	s.waitOnline(4)

	path, _ := image(t, 64*1024)
	id, st := s.runUpdate(s.addSigned(path, "1.1.0", priv), "a")
	assert.Equal(t, 2, st.Counts[fleet.StateSucceeded], "the devicesim devices")
	s.requireReasons(id, fleet.StateFailed, map[string]fleet.Reason{c.ID: fleet.ReasonBadSignature})

	unsigned, _ := s.firmware(32*1024, "1.2.0")
	id, _ = s.runUpdate(unsigned, "u")
	s.requireReasons(id, fleet.StateFailed, map[string]fleet.Reason{u.ID: fleet.ReasonBadSignature})

	for _, a := range []*cagent{c, u} {
		out := a.stop()
		assert.Contains(t, out, `"state":"failed","reason":"bad_signature"`)
		assert.Zero(t, stat(out, "bytes_applied"), "nothing downloaded")
		assert.Zero(t, stat(out, "frames"), "no chunk sent")
		assert.Empty(t, a.file("version"), "nothing installed")
	}
	assert.Equal(t, 2, sm.stop(t).Updated)
	t.Logf("bad signature and unsigned image refused: %s", time.Since(begin).Round(10*time.Millisecond))
}

func TestCAgent_DowngradeRefusedUnlessSignedAsAllowed(t *testing.T) {
	begin := time.Now()
	s := startServer(t)
	priv, pub := keyPair(t)
	c := startCAgent(t, s, "d-", "--tags", "grp=d", "--version", "2.0.0", "--public-key", pub)
	sm := startSim(t, s, "--devices", "1", "--id-prefix", "sim-", "--model", "sim-a", "--version", "2.0.0", "--tags", "grp=d", "--public-key", pub)
	s.waitOnline(2)
	path, digest := image(t, 32*1024)

	id, st := s.runUpdate(s.addSigned(path, "1.5.0", priv), "d", "--allow-downgrade")
	assert.Equal(t, 2, st.Counts[fleet.StateRejected])
	s.requireReasons(id, fleet.StateRejected, map[string]fleet.Reason{c.ID: fleet.ReasonDowngradeRefused, "sim-00001": fleet.ReasonDowngradeRefused})

	_, st = s.runUpdate(s.addSigned(path, "1.5.0", priv, "--allow-downgrade"), "d", "--allow-downgrade")
	assert.Equal(t, 2, st.Counts[fleet.StateSucceeded])
	out := c.stop()
	assert.Contains(t, out, `"state":"rejected","reason":"downgrade_refused","version":"2.0.0"`)
	assert.Equal(t, "1.5.0", c.file("version"))
	assert.Equal(t, digest, c.slotDigest())
	assert.Equal(t, 1, sm.stop(t).Installs)
	t.Logf("downgrade refused, then allowed: %s", time.Since(begin).Round(10*time.Millisecond))
}

func TestCAgent_CorruptedChunksAreDroppedAndCorruptedImageFailsBadDigest(t *testing.T) {
	begin := time.Now()
	s := startServer(t)
	// One frame in 5 arrives with a flipped payload byte: the CRC-32C
	// drops it and the orchestrator sends it again.
	wire := startCAgent(t, s, "crc-", "--tags", "grp=a", "--corrupt-every", "7")
	// A byte flipped after the CRC (in storage): the SHA-256 catches it.
	flash := startCAgent(t, s, "sha-", "--tags", "grp=a", "--corrupt-stored")
	sm := startSim(t, s, "--devices", "2", "--id-prefix", "sim-", "--model", "sim-a", "--tags", "grp=a")
	s.waitOnline(4)
	fw, digest := s.firmware(64*1024, "1.1.0")
	id, st := s.runUpdate(fw, "a")
	assert.Equal(t, 3, st.Counts[fleet.StateSucceeded])
	s.requireReasons(id, fleet.StateFailed, map[string]fleet.Reason{flash.ID: fleet.ReasonBadDigest})
	assert.Positive(t, st.Resends)

	out := wire.stop()
	assert.Positive(t, stat(out, "frames_bad"), "corrupted frames dropped")
	assert.Equal(t, digest, wire.slotDigest())
	assert.Equal(t, "1.1.0", wire.file("version"))
	out = flash.stop()
	assert.Contains(t, out, `"state":"failed","reason":"bad_digest"`)
	assert.Empty(t, flash.file("version"), "nothing installed")
	assert.Equal(t, 2, sm.stop(t).Updated)
	t.Logf("corrupted chunks resent, corrupted image refused: %s", time.Since(begin).Round(10*time.Millisecond))
}

func TestCAgent_CancelDiscardsTheTransfer(t *testing.T) {
	begin := time.Now()
	s := startServer(t)
	c := startCAgent(t, s, "x-", "--tags", "grp=x", "--write-delay-ms", "5")
	sm := startSim(t, s, "--devices", "1", "--id-prefix", "sim-", "--model", "sim-a", "--tags", "grp=x", "--latency", "50ms")
	s.waitOnline(2)
	fw, _ := s.firmware(4<<20, "1.1.0")
	id := strings.TrimSpace(s.mustCLI("update", "create", "--firmware", fw, "--select", "tag:grp=x"))
	poll(t, 60*time.Second, func() bool { return c.persisted() > 0 }, "the C agent holds part of the image")
	s.mustCLI("update", "cancel", id)
	poll(t, 30*time.Second, func() bool { return strings.Contains(c.out.String(), `"state":"cancelled","reason":"operator"`) }, "the cancelled report")
	poll(t, 30*time.Second, func() bool { return s.status(id).State.Terminal() }, "the update ends")
	assert.Equal(t, fleet.UpdateCancelled, s.status(id).State)
	s.requireReasons(id, fleet.StateCancelled, map[string]fleet.Reason{c.ID: fleet.ReasonOperator, "sim-00001": fleet.ReasonOperator})

	out := c.stop()
	assert.Contains(t, out, "persist state=idle")
	_, err := os.Stat(filepath.Join(c.Dir, "slot.bin"))
	assert.True(t, os.IsNotExist(err), "the partial image is erased")
	assert.Empty(t, c.file("version"), "nothing installed")
	sm.stop(t)
	t.Logf("cancel mid-transfer: %s", time.Since(begin).Round(10*time.Millisecond))
}

func TestCAgent_DeviceThatNeverConfirmsFails(t *testing.T) {
	begin := time.Now()
	s := startServer(t)
	// The bootloader rolls back: the image it runs says 1.0.0 after the
	// reboot, so the hello holds the transfer and the old version.
	versionFile := filepath.Join(t.TempDir(), "fw-version")
	require.NoError(t, os.WriteFile(versionFile, []byte("1.0.0\n"), 0o644))
	rollback := startCAgent(t, s, "rb-", "--tags", "grp=n", "--version-file", versionFile)
	// Never comes back after its reboot.
	gone := startCAgent(t, s, "ng-", "--tags", "grp=n", "--no-boot")
	sm := startSim(t, s, "--devices", "1", "--id-prefix", "sim-", "--model", "sim-a", "--tags", "grp=n")
	s.waitOnline(3)
	fw, _ := s.firmware(64*1024, "1.1.0")
	id, st := s.runUpdate(fw, "n", "--confirm-timeout", "3s")
	assert.Equal(t, 1, st.Counts[fleet.StateSucceeded])
	s.requireReasons(id, fleet.StateFailed, map[string]fleet.Reason{rollback.ID: fleet.ReasonBootFailed, gone.ID: fleet.ReasonConfirmTimeout})

	out := rollback.stop()
	assert.Contains(t, out, `"version":"1.0.0"`, "hello on the old version")
	assert.Equal(t, "rollback 1.0.0", rollback.file("confirmed"))
	out = gone.exited(30 * time.Second)
	assert.Contains(t, out, "never comes back")
	assert.Equal(t, 1, sm.stop(t).Updated)
	t.Logf("rollback and no confirmation: %s", time.Since(begin).Round(10*time.Millisecond))
}

func TestCAgent_HungInstallCommandIsKilledAtItsTimeout(t *testing.T) {
	s := startServer(t)
	pids := filepath.Join(t.TempDir(), "installer.pid")
	// The installer hangs, and so does a child of its own.
	c := startCAgent(t, s, "hang-", "--tags", "grp=h", "--install-timeout", "2",
		"--install-command", `sleep 300 & echo $! >`+pids+`; wait`)
	s.waitOnline(1)
	fw, _ := s.firmware(16*1024, "1.1.0")
	id, st := s.runUpdate(fw, "h")
	assert.Equal(t, 1, st.Counts[fleet.StateFailed])
	s.requireReasons(id, fleet.StateFailed, map[string]fleet.Reason{c.ID: fleet.ReasonInstallFailed})

	out := c.stop()
	assert.Contains(t, out, "install command killed after 2s")
	b, err := os.ReadFile(pids)
	require.NoError(t, err)
	child, err := strconv.Atoi(strings.TrimSpace(string(b)))
	require.NoError(t, err)
	require.Eventually(t, func() bool { return syscall.Kill(child, 0) == syscall.ESRCH },
		30*time.Second, 50*time.Millisecond, "the installer's child was killed with its group")
}

func TestCAgent_InstallCommandInheritsNoSocket(t *testing.T) {
	s := startServer(t)
	fds := filepath.Join(t.TempDir(), "installer.fds")
	// The installer writes what its open descriptors point at.
	c := startCAgent(t, s, "fds-", "--tags", "grp=f",
		"--install-command", `for f in /proc/$$/fd/*; do readlink "$f" || true; done >`+fds)
	s.waitOnline(1)
	fw, _ := s.firmware(16*1024, "1.1.0")
	_, st := s.runUpdate(fw, "f")
	assert.Equal(t, 1, st.Counts[fleet.StateSucceeded])
	c.stop()
	b, err := os.ReadFile(fds)
	require.NoError(t, err)
	assert.NotContains(t, string(b), "socket:", "the installer holds none of the agent's sockets:\n%s", b)
}
