package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/httpapi"
	"github.com/flotaio/flota/internal/rollout"
	"github.com/flotaio/flota/internal/sqlite"
)

// result is one CLI run.
type result struct {
	code           int
	stdout, stderr string
}

// runCLI runs args with FLOTA_SERVER set to server (if not empty) and
// FLOTA_TOKEN to the admin token.
func runCLI(t *testing.T, server string, args ...string) result {
	t.Helper()
	var out, errOut bytes.Buffer
	env := func(k string) string {
		if k == "FLOTA_TOKEN" {
			return testAdminToken
		}
		if k == "FLOTA_SERVER" {
			return server
		}
		return ""
	}
	c := newCLI(&out, &errOut, env)
	code := c.run(context.Background(), args)
	return result{code: code, stdout: out.String(), stderr: errOut.String()}
}

// newAPI serves the real API handler, without an engine, over a store in a
// temporary directory.
func newAPI(t *testing.T) (*sqlite.Store, string) {
	t.Helper()
	st := sqlite.New(t.TempDir())
	st.Logger = slog.New(slog.DiscardHandler)
	require.NoError(t, st.Open())
	t.Cleanup(func() { assert.NoError(t, st.Close()) })
	ts := httptest.NewServer((&httpapi.Server{Store: st, Version: "test", Tokens: testTokens(t)}).Handler())
	t.Cleanup(ts.Close)
	return st, ts.URL
}

func TestParseInterleaved_PositionalAndFlagsInAnyOrder(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		pos  []string
		ver  string
	}{
		{"flags after", []string{"fw.bin", "--version", "1.0"}, []string{"fw.bin"}, "1.0"},
		{"flags before", []string{"--version=1.0", "fw.bin"}, []string{"fw.bin"}, "1.0"},
		{"mixed", []string{"a", "-version", "1.0", "b"}, []string{"a", "b"}, "1.0"},
		{"double dash", []string{"--version", "1.0", "--", "--not-a-flag"}, []string{"--not-a-flag"}, "1.0"},
		{"none", nil, nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs := flag.NewFlagSet("t", flag.ContinueOnError)
			ver := fs.String("version", "", "")
			pos, err := parseInterleaved(fs, tc.args)
			require.NoError(t, err)
			assert.Equal(t, tc.pos, pos)
			assert.Equal(t, tc.ver, *ver)
		})
	}
}

func TestParseSelector_Criteria(t *testing.T) {
	for _, tc := range []struct {
		in   []string
		want fleet.Selector
	}{
		{[]string{"model=sensor-v2"}, fleet.Selector{Model: "sensor-v2"}},
		{[]string{"model=M,version=V,tag:site=lyon,device=d1,device=d2"}, fleet.Selector{
			Model: "M", Version: "V", Tags: map[string]string{"site": "lyon"}, Devices: []string{"d1", "d2"}}},
		{[]string{"tag:site=lyon", "tag:floor=2", "device=d1"}, fleet.Selector{
			Tags: map[string]string{"site": "lyon", "floor": "2"}, Devices: []string{"d1"}}},
		{[]string{" model = M , "}, fleet.Selector{Model: "M"}},
		{[]string{"model=M", "model=M"}, fleet.Selector{Model: "M"}},
	} {
		t.Run(strings.Join(tc.in, " "), func(t *testing.T) {
			var sel fleet.Selector
			for _, s := range tc.in {
				require.NoError(t, parseSelector(s, &sel))
			}
			assert.Equal(t, tc.want, sel)
		})
	}
	for _, bad := range []string{"model", "model=", "colour=red", "tag:=x", "device=bad/id", "device=inline", "=x"} {
		t.Run("bad "+bad, func(t *testing.T) {
			var sel fleet.Selector
			assert.Error(t, parseSelector(bad, &sel))
		})
	}
	t.Run("conflict", func(t *testing.T) {
		var sel fleet.Selector
		require.NoError(t, parseSelector("model=a,tag:k=1", &sel))
		assert.Error(t, parseSelector("model=b", &sel))
		assert.Error(t, parseSelector("tag:k=2", &sel))
	})
}

func TestParseSize_Suffixes(t *testing.T) {
	for in, want := range map[string]int{"16384": 16384, "16k": 16384, "4K": 4096, "64KiB": 65536, "0": 0} {
		got, err := parseSize(in)
		require.NoError(t, err, in)
		assert.Equal(t, want, got, in)
	}
	for _, bad := range []string{"", "k", "-1", "1.5k", "16MB"} {
		_, err := parseSize(bad)
		assert.Error(t, err, bad)
	}
}

