package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/httpapi"
)

// growingLog serves GET /api/v1/updates/upd-1/events over a log that grows
// by step events per request and ends with the update's final event.
type growingLog struct {
	mu     sync.Mutex // guards stored
	total  int
	step   int
	final  fleet.UpdateState
	stored int
}

func (g *growingLog) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if r.URL.Path != "/api/v1/updates/upd-1/events" {
		w.WriteHeader(404)
		fmt.Fprint(w, `{"code":"update_not_found","message":"update not found"}`)
		return
	}
	g.stored = min(g.total, g.stored+g.step)
	after, _ := strconv.Atoi(r.URL.Query().Get("after"))
	limit, _ := strconv.Atoi(r.URL.Query().Get("limit"))
	out := httpapi.EventList{Events: []fleet.Event{}, Next: int64(after)}
	for seq := after + 1; seq <= g.stored && len(out.Events) < limit; seq++ {
		ev := fleet.Event{Seq: int64(seq), Type: fleet.EventDevice, UpdateID: "upd-1", DeviceID: fmt.Sprintf("d%d", seq),
			State: string(fleet.StateSucceeded)}
		if seq == g.total {
			ev = fleet.Event{Seq: int64(seq), Type: fleet.EventUpdate, UpdateID: "upd-1", State: string(g.final)}
		}
		out.Events = append(out.Events, ev)
		out.Next = ev.Seq
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(out)
}

func TestCLI_UpdateEventsFollowPrintsEachEventOnceUntilTheEnd(t *testing.T) {
	for _, tc := range []struct {
		final fleet.UpdateState
		code  int
	}{{fleet.UpdateCompleted, exitOK}, {fleet.UpdateCompletedWithFailures, exitFail}, {fleet.UpdateCancelled, exitFail}} {
		t.Run(string(tc.final), func(t *testing.T) {
			// 2,500 events, 700 more per poll: pages of 1,000 and waits mix.
			ts := httptest.NewServer(&growingLog{total: 2500, step: 700, final: tc.final})
			t.Cleanup(ts.Close)
			r := runCLI(t, ts.URL, "update", "events", "upd-1", "--follow", "--json", "--interval", "1ms", "--after", "10")
			require.Equal(t, tc.code, r.code, r.stderr)
			lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
			require.Len(t, lines, 2490)
			for i, line := range lines {
				var ev fleet.Event
				require.NoError(t, json.Unmarshal([]byte(line), &ev), line)
				require.Equal(t, int64(11+i), ev.Seq, "each event once, in order")
			}
			assert.Contains(t, lines[len(lines)-1], string(tc.final))
		})
	}
	t.Run("table", func(t *testing.T) {
		ts := httptest.NewServer(&growingLog{total: 5, step: 2, final: fleet.UpdateCompleted})
		t.Cleanup(ts.Close)
		r := runCLI(t, ts.URL, "update", "events", "upd-1", "--follow", "--interval", "1ms")
		require.Equal(t, exitOK, r.code, r.stderr)
		lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
		require.Len(t, lines, 6, r.stdout)
		assert.True(t, strings.HasPrefix(lines[0], "SEQ"))
		assert.Contains(t, lines[5], "completed")
	})
	t.Run("unknown update", func(t *testing.T) {
		ts := httptest.NewServer(&growingLog{})
		t.Cleanup(ts.Close)
		r := runCLI(t, ts.URL, "update", "events", "upd-2", "--follow")
		assert.Equal(t, exitFail, r.code)
		assert.Contains(t, r.stderr, "(update_not_found)")
	})
}

func TestCLI_UpdateWatchJSONLines(t *testing.T) {
	fake := &fakeEngineAPI{summaries: []fleet.UpdateSummary{
		summary(fleet.UpdateRunning, map[fleet.DeviceState]int{fleet.StateQueued: 4}),
		summary(fleet.UpdateRunning, map[fleet.DeviceState]int{fleet.StateQueued: 2, fleet.StateSucceeded: 2}),
		summary(fleet.UpdateCompletedWithFailures, map[fleet.DeviceState]int{fleet.StateSucceeded: 3, fleet.StateFailed: 1}),
	}}
	ts := httptest.NewServer(fake)
	t.Cleanup(ts.Close)
	r := runCLI(t, ts.URL, "update", "watch", "upd-1", "--interval", "1ms", "--json")
	assert.Equal(t, exitFail, r.code, "an update with failures exits 1")
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	require.Len(t, lines, 3, r.stdout)
	var last fleet.UpdateSummary
	require.NoError(t, json.Unmarshal([]byte(lines[2]), &last))
	assert.Equal(t, fleet.UpdateCompletedWithFailures, last.State)
}

