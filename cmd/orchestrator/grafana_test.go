package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/rollout"
)

// Files whose PromQL must name only metrics /metrics serves.
const (
	grafanaDashboard = "../../deploy/grafana/flota.json"
	deployDoc        = "../../docs/DEPLOY.md"
)

// liveMetricNames scrapes a real orchestrator that has a registered
// device, a firmware and a running update (so that the per-update series
// exist) and returns the sample names it serves.
func liveMetricNames(t *testing.T) map[string]bool {
	t.Helper()
	m := newTestMain(t)
	require.NoError(t, m.Run(context.Background()))
	t.Cleanup(func() { assert.NoError(t, m.Close()) })
	ctx := context.Background()
	require.NoError(t, m.Store.SaveDevice(fleet.Device{ID: "offline-1", Model: "m1", Version: "1.0.0"}))
	require.NoError(t, m.Store.Flush(ctx))
	c := adminClient(m)
	fw, err := c.AddFirmware(ctx, fleet.Firmware{Version: "1.1.0", Model: "m1"}, bytes.NewReader([]byte("image")), 5)
	require.NoError(t, err)
	_, err = c.CreateUpdate(ctx, rollout.CreateRequest{FirmwareID: fw.ID})
	require.NoError(t, err)

	req, err := http.NewRequest("GET", m.HTTPURL()+"/metrics", nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+testAdminToken)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	names := map[string]bool{}
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, _, _ := strings.Cut(line, "{")
		name, _, _ = strings.Cut(name, " ")
		names[name] = true
	}
	return names
}

// metricRef finds metric names in PromQL: flota's, the Go runtime's and the
// process's.
var metricRef = regexp.MustCompile(`\b(?:flota|go|process)_[a-z0-9_]+\b`)

// The Grafana dashboard and the PromQL of docs/DEPLOY.md use only metric
// names that a real /metrics serves, so that no panel or alert is silently
// empty after a rename.
func TestGrafanaDashboard_UsesOnlyMetricsTheServerServes(t *testing.T) {
	names := liveMetricNames(t)
	raw, err := os.ReadFile(grafanaDashboard)
	require.NoError(t, err)
	var dash struct {
		Title  string `json:"title"`
		UID    string `json:"uid"`
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	require.NoError(t, json.Unmarshal(raw, &dash))
	require.NotEmpty(t, dash.UID)
	var exprs int
	used := map[string]bool{}
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			exprs++
			refs := metricRef.FindAllString(tg.Expr, -1)
			assert.NotEmpty(t, refs, "panel %q: %s", p.Title, tg.Expr)
			for _, name := range refs {
				used[name] = true
				assert.True(t, names[name], "panel %q uses %s, which /metrics does not serve", p.Title, name)
			}
		}
	}
	assert.Greater(t, exprs, 10)
	for _, must := range []string{"flota_device_failures_total", "flota_http_requests_total", "flota_update_devices", "flota_broker_clients"} {
		assert.True(t, used[must], "the dashboard shows %s", must)
	}

	doc, err := os.ReadFile(deployDoc)
	require.NoError(t, err)
	for _, name := range metricRef.FindAllString(string(doc), -1) {
		assert.True(t, names[name], "docs/DEPLOY.md names %s, which /metrics does not serve", name)
	}
}