func TestCLI_UsageErrorsExit2(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		msg  string
	}{
		{"no command", nil, "no command given"},
		{"unknown command", []string{"frobnicate"}, `unknown command "frobnicate"`},
		{"unknown subcommand", []string{"update", "explode"}, `unknown command "update explode"`},
		{"missing subcommand", []string{"firmware"}, "firmware: missing subcommand"},
		{"unknown flag", []string{"firmware", "list", "--colour"}, "flag provided but not defined: -colour"},
		{"bad flag value", []string{"update", "create", "--firmware", "f", "--window", "many"}, `invalid value "many" for flag -window`},
		{"bad selector", []string{"update", "create", "--firmware", "f", "--select", "colour=red"}, `unknown key "colour"`},
		{"missing required flag", []string{"firmware", "add", "fw.bin"}, "--version is required"},
		{"missing positional", []string{"firmware", "add", "--version", "1"}, "missing FILE"},
		{"extra positional", []string{"update", "status", "a", "b"}, `unexpected argument "b"`},
		{"max in flight 0", []string{"update", "create", "--firmware", "f", "--max-in-flight", "0"}, "--max-in-flight must be at least 1; leave it out for the default"},
		{"window 0", []string{"update", "create", "--firmware", "f", "--window", "0"}, "--window must be at least 1"},
		{"bad state", []string{"update", "devices", "u", "--state", "asleep"}, `unknown device state; the states are queued, `},
		{"bad log level", []string{"serve", "--log-level", "loud"}, `log level "loud"`},
		{"auto-approve without token", []string{"serve", "--auto-approve"}, "--auto-approve needs --enroll-token-file"},
		{"tls without key", []string{"serve", "--mqtt-tls", "127.0.0.1:0", "--tls-cert", "c.pem"}, "go together"},
		{"client CA without tls", []string{"serve", "--tls-client-ca", "ca.pem"}, "--tls-client-ca needs --mqtt-tls"},
		{"anonymous with external broker", []string{"serve", "--broker", "tcp://h:1883", "--allow-anonymous"}, "embedded broker"},
		{"bad memory limit", []string{"serve", "--memory-limit", "lots"}, `--memory-limit "lots"`},
		{"bad interval", []string{"update", "watch", "u", "--interval", "0s"}, "--interval must be positive"},
		{"version not semantic", []string{"firmware", "add", "fw.bin", "--version", "banana"}, `--version: version "banana" is not a semantic version`},
		{"device ID character", []string{"device", "add", "x@y"}, `ID "x@y": "@" at position 2 is not allowed; an ID holds letters, digits, '.', '_' and '-' only`},
		{"device ID reserved", []string{"device", "add", "inline"}, `"inline" is reserved`},
		{"maintenance hour", []string{"update", "create", "--firmware", "f", "--maintenance", "25:00-02:00"}, `maintenance window start "25:00": the hour 25 is out of range 00..23`},
		{"maintenance minute", []string{"update", "create", "--firmware", "f", "--maintenance", "22:00-02:75"}, `maintenance window end "02:75": the minute 75 is out of range 00..59`},
		{"maintenance without end", []string{"update", "create", "--firmware", "f", "--maintenance", "22:00"}, "want START-END"},
		{"event type", []string{"update", "events", "u", "--type", "phse"}, "the event types are update, device, phase, illegal_transition"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := runCLI(t, "http://127.0.0.1:1", tc.args...)
			assert.Equal(t, exitUsage, r.code)
			assert.True(t, strings.HasPrefix(r.stderr, "error: "), r.stderr)
			assert.Contains(t, r.stderr, tc.msg)
			assert.Empty(t, r.stdout)
		})
	}
}

func TestCLI_HelpShowsExample(t *testing.T) {
	r := runCLI(t, "", "firmware", "add", "--help")
	assert.Equal(t, exitOK, r.code)
	assert.Contains(t, r.stdout, "usage: orchestrator firmware add FILE --version V")
	assert.Contains(t, r.stdout, "example:\n  orchestrator firmware add ")
	assert.Contains(t, r.stdout, "-version")
	assert.Contains(t, r.stdout, "-server")

	r = runCLI(t, "", "help")
	assert.Equal(t, exitOK, r.code)
	for _, s := range commands {
		assert.Contains(t, r.stdout, s.name)
	}

	r = runCLI(t, "", "update", "--help")
	assert.Equal(t, exitOK, r.code)
	assert.Contains(t, r.stdout, "update watch")
}

func TestCLI_Version(t *testing.T) {
	r := runCLI(t, "", "version")
	assert.Equal(t, exitOK, r.code)
	assert.Equal(t, "orchestrator "+version+"\n", r.stdout)
}