func TestCLI_EveryReadCommandHasJSONAndEveryCommandAnExample(t *testing.T) {
	reads := []string{"firmware list", "update status", "update watch", "update list", "update devices",
		"update events", "device list", "device summary", "version"}
	for _, sp := range commands {
		t.Run(sp.name, func(t *testing.T) {
			if slices.Contains(reads, sp.name) {
				assert.Contains(t, sp.args, "--json")
			}
			r := runCLI(t, "", append(strings.Fields(sp.name), "--help")...)
			require.Equal(t, exitOK, r.code, r.stderr)
			assert.Regexp(t, `example:\n  .*orchestrator `+strings.Fields(sp.name)[0], r.stdout)
		})
	}
}

func TestCLI_Completion(t *testing.T) {
	r := runCLI(t, "", "completion", "bash")
	require.Equal(t, exitOK, r.code, r.stderr)
	for _, w := range []string{"complete -F _orchestrator orchestrator", "retry-failed", "--follow", "summary"} {
		assert.Contains(t, r.stdout, w)
	}
	z := runCLI(t, "", "completion", "zsh")
	require.Equal(t, exitOK, z.code, z.stderr)
	assert.True(t, strings.HasPrefix(z.stdout, "#compdef orchestrator\n"))
	assert.Equal(t, exitUsage, runCLI(t, "", "completion", "fish").code)

	bash := requireTool(t, "bash")
	// Run the script: complete "orchestrator update ev" and a flag.
	script := r.stdout + `
COMP_WORDS=(orchestrator update ev); COMP_CWORD=2; _orchestrator; echo "${COMPREPLY[*]}"
COMP_WORDS=(orchestrator update events u-1 --fo); COMP_CWORD=4; _orchestrator; echo "${COMPREPLY[*]}"
`
	out, err := exec.Command(bash, "-c", script).CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Equal(t, "events\n--follow\n", string(out))
}

func TestCLI_RetryFailedAndDeviceSummary(t *testing.T) {
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch r.Method + " " + r.URL.Path {
		case "POST /api/v1/updates/upd-1/retry-failed":
			fmt.Fprint(w, `{"retried":2,"update":{"id":"upd-1","state":"running"}}`)
		case "GET /api/v1/fleet/summary":
			fmt.Fprint(w, `{"total":3,"online":2,"offline":1,"versions":[{"model":"m1","version":"1.0","devices":3,"online":2}]}`)
		default:
			w.WriteHeader(404)
			fmt.Fprint(w, `{"code":"update_not_found","message":"update not found"}`)
		}
	}))
	t.Cleanup(ts.Close)
	r := runCLI(t, ts.URL, "update", "retry-failed", "upd-1")
	require.Equal(t, exitOK, r.code, r.stderr)
	assert.Equal(t, "update upd-1 running: 2 failed devices queued again\n", r.stdout)
	assert.Equal(t, exitFail, runCLI(t, ts.URL, "update", "retry-failed", "upd-9").code)

	r = runCLI(t, ts.URL, "device", "summary")
	require.Equal(t, exitOK, r.code, r.stderr)
	assert.Contains(t, r.stdout, "3 devices: 2 online, 1 offline")
	assert.Regexp(t, `m1\s+1.0\s+3\s+2`, r.stdout)
	r = runCLI(t, ts.URL, "device", "summary", "--json")
	require.Equal(t, exitOK, r.code, r.stderr)
	assert.JSONEq(t, `{"total":3,"online":2,"offline":1,"versions":[{"model":"m1","version":"1.0","devices":3,"online":2}]}`, r.stdout)

	r = runCLI(t, "", "version", "--json")
	require.Equal(t, exitOK, r.code)
	assert.JSONEq(t, `{"version":"`+version+`"}`, r.stdout)
}
