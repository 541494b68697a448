package rollout_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/agent"
	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
	"github.com/flotaio/flota/internal/rollout"
)

// A device that already runs the target answers a forced offer with its
// hello (docs/PROTOCOL.md §5.4 rule 2): it is offered once more, in case the
// hello crossed the offer, and then skipped, instead of an offer for every
// hello forever.
func TestEngine_ForcedOfferAnsweredWithHelloEndsSkipped(t *testing.T) {
	h := newHarness(t)
	d := newScripted(t, h, "current", "1.1.0")
	h.waitDevices(1)
	fw, _ := h.addFirmware(8192, "1.1.0")
	u := h.create(fw, fleet.Policy{ChunkSize: 4096, Force: true}, fleet.Selector{})

	for i := 0; i < 2; i++ {
		d.offer()
		d.hello("1.1.0", nil) // rule 2: already runs firmware.version
	}
	s := h.waitEnd(u.ID, 10*time.Second)
	assert.Equal(t, fleet.UpdateCompleted, s.State)
	assert.Equal(t, map[fleet.DeviceState]int{fleet.StateSkipped: 1}, s.Counts)
	p := h.deviceState(u.ID, "current")
	assert.Equal(t, fleet.ReasonAlreadyCurrent, p.Reason)
	assert.Empty(t, d.offers, "no offer after the device was skipped")
	assert.Zero(t, h.engine.Stats().IllegalChanges)
}

// installThenReboot takes o through the download and the install reports,
// up to rebooting, as a device does before it reboots.
func (s *scripted) installThenReboot(o protocol.Offer) {
	s.t.Helper()
	s.report(o, fleet.StateAccepted, 0, "")
	s.download(o)
	for _, st := range []fleet.DeviceState{fleet.StateDownloaded, fleet.StateVerified, fleet.StateInstalling, fleet.StateRebooting} {
		s.report(o, st, o.Firmware.Size, "")
	}
}

// A device that reboots and never comes back ends failed with
// confirm_timeout, and the update ends, instead of going back to queued
// for an attempt that can never start.
func TestEngine_DeviceThatNeverComesBackFromItsRebootEndsFailed(t *testing.T) {
	h := newHarness(t)
	gone := newScripted(t, h, "gone", "1.0.0")
	h.startAgents(2, "ok", agent.Config{})
	h.waitDevices(3)
	fw, _ := h.addFirmware(8192, "1.1.0")
	u := h.create(fw, fleet.Policy{ChunkSize: 4096, MaxAttempts: 3, ConfirmTimeout: fleet.Duration(300 * time.Millisecond)}, fleet.Selector{})

	gone.installThenReboot(gone.offer())
	eventually(t, 5*time.Second, func() bool { return h.deviceState(u.ID, "gone").State == fleet.StateRebooting }, "rebooting")
	gone.c.Disconnect(0) // and never back

	s := h.waitEnd(u.ID, 15*time.Second)
	assert.Equal(t, fleet.UpdateCompletedWithFailures, s.State)
	assert.Equal(t, map[fleet.DeviceState]int{fleet.StateSucceeded: 2, fleet.StateFailed: 1}, s.Counts)
	p := h.deviceState(u.ID, "gone")
	assert.Equal(t, fleet.ReasonConfirmTimeout, p.Reason)
	assert.Equal(t, 1, p.Attempts)
}

// A device that comes back on its old version after its confirm timeout is
// retried while attempts remain, and ends failed with its last reason when
// they are spent.
func TestEngine_ConfirmTimeoutIsRetriedWhenTheDeviceReturnsUntilAttemptsAreSpent(t *testing.T) {
	h := newHarness(t)
	d := newScripted(t, h, "late", "1.0.0")
	h.waitDevices(1)
	fw, _ := h.addFirmware(8192, "1.1.0")
	// A companion that never connects keeps the update from ending while the
	// device is away.
	h.registerOffline("never")
	u := h.create(fw, fleet.Policy{ChunkSize: 4096, MaxAttempts: 2, RetryBackoff: fleet.Duration(time.Millisecond),
		ConfirmTimeout: fleet.Duration(300 * time.Millisecond)}, fleet.Selector{})

	d.installThenReboot(d.offer())
	d.c.Disconnect(0)
	eventually(t, 5*time.Second, func() bool { return h.deviceState(u.ID, "late").State == fleet.StateFailed }, "confirm timeout")

	d = newScripted(t, h, "late", "1.0.0") // back, on the old version
	o := d.offer()
	assert.Equal(t, 2, o.Attempt)
	d.installThenReboot(o)
	d.c.Disconnect(0)
	eventually(t, 5*time.Second, func() bool { return h.deviceState(u.ID, "late").State == fleet.StateFailed }, "second confirm timeout")

	d = newScripted(t, h, "late", "1.0.0") // back again: no attempt left
	select {
	case o := <-d.offers:
		t.Fatalf("offered attempt %d after max_attempts", o.Attempt)
	case <-time.After(time.Second):
	}
	p := h.deviceState(u.ID, "late")
	assert.Equal(t, fleet.StateFailed, p.State)
	assert.Equal(t, fleet.ReasonConfirmTimeout, p.Reason, "failed with the reason of its last attempt")
	assert.Equal(t, 2, p.Attempts)
}

