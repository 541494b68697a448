package main

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
)

// TestE2E_QoS1MonitorReceivesEveryEventSeq runs the real mosquitto_sub at
// QoS 1 (MQTT 3.1.1, as it connects by default) on the event stream while
// an update of many devices emits events in bursts, and checks that no
// sequence number between the first and the last it saw is missing.
func TestE2E_QoS1MonitorReceivesEveryEventSeq(t *testing.T) {
	const devices = 2000
	s := startServer(t)
	host, port, _ := strings.Cut(s.mqttAddr, ":")
	monSecret := strings.TrimSpace(s.mustCLI("monitor", "add", "monitor-seq"))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// stdbuf: mosquitto_sub's output is block-buffered on a pipe.
	mon := exec.CommandContext(ctx, requireTool(t, "stdbuf"), "-oL", requireTool(t, "mosquitto_sub"),
		"-h", host, "-p", port, "-i", "monitor-seq", "-u", "monitor-seq", "-P", monSecret,
		"-t", "flota/events/#", "-q", "1", "-d")
	pr, pw, err := os.Pipe()
	require.NoError(t, err)
	mon.Stdout, mon.Stderr = pw, pw
	require.NoError(t, mon.Start())
	pw.Close()
	t.Cleanup(func() { cancel(); _ = mon.Wait() })

	var mu sync.Mutex // guards seqs and lines
	seqs := map[int64]bool{}
	var first, last int64
	subscribed := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64*1024), 1024*1024)
		var once sync.Once
		for sc.Scan() {
			line := sc.Text()
			if strings.Contains(line, "received SUBACK") {
				once.Do(func() { close(subscribed) })
			}
			var ev fleet.Event
			if !strings.HasPrefix(line, "{") || json.Unmarshal([]byte(line), &ev) != nil || ev.Seq == 0 {
				continue
			}
			mu.Lock()
			seqs[ev.Seq] = true
			if first == 0 || ev.Seq < first {
				first = ev.Seq
			}
			last = max(last, ev.Seq)
			mu.Unlock()
		}
	}()
	select {
	case <-subscribed:
	case <-time.After(10 * time.Second):
		t.Fatal("mosquitto_sub did not subscribe")
	}

	startSim(t, s, "--devices", strconv.Itoa(devices), "--id-prefix", "seq-", "--model", "sim-a", "--version", "1.0.0")
	s.waitOnline(devices)
	fw, _ := s.firmware(32*1024, "1.1.0")
	id := strings.TrimSpace(s.mustCLI("update", "create", "--firmware", fw, "--select", "model=sim-a",
		"--max-in-flight", "1000"))
	_, code := s.cli("update", "watch", id, "--interval", "500ms")
	require.Zero(t, code, "watch exits 0 on a completed update")

	// Wait for the update's last stored event to arrive (or for time out:
	// a lost one never does).
	maxSeq, err := strconv.ParseInt(s.sqlite3("SELECT max(seq) FROM events WHERE update_id='"+id+"'"), 10, 64)
	require.NoError(t, err)
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		mu.Lock()
		done := last >= maxSeq
		mu.Unlock()
		if done {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, maxSeq, last, "the update's last event arrives")
	var missing []int64
	for q := first; q <= last; q++ {
		if !seqs[q] {
			missing = append(missing, q)
		}
	}
	require.Empty(t, missing, "%d of %d event seqs missing between %d and %d", len(missing), last-first+1, first, last)
	t.Logf("QoS 1 monitor during a %d-device update: %d event seqs, %d to %d, none missing", devices, last-first+1, first, last)
}
