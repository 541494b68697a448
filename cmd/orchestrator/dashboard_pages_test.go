package main

import (
	"context"
	"crypto/rand"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/rollout"
)

// sendKeys types text into the element matching css without clearing it
// first: a file input takes a file's path so.
func (wd *webDriver) sendKeys(css, text string) {
	wd.t.Helper()
	id := wd.find(css)
	require.NotEmpty(wd.t, id, "no element %s", css)
	wd.call(http.MethodPost, wd.base+"/element/"+id+"/value", map[string]any{"text": text}, nil)
}

// count returns how many elements match css.
func (wd *webDriver) count(css string) int {
	var n int
	wd.script(`return document.querySelectorAll(`+strconv.Quote(css)+`).length`, &n)
	return n
}

// dashboardTime is the dashboard's one time format: local, with the offset.
var dashboardTime = regexp.MustCompile(`^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d\d:\d\d$`)

// shot saves a screenshot as name.png in $FLOTA_DASHBOARD_SHOTS, if set.
func (wd *webDriver) shot(name string) {
	if dir := os.Getenv("FLOTA_DASHBOARD_SHOTS"); dir != "" {
		require.NoError(wd.t, os.WriteFile(filepath.Join(dir, name+".png"), wd.screenshot(), 0o644))
	}
}

