package rollout_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/agent"
	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
	"github.com/flotaio/flota/internal/rollout"
	"github.com/flotaio/flota/internal/sqlite"
)

func (h *harness) summary(id string) fleet.UpdateSummary {
	h.t.Helper()
	s, err := h.engine.Summary(context.Background(), id)
	require.NoError(h.t, err)
	return s
}

func (h *harness) events(id string) []fleet.Event {
	h.t.Helper()
	require.NoError(h.t, h.store.Flush(context.Background()))
	evs, err := h.store.Events(context.Background(), id, 0, 100_000)
	require.NoError(h.t, err)
	return evs
}

// progress returns every progress row of an update, after the writer
// committed what it had queued.
func progress(h *harness, id string) []fleet.Progress {
	require.NoError(h.t, h.store.Flush(context.Background()))
	rows, _, err := h.store.Progress(context.Background(), id, sqlite.ProgressFilter{Limit: 1000})
	require.NoError(h.t, err)
	return rows
}

// attempted counts the devices that were offered the update.
func attempted(h *harness, id string) int {
	n := 0
	for _, p := range progress(h, id) {
		if p.Attempts > 0 {
			n++
		}
	}
	return n
}

func TestEngine_FailureThresholdAborts(t *testing.T) {
	h := newHarness(t)
	agents := h.startAgents(40, "flaky", agent.Config{Faults: agent.Faults{FailInstall: 0.5}, InstallDelay: 20 * time.Millisecond})
	h.waitDevices(40)
	fw, _ := h.addFirmware(8192, "1.1.0")
	th, err := fleet.ParseThreshold("20%")
	require.NoError(t, err)
	u := h.create(fw, fleet.Policy{MaxInFlight: 3, MaxAttempts: 1, FailureThreshold: th, FailureMinFinished: 8}, fleet.Selector{})
	s := h.waitEnd(u.ID, 30*time.Second)
	assert.Equal(t, fleet.UpdateAborted, s.State)
	eventually(t, 20*time.Second, func() bool {
		s = h.summary(u.ID)
		return s.Counts[fleet.StateDownloaded]+s.Counts[fleet.StateVerified]+s.Counts[fleet.StateInstalling]+s.Counts[fleet.StateRebooting] == 0
	}, "devices that were installing finish; nobody is left mid-install")
	assert.Equal(t, fleet.UpdateAborted, s.State)
	assert.Less(t, attempted(h, u.ID), 25, "far fewer devices attempted than targeted")
	for _, p := range progress(h, u.ID) {
		if p.Attempts == 0 {
			assert.Equal(t, fleet.StateCancelled, p.State, "never-started %s is cancelled", p.DeviceID)
			assert.Equal(t, fleet.ReasonAborted, p.Reason)
		}
	}

	var abortReason fleet.Reason
	for _, ev := range h.events(u.ID) {
		if ev.Type == fleet.EventUpdate && ev.State == string(fleet.UpdateAborted) {
			abortReason = ev.Reason
		}
	}
	assert.Equal(t, fleet.ReasonFailureThreshold, abortReason, "the reason is recorded")
	for _, a := range agents {
		assert.False(t, a.Stats().Holding && a.Stats().State == fleet.StateInstalling, a.ID())
	}
}

func TestEngine_FailingCanaryStopsAtItsGate(t *testing.T) {
	h := newHarness(t)
	// Devices start in ID order: the "a" devices form the canary phase.
	h.startAgents(2, "a", agent.Config{Faults: agent.Faults{FailInstall: 1}})
	h.startAgents(8, "b", agent.Config{})
	h.waitDevices(10)
	fw, _ := h.addFirmware(8192, "1.1.0")
	u := h.create(fw, fleet.Policy{Phases: []string{"2", "100%"}, MaxAttempts: 1}, fleet.Selector{})

	eventually(t, 20*time.Second, func() bool { return h.summary(u.ID).State == fleet.UpdatePaused }, "stopped at the gate")
	s := h.summary(u.ID)
	assert.Equal(t, "failed", s.Gate)
	assert.Equal(t, 1, s.Phase)
	assert.Equal(t, []int{2, 10}, s.Phases)
	assert.Positive(t, s.Counts[fleet.StateFailed], "the gate fails as soon as its threshold is out of reach")
	assert.Equal(t, 8, s.Counts[fleet.StateQueued], "no device past the canary was started")
	assert.Equal(t, 2, attempted(h, u.ID))
	// The summary says why it stopped, with the gate's figures, and
	// promises no ETA.
	assert.Equal(t, fleet.ReasonGateFailed, s.PausedReason)
	if assert.NotNil(t, s.GateFigures) {
		assert.Equal(t, fleet.GateFigures{Succeeded: 0, Needed: 2, Size: 2}, *s.GateFigures)
	}
	assert.Contains(t, s.WaitingDetail, "phase 1 gate failed (succeeded=0 needed=2 of 2)")
	assert.Zero(t, s.ETASeconds)

	// An operator decides to go on anyway.
	require.NoError(t, h.engine.Resume(context.Background(), u.ID))
	s = h.waitEnd(u.ID, 30*time.Second)
	assert.Equal(t, fleet.UpdateCompletedWithFailures, s.State)
	assert.Equal(t, 8, s.Counts[fleet.StateSucceeded])
}

