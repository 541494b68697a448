package main

// Tests of what operators look at: the dashboard in a real headless
// Chromium, and /metrics parsed with Prometheus's own parser, both against
// the production wiring (Main) and reference agents on its broker.

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	dto "github.com/prometheus/client_model/go"

	"github.com/flotaio/flota/agent"
	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/rollout"
)

// fleetMain runs Main and n agents named prefix000.. on its broker, all
// registered when it returns.
func fleetMain(t *testing.T, groups ...agentGroup) (*Main, *Client) {
	m, c, _ := fleetMainAgents(t, groups...)
	return m, c
}

// fleetMainAgents is fleetMain that also returns the agents by device ID,
// with their configurations, to take one away and start it again.
func fleetMainAgents(t *testing.T, groups ...agentGroup) (*Main, *Client, map[string]testAgent) {
	t.Helper()
	m := newTestMain(t)
	m.Config.AllowAnonymous = true // the agents here test the dashboard, not authentication
	require.NoError(t, m.Run(context.Background()))
	t.Cleanup(func() { assert.NoError(t, m.Close()) })
	agents := map[string]testAgent{}
	for _, g := range groups {
		for i := range g.n {
			cfg := agent.Config{
				Broker: "tcp://" + m.MQTTAddr(), ID: fmt.Sprintf("%s%03d", g.prefix, i),
				Model: "sensor", Version: "1.0.0", RebootDelay: 50 * time.Millisecond,
				InstallDelay: g.install, Seed: uint64(len(agents) + 1), Logger: m.Logger,
				Faults: agent.Faults{FailInstall: g.failInstall},
			}
			agents[cfg.ID] = testAgent{Agent: startAgent(t, cfg), cfg: cfg}
		}
	}
	c := adminClient(m)
	poll(t, 20*time.Second, func() bool {
		l, err := c.ListDevices(context.Background(), DeviceQuery{Limit: 1})
		return err == nil && l.Total == len(agents)
	}, "agents registered")
	return m, c, agents
}

// testAgent is an agent of fleetMainAgents and its configuration.
type testAgent struct {
	*agent.Agent
	cfg agent.Config
}

// startAgent starts an agent, closed when the test ends.
func startAgent(t *testing.T, cfg agent.Config) *agent.Agent {
	t.Helper()
	a := agent.New(cfg)
	require.NoError(t, a.Start(context.Background()))
	t.Cleanup(func() { a.Close() })
	return a
}

type agentGroup struct {
	prefix      string
	n           int
	install     time.Duration // simulated install time: holds the device's slot
	failInstall float64       // probability that an install fails
}

func addImage(t *testing.T, c *Client, size int, version string) fleet.Firmware {
	t.Helper()
	img := make([]byte, size)
	_, _ = rand.Read(img)
	fw, err := c.AddFirmware(context.Background(), fleet.Firmware{Name: "app", Version: version, Model: "sensor"},
		bytes.NewReader(img), int64(size))
	require.NoError(t, err)
	return fw
}

func deviceIDs(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s%03d", prefix, i)
	}
	return out
}