func TestDashboard_UploadCreateFailureSummaryAndDeviceHistory(t *testing.T) {
	wd := startBrowser(t)
	_, c := fleetMain(t, agentGroup{prefix: "ok-", n: 3}, agentGroup{prefix: "bad-", n: 2, failInstall: 1})
	ctx := context.Background()

	// Formatting, in the page's own functions.
	wd.open(c.BaseURL + "/#/new")
	wd.signIn(testAdminToken)
	poll(t, 10*time.Second, func() bool { return wd.find("#fw-form") != "" }, "the new update page")
	var s string
	wd.script(`return rate(3.985226593744719)`, &s)
	assert.Equal(t, "4 B/s", s, "a rate is rounded, not a raw float")
	wd.script(`return rate(1536)`, &s)
	assert.Equal(t, "1.5 KiB/s", s)
	wd.script(`return when("2026-12-05T16:03:06.123456789Z")`, &s)
	assert.Regexp(t, dashboardTime, s)
	assert.Contains(t, s, ":03:06 ")
	wd.script(`return when("0001-01-01T00:00:00Z")`, &s)
	assert.Equal(t, "–", s, "the zero time is no time")

	// Upload: the server's refusal is shown as it words it, then a good
	// upload is stored and chosen for the update. Its name is markup,
	// shown as text.
	img := make([]byte, 48<<10)
	_, _ = rand.Read(img)
	path := filepath.Join(t.TempDir(), "app.bin")
	require.NoError(t, os.WriteFile(path, img, 0o600))
	wd.sendKeys("#fw-file", path)
	wd.click("#fw-submit")
	poll(t, 10*time.Second, func() bool { return strings.Contains(wd.text("#fw-result"), "version is required") },
		"the API's message for an upload without a version")
	wd.typeText("#fw-version", "2.0.0")
	wd.typeText("#fw-name", "<b>app</b>")
	wd.typeText("#fw-model", "sensor")
	wd.click("#fw-submit")
	poll(t, 10*time.Second, func() bool { return strings.HasPrefix(wd.text("#fw-result"), "Stored") }, "the upload is stored")
	var fwID string
	poll(t, 10*time.Second, func() bool {
		wd.script(`return document.querySelector("#nu-firmware").value`, &fwID)
		return fwID != ""
	}, "the uploaded firmware is chosen")
	fw, err := c.Firmware(ctx, fwID)
	require.NoError(t, err)
	assert.Equal(t, "<b>app</b>", fw.Name)
	assert.Equal(t, int64(len(img)), fw.Size)
	assert.Contains(t, wd.text("#nu-firmware"), "<b>app</b> 2.0.0", "markup is shown as text")
	assert.Zero(t, wd.count("#nu-firmware b"), "and never parsed")
	wd.shot("new")

	// Create: a policy the API refuses shows its message; a good one
	// opens the new update's page.
	wd.typeText("#nu-inflight", "lots")
	wd.click("#nu-submit")
	poll(t, 10*time.Second, func() bool { return strings.Contains(wd.text("#nu-result"), "max_in_flight") },
		"the API's message for a bad policy field")
	wd.typeText("#nu-inflight", "2")
	wd.typeText("#nu-model", "sensor")
	wd.click("#nu-submit")
	var hash string
	poll(t, 20*time.Second, func() bool {
		wd.script(`return location.hash`, &hash)
		return strings.HasPrefix(hash, "#/updates/u-")
	}, "the new update's page")
	id := strings.TrimPrefix(hash, "#/updates/")
	u, err := c.Update(ctx, id)
	require.NoError(t, err)
	assert.Equal(t, fw.ID, u.Firmware.ID)
	assert.Equal(t, 2, u.Policy.MaxInFlight)
	assert.Equal(t, "ops", u.CreatedBy, "the update records the dashboard's token")

	poll(t, 60*time.Second, func() bool { return wd.text("#u-state") == "completed with failures" }, "the update ends on the page")
	assert.Equal(t, "ops", wd.text("#u-by"))
	assert.Contains(t, wd.text("#u-selector"), "model=sensor")
	assert.Contains(t, wd.text("#u-policy"), "max in flight2")
	assert.Regexp(t, dashboardTime, wd.text("#u-created"))

	// The failure summary: both bad devices, by reason, linked.
	poll(t, 10*time.Second, func() bool { return wd.text(`#u-failures tr[data-state="failed"] td.num`) == "2" }, "the failure summary")
	reason := wd.text(`#u-failures tr[data-state="failed"] td:nth-child(2)`)
	assert.Contains(t, []string{"install_failed", "too_many_attempts"}, reason)
	assert.Equal(t, "bad-000, bad-001", wd.text(`#u-failures tr[data-state="failed"] td.devs`))
	assert.Equal(t, "2", wd.text("#u-fail-total"))
	wd.shot("update")

	// Opened again once it ended, the page draws its whole life from the
	// event log.
	wd.open(c.BaseURL + "/#/fleet")
	wd.open(c.BaseURL + "/#/updates/" + id)
	poll(t, 10*time.Second, func() bool { return wd.count("#u-events li") >= 10 }, "the recent events of a finished update")
	wd.shot("update-reopened")
	var points string
	poll(t, 10*time.Second, func() bool {
		wd.script(`const c = document.querySelector("#u-chart"); return c ? (c.dataset.points || "") : ""`, &points)
		n, _ := strconv.Atoi(points)
		return n >= 3
	}, "the chart of a finished update")
	assert.Contains(t, wd.text("#u-events"), "bad-000")

	// A cancelled update: its devices are drawn in the cancelled colour,
	// not as succeeded.
	later := time.Now().Add(time.Hour)
	cu, err := c.CreateUpdate(ctx, rollout.CreateRequest{FirmwareID: fw.ID, Selector: fleet.Selector{Devices: []string{"bad-000", "ok-000"}},
		Policy: fleet.Policy{StartAt: &later, Force: true}})
	require.NoError(t, err)
	cs, err := c.Cancel(ctx, cu.ID)
	require.NoError(t, err)
	t.Logf("cancelled: %s %v", cs.State, cs.Counts)
	wd.open(c.BaseURL + "/#/updates")
	row := `#updates-body tr[data-update="` + cu.ID + `"]`
	poll(t, 10*time.Second, func() bool { return wd.count(row+` .bar i[data-group="cancelled"]`) == 1 }, "the cancelled update's bar")
	assert.Zero(t, wd.count(row+` .bar i[data-group="succeeded"]`), "nothing drawn as succeeded")
	wd.shot("updates")
	var colour string
	wd.script(`return getComputedStyle(document.querySelector(`+strconv.Quote(row+` .bar i[data-group="cancelled"]`)+`)).backgroundColor`, &colour)
	assert.Equal(t, "rgb(89, 96, 110)", colour)

	// Search and paging of the updates list.
	wd.typeText("#up-search", id)
	poll(t, 10*time.Second, func() bool {
		return wd.count("#updates-body tr") == 1 && wd.find(`#updates-body tr[data-update="`+id+`"]`) != ""
	},
		"the search finds the update by ID")
	assert.Equal(t, "1–1 of 1", wd.text("#up-range"))

	// The device page, from the failure summary: every update it was in
	// and its events.
	wd.open(c.BaseURL + "/#/updates/" + id)
	poll(t, 10*time.Second, func() bool { return wd.find(`#u-failures a[href="#/devices/bad-000"]`) != "" }, "the failed device's link")
	wd.click(`#u-failures a[href="#/devices/bad-000"]`)
	poll(t, 10*time.Second, func() bool { return wd.count("#dv-updates tr") == 2 }, "the device page lists both updates")
	assert.Equal(t, "bad-000", wd.text("#dv-id"))
	assert.Equal(t, "online", wd.text("#dv-online"))
	assert.Equal(t, "1.0.0", wd.text("#dv-version"))
	assert.Regexp(t, dashboardTime, wd.text("#dv-seen"))
	assert.Equal(t, "cancelled in "+cu.ID, wd.text("#dv-last"), "its last status is in the newest update")
	assert.Equal(t, "failed", wd.text(`#dv-updates tr[data-update="`+id+`"] td:nth-child(4)`))
	assert.Equal(t, reason, wd.text(`#dv-updates tr[data-update="`+id+`"] td:nth-child(6)`))
	assert.Contains(t, wd.text("#dv-events"), "install_failed")
	assert.NotContains(t, wd.text("#dv-events"), "ok-000", "only this device's events")
	wd.shot("device")

	// Fleet search by ID prefix.
	wd.open(c.BaseURL + "/#/fleet")
	wd.typeText("#fd-prefix", "bad-")
	poll(t, 10*time.Second, func() bool { return wd.count("#fd-body tr") == 2 }, "the fleet search by ID prefix")
	assert.Equal(t, "bad-000", wd.text("#fd-body tr:first-child td:first-child"))
}