func TestEngine_ManualGateWaitsForAnOperator(t *testing.T) {
	h := newHarness(t)
	h.startAgents(4, "g", agent.Config{})
	h.waitDevices(4)
	fw, _ := h.addFirmware(8192, "1.1.0")
	u := h.create(fw, fleet.Policy{Phases: []string{"25%", "100%"}, ManualGates: true}, fleet.Selector{})
	eventually(t, 20*time.Second, func() bool { return h.summary(u.ID).Gate == "waiting_approval" }, "waits at the gate")
	s := h.summary(u.ID)
	assert.Equal(t, fleet.UpdatePaused, s.State)
	assert.Equal(t, 1, s.Counts[fleet.StateSucceeded])
	assert.Equal(t, 3, s.Counts[fleet.StateQueued])

	require.NoError(t, h.engine.Resume(context.Background(), u.ID))
	s = h.waitEnd(u.ID, 20*time.Second)
	assert.Equal(t, fleet.UpdateCompleted, s.State)
	assert.Equal(t, 4, s.Counts[fleet.StateSucceeded])
}

func TestEngine_SoakDelaysTheNextPhase(t *testing.T) {
	h := newHarness(t)
	h.startAgents(3, "s", agent.Config{})
	h.waitDevices(3)
	fw, _ := h.addFirmware(8192, "1.1.0")
	const soak = 700 * time.Millisecond
	u := h.create(fw, fleet.Policy{Phases: []string{"1", "100%"}, Soak: fleet.Duration(soak)}, fleet.Selector{})
	s := h.waitEnd(u.ID, 20*time.Second)
	assert.Equal(t, 3, s.Counts[fleet.StateSucceeded])

	var passed, started time.Time
	for _, ev := range h.events(u.ID) {
		if ev.Type == fleet.EventPhase && ev.State == "passed" && ev.Phase == 1 {
			passed = ev.Time
		}
		if ev.Type == fleet.EventPhase && ev.State == "started" && ev.Phase == 2 {
			started = ev.Time
		}
	}
	require.False(t, passed.IsZero())
	require.False(t, started.IsZero())
	assert.GreaterOrEqual(t, started.Sub(passed), soak, "phase 2 starts after the soak")
}

func TestEngine_ScheduledUpdateStartsOnTime(t *testing.T) {
	h := newHarness(t)
	h.startAgents(2, "sch", agent.Config{})
	h.waitDevices(2)
	fw, _ := h.addFirmware(8192, "1.1.0")
	at := time.Now().Add(800 * time.Millisecond).UTC()
	u := h.create(fw, fleet.Policy{StartAt: &at}, fleet.Selector{})
	assert.Equal(t, fleet.UpdateScheduled, u.State)
	s := h.summary(u.ID)
	assert.Equal(t, "scheduled", s.Waiting)
	assert.Zero(t, attempted(h, u.ID))

	s = h.waitEnd(u.ID, 20*time.Second)
	assert.Equal(t, fleet.UpdateCompleted, s.State)
	require.NotNil(t, s.StartedAt)
	assert.False(t, s.StartedAt.Before(at), "started at %s, scheduled for %s", s.StartedAt, at)
	for _, ev := range h.events(u.ID) {
		if ev.Type == fleet.EventDevice && ev.State == string(fleet.StateOffered) {
			assert.False(t, ev.Time.Before(at), "no device offered before the start time")
		}
	}
}

// fakeClock is a settable clock for the engine.
type fakeClock struct {
	mu  sync.Mutex // guards now
	now time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
}