func TestDashboard_UpdatePageShowsProgressAndPauses(t *testing.T) {
	wd := startBrowser(t)
	_, c, agents := fleetMainAgents(t,
		agentGroup{prefix: "a-", n: 10, install: 150 * time.Millisecond},
		agentGroup{prefix: "b-", n: 10, install: 5 * time.Second})
	ctx := context.Background()
	fw := addImage(t, c, 256<<10, "2.0.0")

	// The last device of update A is away until the page has shown the
	// others done: however slowly the page is sampled, it sees a figure
	// between the first and 100%.
	const late = "a-009"
	require.NoError(t, agents[late].Close())
	poll(t, 20*time.Second, func() bool {
		d, err := c.Device(ctx, late)
		return err == nil && !d.Online
	}, late+" is away")

	// Update A: created and paused at once through the API, so that the
	// page first shows it part-way; resumed from the page, it must reach 100%.
	a, err := c.CreateUpdate(ctx, rollout.CreateRequest{FirmwareID: fw.ID,
		Selector: fleet.Selector{Devices: deviceIDs("a-", 10)}, Policy: fleet.Policy{MaxInFlight: 1}})
	require.NoError(t, err)
	_, err = c.Pause(ctx, a.ID)
	require.NoError(t, err)

	shots := t.TempDir()
	wd.open(c.BaseURL + "/#/updates/" + a.ID)
	// The dashboard asks for a token first; a wrong one is refused.
	wd.signIn("flota_not-a-token-of-this-server")
	poll(t, 10*time.Second, func() bool { return strings.Contains(wd.text("#login-error"), "not accepted") }, "a wrong token is refused")
	assert.Empty(t, wd.text("#u-state"), "nothing is shown without a valid token")
	wd.signIn(testAdminToken)
	poll(t, 20*time.Second, func() bool { return wd.text("#u-state") == "paused" }, "the page shows update A paused")
	poll(t, 10*time.Second, func() bool { return wd.text("#live") == "live" }, "the event stream connected")
	pct := func() int {
		n, err := strconv.Atoi(strings.TrimSuffix(wd.text("#u-pct"), "%"))
		if err != nil {
			return -1
		}
		return n
	}
	first := pct()
	require.GreaterOrEqual(t, first, 0)
	require.Less(t, first, 100, "a paused update of 10 devices, one at a time, is not done")

	wd.click("#btn-resume")
	assert.Contains(t, wd.acceptConfirm(), a.ID)
	seen := []int{first}
	docShot := os.Getenv("FLOTA_DASHBOARD_PNG") // regenerates docs/dashboard.png when set
	// reaches samples the page until it shows want percent, noting each
	// figure it showed.
	reaches := func(want int) func() bool {
		return func() bool {
			p := pct()
			if p >= 0 && p != seen[len(seen)-1] {
				seen = append(seen, p)
				if docShot != "" && p >= 50 && p < 100 {
					require.NoError(t, os.WriteFile(docShot, wd.screenshot(), 0o644))
					docShot = ""
				}
			}
			return p == want
		}
	}
	poll(t, 60*time.Second, reaches(90), "update A's devices but "+late+" finish on the page")
	startAgent(t, agents[late].cfg)
	poll(t, 60*time.Second, reaches(100), "update A reaches 100% on the page")
	assert.True(t, slices.IsSorted(seen), "progress only moves forward: %v", seen)
	assert.Greater(t, len(seen), 2, "the page showed progress moving: %v", seen)
	poll(t, 10*time.Second, func() bool { return wd.text("#u-state") == "completed" }, "update A completed on the page")
	assert.Equal(t, "10", wd.text(`#u-counts [data-state="succeeded"] b`))
	rows := 0
	wd.script(`return document.querySelectorAll("#d-body tr").length`, &rows)
	assert.Equal(t, 10, rows, "the devices table lists the update's devices")
	require.NoError(t, os.WriteFile(filepath.Join(shots, "update-completed.png"), wd.screenshot(), 0o644))

	// Update B: one device at a time with a 5 s install, so it is running
	// when the pause button is clicked.
	b, err := c.CreateUpdate(ctx, rollout.CreateRequest{FirmwareID: fw.ID,
		Selector: fleet.Selector{Devices: deviceIDs("b-", 10)}, Policy: fleet.Policy{MaxInFlight: 1}})
	require.NoError(t, err)
	wd.open(c.BaseURL + "/#/updates/" + b.ID)
	poll(t, 20*time.Second, func() bool { return wd.text("#u-state") == "running" }, "the page shows update B running")
	wd.click("#btn-pause")
	assert.Contains(t, wd.acceptConfirm(), "Pause update "+b.ID)
	poll(t, 10*time.Second, func() bool { return wd.text("#u-state") == "paused" }, "the page shows update B paused")
	sum, err := c.Update(ctx, b.ID)
	require.NoError(t, err)
	assert.Equal(t, fleet.UpdatePaused, sum.State, "the button paused the update")
	var disabled bool
	wd.script(`return document.querySelector("#btn-pause").disabled`, &disabled)
	assert.True(t, disabled, "a paused update cannot be paused again")
	require.NoError(t, os.WriteFile(filepath.Join(shots, "update-paused.png"), wd.screenshot(), 0o644))

	wd.open(c.BaseURL + "/#/fleet")
	poll(t, 10*time.Second, func() bool { return wd.text("#f-total") == "20" }, "the fleet page counts the devices")
	assert.Equal(t, "20", wd.text("#f-online"))
	assert.Contains(t, wd.text("#f-versions"), "sensor 2.0.0")
	require.NoError(t, os.WriteFile(filepath.Join(shots, "fleet.png"), wd.screenshot(), 0o644))

	// Signed out, then in with a read token: the page shows the update,
	// live, but the server refuses to resume it.
	wd.click("#logout")
	wd.open(c.BaseURL + "/#/updates/" + b.ID)
	wd.signIn(testReadToken)
	poll(t, 20*time.Second, func() bool { return wd.text("#u-state") == "paused" }, "a read token shows update B")
	poll(t, 10*time.Second, func() bool { return wd.text("#live") == "live" }, "the event stream connected with a read token")
	wd.click("#btn-resume")
	wd.acceptConfirm()
	poll(t, 10*time.Second, func() bool { return strings.Contains(wd.text("#toast"), "scope read") }, "the page reports the refusal")
	sum, err = c.Update(ctx, b.ID)
	require.NoError(t, err)
	assert.Equal(t, fleet.UpdatePaused, sum.State, "a read token did not resume the update")
	t.Logf("screenshots in %s", shots)
}