func TestCLI_FirmwareAddAndList(t *testing.T) {
	_, server := newAPI(t)
	file := filepath.Join(t.TempDir(), "sensor-2.1.0.bin")
	require.NoError(t, os.WriteFile(file, bytes.Repeat([]byte{0xA5}, 5000), 0o644))

	// Flags after the positional argument, server from FLOTA_SERVER.
	r := runCLI(t, server, "firmware", "add", file, "--version", "2.1.0", "--model", "sensor-v2")
	require.Equal(t, exitOK, r.code, r.stderr)
	id := strings.TrimSpace(r.stdout)
	assert.Equal(t, r.stdout, id+"\n", "exactly one line")
	assert.True(t, strings.HasPrefix(id, "fw-"), id)

	// --server wins over FLOTA_SERVER.
	r = runCLI(t, "http://127.0.0.1:1", "firmware", "list", "--json", "--server", server)
	require.Equal(t, exitOK, r.code, r.stderr)
	var fws []fleet.Firmware
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &fws))
	require.Len(t, fws, 1)
	assert.Equal(t, id, fws[0].ID)
	assert.Equal(t, "sensor-2.1.0.bin", fws[0].Name, "name defaults to the file name")
	assert.Equal(t, "sensor-v2", fws[0].Model)
	assert.Equal(t, int64(5000), fws[0].Size)

	r = runCLI(t, server, "firmware", "list")
	require.Equal(t, exitOK, r.code, r.stderr)
	assert.Contains(t, r.stdout, id)
	assert.Contains(t, r.stdout, "4.9 KiB")

	r = runCLI(t, server, "firmware", "add", filepath.Join(t.TempDir(), "missing.bin"), "--version", "1")
	assert.Equal(t, exitFail, r.code)
	assert.Contains(t, r.stderr, "no such file")
}

func TestCLI_APIErrorExit1(t *testing.T) {
	_, server := newAPI(t)
	r := runCLI(t, server, "update", "devices", "upd-nope")
	assert.Equal(t, exitFail, r.code)
	assert.Regexp(t, `^error: .*update not found.* \(update_not_found\)\n$`, r.stderr)

	r = runCLI(t, "http://127.0.0.1:1", "device", "list")
	assert.Equal(t, exitFail, r.code)
	assert.Contains(t, r.stderr, "error: ")
}

func TestCLI_DeviceList(t *testing.T) {
	st, server := newAPI(t)
	for _, d := range []fleet.Device{
		{ID: "d1", Model: "m1", Version: "1.0", Online: true, Tags: map[string]string{"site": "lyon", "a": "b"}},
		{ID: "d2", Model: "m1", Version: "1.0", Online: false},
		{ID: "d3", Model: "m2", Version: "2.0", Online: true},
	} {
		require.NoError(t, st.SaveDevice(d))
	}
	require.NoError(t, st.Flush(context.Background()))

	r := runCLI(t, server, "device", "list", "--online", "--json")
	require.Equal(t, exitOK, r.code, r.stderr)
	var devs []fleet.Device
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &devs))
	require.Len(t, devs, 2)
	assert.Equal(t, "d1", devs[0].ID)
	assert.Equal(t, "d3", devs[1].ID)

	r = runCLI(t, server, "device", "list", "--model", "m1")
	require.Equal(t, exitOK, r.code, r.stderr)
	assert.Contains(t, r.stdout, "d1")
	assert.Contains(t, r.stdout, "d2")
	assert.NotContains(t, r.stdout, "d3")
	assert.Contains(t, r.stdout, "a=b,site=lyon")
}