func TestEngine_MaintenanceWindowWithAFakeClock(t *testing.T) {
	h := newHarness(t)
	clock := &fakeClock{now: time.Date(2026, 3, 1, 1, 0, 0, 0, time.UTC)}
	require.NoError(t, h.engine.Close())
	h.openEngineWith(func(e *rollout.Engine) { e.Now = clock.Now })
	h.startAgents(3, "mw", agent.Config{})
	h.waitDevices(3)
	fw, _ := h.addFirmware(8192, "1.1.0")
	u := h.create(fw, fleet.Policy{Maintenance: &fleet.MaintenanceWindow{Start: "02:00", End: "03:00"}}, fleet.Selector{})

	// Outside the window nothing starts, however long we wait.
	for i := 0; i < 5; i++ {
		assert.Equal(t, "maintenance_window", h.summary(u.ID).Waiting)
		time.Sleep(50 * time.Millisecond) // several engine ticks pass
	}
	s := h.summary(u.ID)
	if assert.NotNil(t, s.WaitingUntil) {
		assert.Equal(t, time.Date(2026, 3, 1, 2, 0, 0, 0, time.UTC), *s.WaitingUntil, "the window opens at 02:00")
	}
	assert.Contains(t, s.WaitingDetail, "outside the maintenance window 02:00-03:00 UTC: opens 2026-03-01 02:00:00 +00:00")
	assert.Zero(t, attempted(h, u.ID))

	clock.Set(time.Date(2026, 3, 1, 2, 30, 0, 0, time.UTC))
	s = h.waitEnd(u.ID, 20*time.Second)
	assert.Equal(t, 3, s.Counts[fleet.StateSucceeded])
}

func TestEngine_ShortRealMaintenanceWindow(t *testing.T) {
	h := newHarness(t)
	h.startAgents(2, "rw", agent.Config{})
	h.waitDevices(2)
	fw, _ := h.addFirmware(8192, "1.1.0")
	open := time.Now().UTC().Add(1500 * time.Millisecond).Truncate(time.Second).Add(time.Second)
	win := &fleet.MaintenanceWindow{Start: open.Format("15:04:05"), End: open.Add(time.Minute).Format("15:04:05")}
	u := h.create(fw, fleet.Policy{Maintenance: win}, fleet.Selector{})
	s := h.waitEnd(u.ID, 20*time.Second)
	assert.Equal(t, 2, s.Counts[fleet.StateSucceeded])
	for _, ev := range h.events(u.ID) {
		if ev.Type == fleet.EventDevice && ev.State == string(fleet.StateOffered) {
			assert.False(t, ev.Time.Before(open), "offered at %s, window opens %s", ev.Time, open)
		}
	}
}

func TestEngine_DowngradeIsRefusedUnlessAllowed(t *testing.T) {
	h := newHarness(t)
	newer := h.startAgents(2, "newer", agent.Config{Version: "2.0.0"})
	h.startAgents(1, "same", agent.Config{Version: "1.5.0"})
	h.waitDevices(3)
	fw, _ := h.addFirmware(8192, "1.5.0")

	u := h.create(fw, fleet.Policy{}, fleet.Selector{})
	s := h.waitEnd(u.ID, 10*time.Second)
	assert.Equal(t, fleet.UpdateCompleted, s.State)
	assert.Equal(t, 3, s.Counts[fleet.StateSkipped])
	rows, _, err := h.store.Progress(context.Background(), u.ID, sqlite.ProgressFilter{Limit: 10})
	require.NoError(t, err)
	reasons := map[string]fleet.Reason{}
	for _, p := range rows {
		reasons[p.DeviceID] = p.Reason
	}
	assert.Equal(t, fleet.ReasonVersionNotNewer, reasons["newer000"])
	assert.Equal(t, fleet.ReasonAlreadyCurrent, reasons["same000"])

	u = h.create(fw, fleet.Policy{AllowDowngrade: true}, fleet.Selector{Model: "m1", Version: ">=2.0.0"})
	s = h.waitEnd(u.ID, 20*time.Second)
	assert.Equal(t, 2, s.Counts[fleet.StateSucceeded])
	for _, a := range newer {
		assert.Equal(t, "1.5.0", a.Stats().Version)
	}

	// --force reinstalls on a device that runs the target already, and
	// succeeds only after the device really rebooted into it.
	u = h.create(fw, fleet.Policy{Force: true}, fleet.Selector{Devices: []string{"same000"}})
	s = h.waitEnd(u.ID, 20*time.Second)
	assert.Equal(t, 1, s.Counts[fleet.StateSucceeded])
}

