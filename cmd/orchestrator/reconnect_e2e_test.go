package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
)

// follower is an operator process that runs until the update ends (update
// watch, update events --follow) or until it is killed (mosquitto_sub).
type follower struct {
	cmd  *exec.Cmd
	mu   sync.Mutex // guards out and errb, written by exec's copiers
	out  bytes.Buffer
	errb bytes.Buffer
	done chan struct{} // closed when the process has exited
	err  error         // its exit, once done is closed
}

// lockedWriter serialises writes to a follower's buffers.
type lockedWriter struct {
	mu  *sync.Mutex
	buf *bytes.Buffer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

func startFollower(t *testing.T, env []string, name string, args ...string) *follower {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cliTimeout)
	f := &follower{cmd: exec.CommandContext(ctx, name, args...), done: make(chan struct{})}
	f.cmd.Env = append(os.Environ(), env...)
	f.cmd.Stdout, f.cmd.Stderr = lockedWriter{&f.mu, &f.out}, lockedWriter{&f.mu, &f.errb}
	require.NoError(t, f.cmd.Start())
	go func() { f.err = f.cmd.Wait(); cancel(); close(f.done) }()
	t.Cleanup(func() {
		_ = f.cmd.Process.Kill()
		<-f.done
	})
	return f
}

func (f *follower) stdout() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.out.String()
}

func (f *follower) stderr() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.errb.String()
}

func (f *follower) exited() bool {
	select {
	case <-f.done:
		return true
	default:
		return false
	}
}

// TestE2E_WatchersSurviveAnOrchestratorRestart stops the orchestrator with
// SIGTERM and starts it again while update watch, update events --follow
// and a real mosquitto_sub (MQTT 3.1.1, as it connects by default) follow
// an update: all three reconnect, the two commands say so on stderr, and
// each sees the update end after the restart.
func TestE2E_WatchersSurviveAnOrchestratorRestart(t *testing.T) {
	s := startServer(t)
	host, port, _ := strings.Cut(s.mqttAddr, ":")
	monSecret := strings.TrimSpace(s.mustCLI("monitor", "add", "ops"))
	// stdbuf: mosquitto_sub's output is block-buffered on a pipe. -d shows
	// each SUBACK, one per (re)connection.
	sub := startFollower(t, nil, requireTool(t, "stdbuf"), "-oL", requireTool(t, "mosquitto_sub"),
		"-h", host, "-p", port, "-i", "ops", "-u", "ops", "-P", monSecret, "-t", "flota/events/#", "-d")
	poll(t, 10*time.Second, func() bool { return strings.Count(sub.stdout(), "received SUBACK") == 1 }, "mosquitto_sub subscribes")

	startSim(t, s, "--devices", "5", "--id-prefix", "rs-", "--model", "sim-a")
	release := s.holdBack("rsh-") // the update cannot end before the restart
	s.waitOnline(5)
	fw, _ := s.firmware(64*1024, "1.1.0")
	id := strings.TrimSpace(s.mustCLI("update", "create", "--firmware", fw, "--select", "model=sim-a"))

	env := []string{"FLOTA_TOKEN=" + s.token, "FLOTA_SERVER=" + s.url}
	watch := startFollower(t, env, s.bin, "update", "watch", id, "--interval", "100ms", "--json")
	events := startFollower(t, env, s.bin, "update", "events", id, "--follow", "--interval", "100ms", "--json")
	poll(t, 30*time.Second, func() bool {
		return strings.Contains(watch.stdout(), id) && strings.Contains(events.stdout(), `"state":"succeeded"`) &&
			strings.Contains(sub.stdout(), `"state":"succeeded"`)
	}, "the three followers see devices succeed")

	require.NoError(t, s.cmdTerm(), "SIGTERM: exit status 0")
	require.False(t, sub.exited(), "mosquitto_sub exited on a graceful shutdown:\n%s", sub.stdout())
	// Both commands find the orchestrator gone before it comes back,
	// however quickly it would restart.
	poll(t, 30*time.Second, func() bool {
		return strings.Contains(watch.stderr(), "lost the orchestrator") && strings.Contains(events.stderr(), "lost the orchestrator")
	}, "the commands notice the orchestrator is gone")
	s.restart()
	poll(t, 60*time.Second, func() bool { return strings.Count(sub.stdout(), "received SUBACK") == 2 }, "mosquitto_sub subscribes again")
	release()

	for _, f := range []*follower{watch, events} {
		select {
		case <-f.done:
		case <-time.After(cliTimeout): // bounds a hang, not a speed
			t.Fatalf("%v still running", f.cmd.Args)
		}
		require.NoError(t, f.err, "%v:\n%s%s", f.cmd.Args, f.stdout(), f.stderr())
		assert.Contains(t, f.stderr(), "reconnected to the orchestrator", f.cmd.Args)
	}
	assert.Contains(t, lastLine(watch.stdout()), `"state":"completed"`)
	assert.Contains(t, events.stdout(), `"state":"completed"`)
	poll(t, 30*time.Second, func() bool { return updateEnded(sub.stdout(), id) }, "mosquitto_sub sees the update end after the restart")
	assert.False(t, sub.exited(), "mosquitto_sub keeps running:\n%s", sub.stdout())
}

// lastLine is the last non-empty line of out.
func lastLine(out string) string {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	return lines[len(lines)-1]
}

// updateEnded reports whether the event lines in out (mosquitto_sub's
// output) hold the event of update id completing.
func updateEnded(out, id string) bool {
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		var ev fleet.Event
		if json.Unmarshal(sc.Bytes(), &ev) == nil && ev.Type == fleet.EventUpdate && ev.UpdateID == id &&
			ev.State == string(fleet.UpdateCompleted) {
			return true
		}
	}
	return false
}