// registerOffline registers a device that never connects.
func (h *harness) registerOffline(id string) {
	h.t.Helper()
	require.NoError(h.t, h.store.SaveDevice(fleet.Device{ID: id, Model: "m1", Version: "1.0.0", FirstSeen: time.Now(), LastSeen: time.Now()}))
	require.NoError(h.t, h.store.Flush(context.Background()))
}

// An update whose targets include a device that never connects ends once
// that device has not been seen for offline_after: it ends offline, the
// update completed_with_failures, and retry-failed takes it when it is back.
func TestEngine_TargetThatNeverConnectsEndsOfflineAndTheUpdateEnds(t *testing.T) {
	h := newHarness(t)
	h.startAgents(2, "here", agent.Config{})
	h.waitDevices(2)
	h.registerOffline("boiler-7")
	fw, _ := h.addFirmware(8192, "1.1.0")
	u := h.create(fw, fleet.Policy{ChunkSize: 4096, OfflineAfter: fleet.Duration(time.Second)}, fleet.Selector{Model: "m1"})

	eventually(t, 10*time.Second, func() bool {
		s := h.summary(u.ID)
		return s.Counts[fleet.StateSucceeded] == 2 && s.Unseen == 1 && s.UnseenUntil != nil || s.State.Terminal()
	}, "the summary says one device is awaited")
	s := h.waitEnd(u.ID, 15*time.Second)
	assert.Equal(t, fleet.UpdateCompletedWithFailures, s.State)
	assert.Equal(t, map[fleet.DeviceState]int{fleet.StateSucceeded: 2, fleet.StateOffline: 1}, s.Counts)
	assert.Equal(t, fleet.ReasonNotSeen, h.deviceState(u.ID, "boiler-7").Reason)

	// It connects later: retry-failed takes it, and the update completes.
	late := agent.New(agent.Config{Broker: "tcp://" + h.broker.Addr(), ID: "boiler-7", Model: "m1", Version: "1.0.0",
		RebootDelay: 50 * time.Millisecond, Logger: h.log})
	require.NoError(t, late.Start(context.Background()))
	t.Cleanup(func() { late.Close() })
	eventually(t, 10*time.Second, func() bool {
		n, err := h.engine.RetryFailed(context.Background(), u.ID)
		return err == nil && n == 1
	}, "retry-failed takes the offline device")
	s = h.waitEnd(u.ID, 15*time.Second)
	assert.Equal(t, fleet.UpdateCompleted, s.State)
	assert.Equal(t, 3, s.Counts[fleet.StateSucceeded])
}

// The online selector takes only the devices connected at creation.
func TestEngine_OnlineSelectorLeavesDisconnectedDevicesOut(t *testing.T) {
	h := newHarness(t)
	h.startAgents(2, "here", agent.Config{})
	h.waitDevices(2)
	h.registerOffline("away")
	fw, _ := h.addFirmware(8192, "1.1.0")
	u := h.create(fw, fleet.Policy{ChunkSize: 4096}, fleet.Selector{Model: "m1", Online: true})
	s := h.waitEnd(u.ID, 15*time.Second)
	assert.Equal(t, fleet.UpdateCompleted, s.State)
	assert.Equal(t, 2, s.Total)

	_, err := h.engine.CreateUpdate(context.Background(), rollout.CreateRequest{FirmwareID: fw.ID,
		Selector: fleet.Selector{Devices: []string{"away"}, Online: true}})
	assert.ErrorIs(t, err, fleet.ErrNoTargets)
}