func TestEngine_DynamicUpdatePicksUpALateDevice(t *testing.T) {
	h := newHarness(t)
	h.startAgents(2, "early", agent.Config{})
	h.waitDevices(2)
	fw, _ := h.addFirmware(8192, "1.1.0")
	u := h.create(fw, fleet.Policy{Dynamic: true}, fleet.Selector{Model: "m1"})
	eventually(t, 20*time.Second, func() bool { return h.summary(u.ID).Counts[fleet.StateSucceeded] == 2 }, "early devices")
	assert.Equal(t, fleet.UpdateRunning, h.summary(u.ID).State, "a dynamic update keeps running")

	late := h.startAgents(1, "late", agent.Config{})[0]
	h.startAgents(1, "other", agent.Config{Model: "m2"})
	eventually(t, 20*time.Second, func() bool { return h.summary(u.ID).Counts[fleet.StateSucceeded] == 3 }, "late device joins")
	assert.Equal(t, "1.1.0", late.Stats().Version)
	assert.Equal(t, 3, h.summary(u.ID).Total, "the other model did not join")
	require.NoError(t, h.engine.Cancel(context.Background(), u.ID))
	assert.Equal(t, fleet.UpdateCancelled, h.waitEnd(u.ID, 5*time.Second).State)
}

func TestEngine_SecondUpdateOnBusyDevicesIsRefused(t *testing.T) {
	h := newHarness(t)
	h.startAgents(2, "busy", agent.Config{})
	h.waitDevices(2)
	fw, _ := h.addFirmware(8192, "1.1.0")
	at := time.Now().Add(time.Hour)
	first := h.create(fw, fleet.Policy{StartAt: &at}, fleet.Selector{})
	_, err := h.engine.CreateUpdate(context.Background(), rollout.CreateRequest{FirmwareID: fw.ID})
	require.ErrorIs(t, err, fleet.ErrDeviceBusy)
	assert.Contains(t, err.Error(), first.ID)
	require.NoError(t, h.engine.Cancel(context.Background(), first.ID))
	second := h.create(fw, fleet.Policy{}, fleet.Selector{})
	assert.Equal(t, 2, h.waitEnd(second.ID, 20*time.Second).Counts[fleet.StateSucceeded])
}

func TestEngine_RetryFailedReadmitsFailedDevices(t *testing.T) {
	h := newHarness(t)
	d := newScripted(t, h, "retry", "1.0.0")
	h.startAgents(1, "fine", agent.Config{})
	h.waitDevices(2)
	fw, _ := h.addFirmware(4096, "1.1.0")
	u := h.create(fw, fleet.Policy{ChunkSize: 4096}, fleet.Selector{})
	o := d.offer()
	d.report(o, fleet.StateAccepted, 0, "")
	d.download(o)
	d.report(o, fleet.StateFailed, fw.Size, fleet.ReasonInstallFailed)
	s := h.waitEnd(u.ID, 20*time.Second)
	assert.Equal(t, fleet.UpdateCompletedWithFailures, s.State)

	n, err := h.engine.RetryFailed(context.Background(), u.ID)
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	o = d.offer()
	assert.Equal(t, 1, o.Attempt, "a fresh attempt")
	d.report(o, fleet.StateAccepted, 0, "")
	d.download(o)
	d.hello("1.1.0", &protocol.Held{Update: u.ID, Handle: o.Handle, Offset: fw.Size, State: fleet.StateRebooting})
	s = h.waitEnd(u.ID, 20*time.Second)
	assert.Equal(t, fleet.UpdateCompleted, s.State)
	assert.Equal(t, 2, s.Counts[fleet.StateSucceeded])
	_, err = h.engine.RetryFailed(context.Background(), u.ID)
	assert.ErrorIs(t, err, fleet.ErrUpdateFinished)
}

func TestEngine_RetriesWaitForTheirBackoff(t *testing.T) {
	h := newHarness(t)
	d := newScripted(t, h, "backoff", "1.0.0")
	h.waitDevices(1)
	fw, _ := h.addFirmware(4096, "1.1.0")
	const base = 400 * time.Millisecond
	u := h.create(fw, fleet.Policy{ChunkSize: 4096, RetryBackoff: fleet.Duration(base)}, fleet.Selector{})
	o := d.offer()
	d.report(o, fleet.StateAccepted, 0, "")
	d.download(o)
	failedAt := time.Now()
	d.report(o, fleet.StateFailed, fw.Size, fleet.ReasonBadDigest)
	o2 := d.offer()
	assert.GreaterOrEqual(t, time.Since(failedAt), base/2, "the retry waited at least the backoff's lower bound")
	assert.Equal(t, 2, o2.Attempt)
	_ = u
}