// scrape fetches /metrics and parses it with Prometheus's text parser.
func scrape(t *testing.T, base string) map[string]*dto.MetricFamily {
	t.Helper()
	req, err := http.NewRequest("GET", base+"/metrics", nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+testReadToken) // what a Prometheus scraper is given
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	require.NoError(t, err)
	return fams
}

// value returns the value of the family's sample whose labels include
// labels (name, value pairs), or -1.
func value(fams map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	f := fams[name]
	if f == nil {
		return -1
	}
next:
	for _, m := range f.GetMetric() {
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, l := range m.GetLabel() {
				if l.GetName() == labels[i] && l.GetValue() == labels[i+1] {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Summary != nil:
			return float64(m.Summary.GetSampleCount())
		}
	}
	return -1
}

func TestMetrics_KeySeriesMoveDuringUpdate(t *testing.T) {
	m, c := fleetMain(t, agentGroup{prefix: "m-", n: 20, install: 300 * time.Millisecond})
	ctx := context.Background()
	before := scrape(t, m.HTTPURL())
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes", "flota_build_info",
		"flota_broker_messages_dropped_total", "flota_store_commit_duration_seconds", "flota_store_batch_writes"} {
		assert.Contains(t, before, name)
	}
	assert.Equal(t, 20.0, value(before, "flota_devices_registered"))
	assert.Equal(t, 20.0, value(before, "flota_devices_connected"))
	assert.GreaterOrEqual(t, value(before, "flota_broker_clients"), 20.0)
	assert.GreaterOrEqual(t, value(before, "flota_broker_connections"), 20.0)
	assert.Equal(t, 0.0, value(before, "flota_broker_connect_timeouts_total"))
	assert.Equal(t, 0.0, value(before, "flota_transfer_chunks_sent_total"))
	assert.Equal(t, 0.0, value(before, "flota_updates", "state", "running"))

	fw := addImage(t, c, 128<<10, "2.0.0")
	u, err := c.CreateUpdate(ctx, rollout.CreateRequest{FirmwareID: fw.ID, Policy: fleet.Policy{MaxInFlight: 2}})
	require.NoError(t, err)

	// While it runs: devices by state for this update, no device labels.
	poll(t, 30*time.Second, func() bool {
		during := scrape(t, m.HTTPURL())
		return value(during, "flota_updates", "state", "running") == 1 &&
			value(during, "flota_update_devices", "update", u.ID, "state", "succeeded") > 0 &&
			value(during, "flota_update_devices", "update", u.ID, "state", "queued") > 0
	}, "devices by state move while the update runs")
	for _, mf := range scrape(t, m.HTTPURL()) {
		for _, mt := range mf.GetMetric() {
			for _, l := range mt.GetLabel() {
				assert.NotEqual(t, "device", l.GetName(), "%s has a device label", mf.GetName())
			}
		}
	}

	poll(t, 60*time.Second, func() bool {
		s, err := c.Update(ctx, u.ID)
		return err == nil && s.State.Terminal()
	}, "update ends")
	// The store records the end a moment after the engine reports it.
	var after map[string]*dto.MetricFamily
	poll(t, 10*time.Second, func() bool {
		after = scrape(t, m.HTTPURL())
		return value(after, "flota_updates", "state", "completed") == 1
	}, "the completed update is counted")
	assert.Equal(t, -1.0, value(after, "flota_update_devices", "update", u.ID), "a finished update leaves the per-update series")
	chunks := value(after, "flota_transfer_chunks_sent_total")
	assert.GreaterOrEqual(t, chunks, 20.0*8, "128 KiB in 16 KiB chunks to 20 devices")
	assert.GreaterOrEqual(t, value(after, "flota_transfer_sent_bytes_total"), 20.0*128*1024)
	assert.GreaterOrEqual(t, value(after, "flota_transfer_acks_total"), 20.0)
	assert.Greater(t, value(after, "flota_store_transactions_total"), value(before, "flota_store_transactions_total"))
	assert.Greater(t, value(after, "flota_store_writes_total"), value(before, "flota_store_writes_total"))
	assert.Greater(t, value(after, "flota_store_commit_duration_seconds"), value(before, "flota_store_commit_duration_seconds"))
}

