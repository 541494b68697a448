package rollout_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/flotaio/flota/agent"
	"github.com/flotaio/flota/internal/fleet"
)

// Reports of states the device has passed already (a QoS 1 report its
// client sends again after a reconnect, as after an orchestrator restart)
// are stale: counted, not recorded as illegal transitions.
func TestEngine_ReportOfAStateAlreadyPassedIsStaleNotIllegal(t *testing.T) {
	h := newHarness(t)
	d := newScripted(t, h, "replay", "1.0.0")
	h.waitDevices(1)
	fw, _ := h.addFirmware(8192, "1.1.0")
	u := h.create(fw, fleet.Policy{ChunkSize: 4096}, fleet.Selector{})
	o := d.offer()
	d.installThenReboot(o)
	eventually(t, 5*time.Second, func() bool { return h.deviceState(u.ID, "replay").State == fleet.StateRebooting }, "rebooting")

	before := h.engine.Stats()
	for _, st := range []fleet.DeviceState{fleet.StateDownloaded, fleet.StateVerified, fleet.StateInstalling} {
		d.report(o, st, fw.Size, "")
	}
	eventually(t, 5*time.Second, func() bool { return h.engine.Stats().StaleMessages-before.StaleMessages >= 3 }, "replays counted stale")
	assert.Zero(t, h.engine.Stats().IllegalChanges)
	for _, ev := range h.events(u.ID) {
		assert.NotEqual(t, fleet.EventIllegal, ev.Type, "%+v", ev)
	}
	assert.Equal(t, fleet.StateRebooting, h.deviceState(u.ID, "replay").State)
}

// A device skipped when the update is created has its device event, as
// every other change of a device's part in an update.
func TestEngine_SkippedDevicesHaveTheirEvent(t *testing.T) {
	h := newHarness(t)
	h.startAgents(2, "old", agent.Config{})
	h.startAgents(1, "new", agent.Config{Version: "1.1.0"})
	h.waitDevices(3)
	fw, _ := h.addFirmware(8192, "1.1.0")
	u := h.create(fw, fleet.Policy{}, fleet.Selector{})
	h.waitEnd(u.ID, 30*time.Second)
	var skipped []fleet.Event
	for _, ev := range h.events(u.ID) {
		if ev.Type == fleet.EventDevice && ev.State == string(fleet.StateSkipped) {
			skipped = append(skipped, ev)
		}
	}
	if assert.Len(t, skipped, 1) {
		assert.Equal(t, "new000", skipped[0].DeviceID)
		assert.Equal(t, fleet.ReasonAlreadyCurrent, skipped[0].Reason)
	}
}