func TestEngine_RateSpacesDeviceStarts(t *testing.T) {
	h := newHarness(t)
	h.startAgents(3, "rate", agent.Config{})
	h.waitDevices(3)
	fw, _ := h.addFirmware(4096, "1.1.0")
	u := h.create(fw, fleet.Policy{Rate: 150}, fleet.Selector{}) // one start every 400 ms
	h.waitEnd(u.ID, 20*time.Second)
	var offers []time.Time
	for _, ev := range h.events(u.ID) {
		if ev.Type == fleet.EventDevice && ev.State == string(fleet.StateOffered) {
			offers = append(offers, ev.Time)
		}
	}
	require.Len(t, offers, 3)
	for i := 1; i < len(offers); i++ {
		assert.GreaterOrEqual(t, offers[i].Sub(offers[i-1]), 390*time.Millisecond)
	}
}

func TestEngine_DynamicUpdateWithNoDeviceYetTakesTheFirstThatComes(t *testing.T) {
	h := newHarness(t)
	fw, _ := h.addFirmware(8192, "1.1.0")
	u := h.create(fw, fleet.Policy{Dynamic: true, Phases: []string{"10%", "100%"}}, fleet.Selector{Model: "m1"})
	assert.Zero(t, h.summary(u.ID).Total)
	h.startAgents(1, "first", agent.Config{})
	eventually(t, 20*time.Second, func() bool { return h.summary(u.ID).Counts[fleet.StateSucceeded] == 1 }, "the first device joins and succeeds")
}

func TestEngine_ConnectedDeviceThatStopsAckingTimesOut(t *testing.T) {
	h := newHarness(t)
	d := newScripted(t, h, "mute", "1.0.0")
	h.waitDevices(1)
	fw, _ := h.addFirmware(64*1024, "1.1.0")
	u := h.create(fw, fleet.Policy{ChunkSize: 4096, MaxAttempts: 1, IdleTimeout: fleet.Duration(1500 * time.Millisecond)}, fleet.Selector{})
	o := d.offer()
	d.report(o, fleet.StateAccepted, 0, "") // and never acks: the engine resends, which is not progress
	s := h.waitEnd(u.ID, 20*time.Second)
	assert.Equal(t, fleet.UpdateCompletedWithFailures, s.State)
	p := progress(h, u.ID)
	require.Len(t, p, 1)
	assert.Equal(t, fleet.ReasonTransferTimeout, p[0].Reason)
	assert.Zero(t, s.InFlight, "the slot is given back")
}

func TestEngine_StoppedUpdateIsFollowedToItsEndAfterARestart(t *testing.T) {
	h := newHarness(t)
	d := newScripted(t, h, "late", "1.0.0")
	h.waitDevices(1)
	fw, _ := h.addFirmware(4096, "1.1.0")
	u := h.create(fw, fleet.Policy{ChunkSize: 4096}, fleet.Selector{})
	o := d.offer()
	d.report(o, fleet.StateAccepted, 0, "")
	d.download(o)
	d.report(o, fleet.StateDownloaded, fw.Size, "")
	d.report(o, fleet.StateVerified, fw.Size, "")
	d.report(o, fleet.StateInstalling, fw.Size, "")
	eventually(t, 5*time.Second, func() bool { return h.summary(u.ID).Counts[fleet.StateInstalling] == 1 }, "installing")
	require.NoError(t, h.engine.Cancel(context.Background(), u.ID))

	// Restart while the device still installs; it comes back on the target.
	require.NoError(t, h.engine.Close())
	h.openEngine()
	d.hello("1.1.0", &protocol.Held{Update: u.ID, Handle: o.Handle, Offset: fw.Size, State: fleet.StateRebooting})
	eventually(t, 10*time.Second, func() bool {
		return progress(h, u.ID)[0].State == fleet.StateSucceeded
	}, "the install of a cancelled update is followed to its confirmed boot")
	assert.Equal(t, fleet.UpdateCancelled, h.summary(u.ID).State)
}