func TestCLI_UpdateDevicesAndEvents(t *testing.T) {
	st, server := newAPI(t)
	ctx := context.Background()
	fw, err := st.AddFirmware(ctx, fleet.Firmware{Version: "2.0"}, strings.NewReader("image"))
	require.NoError(t, err)
	u := fleet.Update{ID: "upd-1", FirmwareID: fw.ID, Policy: fleet.Policy{}.WithDefaults(), State: fleet.UpdateRunning}
	require.NoError(t, st.CreateUpdate(ctx, u, []fleet.Progress{
		{UpdateID: u.ID, DeviceID: "d1", State: fleet.StateQueued},
		{UpdateID: u.ID, DeviceID: "d2", State: fleet.StateQueued},
	}))
	require.NoError(t, st.SaveProgress(fleet.Progress{UpdateID: u.ID, DeviceID: "d2", State: fleet.StateFailed,
		Reason: fleet.ReasonBadDigest, Attempts: 3}, 1))
	for seq := int64(1); seq <= 3; seq++ {
		require.NoError(t, st.AppendEvent(fleet.Event{Seq: seq, Time: time.Now(), Type: fleet.EventDevice,
			UpdateID: u.ID, DeviceID: "d2", From: "queued", State: "offered"}))
	}
	require.NoError(t, st.Flush(ctx))

	r := runCLI(t, server, "update", "devices", "upd-1", "--state", "failed")
	require.Equal(t, exitOK, r.code, r.stderr)
	assert.Contains(t, r.stdout, "d2")
	assert.Contains(t, r.stdout, "bad_digest")
	assert.NotContains(t, r.stdout, "d1 ")

	r = runCLI(t, server, "update", "devices", "upd-1", "--json")
	require.Equal(t, exitOK, r.code, r.stderr)
	var ps []fleet.Progress
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &ps))
	assert.Len(t, ps, 2)

	r = runCLI(t, server, "update", "events", "upd-1", "--after", "1", "--json")
	require.Equal(t, exitOK, r.code, r.stderr)
	var evs []fleet.Event
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &evs))
	require.Len(t, evs, 2)
	assert.Equal(t, int64(2), evs[0].Seq)

	r = runCLI(t, server, "update", "events", "upd-1")
	require.Equal(t, exitOK, r.code, r.stderr)
	assert.Contains(t, r.stdout, "queued -> offered")
	assert.Equal(t, 4, strings.Count(r.stdout, "\n"), "a header and three events")
}

// fakeEngineAPI answers the engine routes with canned data, for the commands
// whose real routes need a running engine.
type fakeEngineAPI struct {
	mu        sync.Mutex // guards the fields below
	created   *rollout.CreateRequest
	summaries []fleet.UpdateSummary // GET /updates/{id} answers these in turn, then the last one
	polls     int
}

func (f *fakeEngineAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	switch {
	case r.Method == "POST" && r.URL.Path == "/api/v1/updates":
		var req rollout.CreateRequest
		dec := json.NewDecoder(r.Body)
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			w.WriteHeader(400)
			fmt.Fprintf(w, `{"code":"invalid_input","message":%q}`, err.Error())
			return
		}
		f.created = &req
		w.WriteHeader(201)
		fmt.Fprint(w, `{"id":"u-new","firmware":{"id":"`+req.FirmwareID+`"},"state":"running"}`)
	case r.Method == "GET" && r.URL.Path == "/api/v1/updates/upd-1":
		s := f.summaries[min(f.polls, len(f.summaries)-1)]
		f.polls++
		_ = json.NewEncoder(w).Encode(s)
	case r.Method == "POST" && strings.HasPrefix(r.URL.Path, "/api/v1/updates/upd-1/"):
		s := f.summaries[0]
		s.State = fleet.UpdatePaused
		_ = json.NewEncoder(w).Encode(s)
	default:
		w.WriteHeader(404)
		fmt.Fprint(w, `{"code":"update_not_found","message":"update not found"}`)
	}
}

func summary(state fleet.UpdateState, counts map[fleet.DeviceState]int) fleet.UpdateSummary {
	total := 0
	for _, n := range counts {
		total += n
	}
	return fleet.UpdateSummary{
		Update:   fleet.Update{ID: "upd-1", FirmwareID: "fw-1", State: state},
		Firmware: fleet.Firmware{ID: "fw-1", Name: "img", Version: "2.0", Size: 1 << 20},
		Total:    total, Counts: counts, RateBps: 2 << 20, ETASeconds: 3.4,
	}
}

func TestCLI_UpdateCreateSendsRequest(t *testing.T) {
	fake := &fakeEngineAPI{}
	ts := httptest.NewServer(fake)
	t.Cleanup(ts.Close)

	r := runCLI(t, ts.URL, "update", "create", "--firmware", "fw-1",
		"--select", "model=m1,tag:site=lyon,device=d1", "--select", "device=d2",
		"--max-in-flight", "10", "--window", "16", "--chunk-size", "4k", "--max-attempts", "5")
	require.Equal(t, exitOK, r.code, r.stderr)
	assert.Equal(t, "u-new\n", r.stdout)
	require.NotNil(t, fake.created)
	assert.Equal(t, rollout.CreateRequest{
		FirmwareID: "fw-1",
		Selector:   fleet.Selector{Model: "m1", Tags: map[string]string{"site": "lyon"}, Devices: []string{"d1", "d2"}},
		Policy:     fleet.Policy{MaxInFlight: 10, Window: 16, ChunkSize: 4096, MaxAttempts: 5},
	}, *fake.created)
}