func TestAPI_RetryFailedQueuesFailedDevicesAgain(t *testing.T) {
	_, c := fleetMain(t, agentGroup{prefix: "ok-", n: 3}, agentGroup{prefix: "bad-", n: 2, failInstall: 1})
	ctx := context.Background()
	fw := addImage(t, c, 32<<10, "2.0.0")
	u, err := c.CreateUpdate(ctx, rollout.CreateRequest{FirmwareID: fw.ID})
	require.NoError(t, err)
	var sum fleet.UpdateSummary
	poll(t, 30*time.Second, func() bool {
		sum, err = c.Update(ctx, u.ID)
		return err == nil && sum.State.Terminal()
	}, "update ends")
	require.Equal(t, fleet.UpdateCompletedWithFailures, sum.State)
	require.Equal(t, 2, sum.Counts[fleet.StateFailed])

	res, err := c.RetryFailed(ctx, u.ID)
	require.NoError(t, err)
	assert.Equal(t, 2, res.Retried)
	assert.Equal(t, u.ID, res.Update.ID)
	poll(t, 30*time.Second, func() bool {
		sum, err = c.Update(ctx, u.ID)
		return err == nil && sum.State.Terminal()
	}, "the retried update ends again")
	// The devices fail every install: they fail again, with fresh attempts.
	assert.Equal(t, 2, sum.Counts[fleet.StateFailed])
	ps, err := c.AllUpdateDevices(ctx, u.ID, fleet.StateFailed)
	require.NoError(t, err)
	for _, p := range ps {
		assert.True(t, strings.HasPrefix(p.DeviceID, "bad-"), p.DeviceID)
	}
}
