package fleet

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// Explain names why an update that has not ended starts no device, for
// every reason the engine sets, with the figures and times that go with
// it; it says nothing for an update that moves or has ended.
func TestUpdateSummary_ExplainSaysWhyNothingStarts(t *testing.T) {
	at := time.Date(2026, 3, 1, 2, 0, 0, 0, time.FixedZone("CET", 3600))
	running := UpdateSummary{Update: Update{State: UpdateRunning}}
	with := func(f func(*UpdateSummary)) UpdateSummary {
		s := running
		f(&s)
		return s
	}
	for _, tc := range []struct {
		name string
		s    UpdateSummary
		want string
	}{
		{"moving", running, ""},
		{"ended", with(func(s *UpdateSummary) { s.State = UpdateCompleted; s.Waiting = "store" }), ""},
		{"scheduled", with(func(s *UpdateSummary) { s.Waiting = "scheduled"; s.Policy.StartAt = &at }),
			"scheduled for 2026-03-01 01:00:00 +00:00"},
		{"paused by an operator", with(func(s *UpdateSummary) { s.Waiting = "paused"; s.PausedReason = ReasonOperator }),
			"paused by an operator: 'update resume' goes on"},
		{"gate failed", with(func(s *UpdateSummary) {
			s.Waiting, s.Gate, s.Phase = "paused", "failed", 1
			s.GateFigures = &GateFigures{Succeeded: 18, Needed: 30, Size: 30}
		}), "phase 1 gate failed (succeeded=18 needed=30 of 30): 'update resume' goes on, 'update cancel' ends"},
		{"manual gate", with(func(s *UpdateSummary) { s.Waiting, s.Gate, s.Phase = "paused", "waiting_approval", 2 }),
			"phase 2 passed: waits for 'update resume'"},
		{"soaking", with(func(s *UpdateSummary) { s.Waiting, s.Gate, s.Phase, s.WaitingUntil = "gate", "soaking", 1, &at }),
			"phase 1 passed: soaking until 2026-03-01 01:00:00 +00:00"},
		{"maintenance window", with(func(s *UpdateSummary) {
			s.Waiting, s.WaitingUntil = "maintenance_window", &at
			s.Policy.Maintenance = &MaintenanceWindow{Start: "22:00", End: "04:00", TimeZone: "Europe/Berlin"}
		}), "outside the maintenance window 22:00-04:00 Europe/Berlin: opens 2026-03-01 01:00:00 +00:00"},
		{"rate", with(func(s *UpdateSummary) { s.Waiting, s.WaitingUntil, s.Policy.Rate = "rate", &at, 6 }),
			"rate limit: 6 devices a minute, next start 2026-03-01 01:00:00 +00:00"},
		{"offline devices", with(func(s *UpdateSummary) { s.Waiting, s.Unseen, s.UnseenUntil = "offline_devices", 3, &at }),
			"3 device(s) not connected, offline at 2026-03-01 01:00:00 +00:00"},
		{"store", with(func(s *UpdateSummary) { s.Waiting = "store" }),
			"the store cannot write (see the orchestrator's health): the update goes on when it can"},
		{"firmware damaged", with(func(s *UpdateSummary) { s.State, s.Waiting = UpdatePaused, "firmware_damaged" }),
			"the image's file is missing or changed: restore it, then 'update resume'"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, tc.s.Explain())
		})
	}
}