func TestCLI_UpdateStatusAndControl(t *testing.T) {
	fake := &fakeEngineAPI{summaries: []fleet.UpdateSummary{
		summary(fleet.UpdateRunning, map[fleet.DeviceState]int{fleet.StateQueued: 3, fleet.StateSucceeded: 1}),
	}}
	ts := httptest.NewServer(fake)
	t.Cleanup(ts.Close)

	r := runCLI(t, ts.URL, "update", "status", "upd-1")
	require.Equal(t, exitOK, r.code, r.stderr)
	for _, s := range []string{"running", "1/4 finished", "queued 3, succeeded 1", "2.0 MiB/s", "3s"} {
		assert.Contains(t, r.stdout, s)
	}

	r = runCLI(t, ts.URL, "update", "status", "upd-1", "--json")
	require.Equal(t, exitOK, r.code, r.stderr)
	var got fleet.UpdateSummary
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &got))
	assert.Equal(t, 4, got.Total)

	r = runCLI(t, ts.URL, "update", "pause", "upd-1")
	require.Equal(t, exitOK, r.code, r.stderr)
	assert.Equal(t, "update upd-1 paused\n", r.stdout)

	r = runCLI(t, ts.URL, "update", "cancel", "upd-2")
	assert.Equal(t, exitFail, r.code)
	assert.Equal(t, "error: update not found (update_not_found)\n", r.stderr)
}

func TestCLI_UpdateWatch(t *testing.T) {
	running := func(q, ok int) fleet.UpdateSummary {
		return summary(fleet.UpdateRunning, map[fleet.DeviceState]int{fleet.StateQueued: q, fleet.StateSucceeded: ok})
	}
	for _, tc := range []struct {
		name  string
		final fleet.UpdateSummary
		code  int
	}{
		{"completed", summary(fleet.UpdateCompleted, map[fleet.DeviceState]int{fleet.StateSucceeded: 4}), exitOK},
		{"with failures", summary(fleet.UpdateCompletedWithFailures,
			map[fleet.DeviceState]int{fleet.StateSucceeded: 3, fleet.StateFailed: 1}), exitFail},
		{"cancelled", summary(fleet.UpdateCancelled,
			map[fleet.DeviceState]int{fleet.StateSucceeded: 2, fleet.StateCancelled: 2}), exitFail},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fake := &fakeEngineAPI{summaries: []fleet.UpdateSummary{
				running(4, 0), running(4, 0), running(2, 2), running(2, 2), tc.final,
			}}
			ts := httptest.NewServer(fake)
			t.Cleanup(ts.Close)

			r := runCLI(t, ts.URL, "update", "watch", "upd-1", "--interval", "1ms")
			assert.Equal(t, tc.code, r.code, r.stderr)
			lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
			// Not a TTY: one line per change (3 changes), then the final counts.
			require.Len(t, lines, 4, r.stdout)
			assert.Contains(t, lines[0], "0/4")
			assert.Contains(t, lines[1], "2/4")
			assert.Contains(t, lines[2], string(tc.final.State))
			assert.Equal(t, fmt.Sprintf("update upd-1 %s: %s", tc.final.State, formatCounts(tc.final.Counts)), lines[3])
			assert.NotContains(t, r.stdout, "\r")
		})
	}

	t.Run("tty redraws one line", func(t *testing.T) {
		fake := &fakeEngineAPI{summaries: []fleet.UpdateSummary{running(4, 0), running(2, 2),
			summary(fleet.UpdateCompleted, map[fleet.DeviceState]int{fleet.StateSucceeded: 4})}}
		ts := httptest.NewServer(fake)
		t.Cleanup(ts.Close)
		var out bytes.Buffer
		c := &cli{stdout: &out, stderr: &out, getenv: func(string) string { return "" }, tty: true}
		code, err := c.watch(context.Background(), NewClient(ts.URL), "upd-1", time.Millisecond, 0)
		require.NoError(t, err)
		assert.Equal(t, exitOK, code)
		assert.Equal(t, 3, strings.Count(out.String(), "\r"))
		assert.Equal(t, 2, strings.Count(out.String(), "\n"), "the bar line, then the final counts")
	})

	t.Run("unknown update", func(t *testing.T) {
		ts := httptest.NewServer(&fakeEngineAPI{})
		t.Cleanup(ts.Close)
		r := runCLI(t, ts.URL, "update", "watch", "upd-2")
		assert.Equal(t, exitFail, r.code)
		assert.Contains(t, r.stderr, "(update_not_found)")
	})
}

func TestHumanBytes(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 1536: "1.5 KiB",
		5 << 20: "5.0 MiB", 3 << 30: "3.0 GiB"} {
		assert.Equal(t, want, humanBytes(n), n)
	}
}
