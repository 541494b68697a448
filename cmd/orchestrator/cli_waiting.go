package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/flotaio/flota/internal/fleet"
)

// waitingText says, for people, why an update that has not ended starts no
// device, and which devices it still waits for; "" when nothing holds it.
func waitingText(s fleet.UpdateSummary) string {
	if s.State.Terminal() {
		return ""
	}
	var parts []string
	switch {
	case s.Gate == "failed":
		parts = append(parts, fmt.Sprintf("phase %d gate failed: 'update resume' goes on, 'update cancel' ends", s.Phase))
	case s.Gate == "waiting_approval":
		parts = append(parts, fmt.Sprintf("phase %d passed: waits for 'update resume'", s.Phase))
	case s.Gate == "soaking":
		parts = append(parts, fmt.Sprintf("phase %d passed: soaking %s", s.Phase, s.Policy.Soak.D()))
	}
	switch s.Waiting {
	case "", "gate":
	case "scheduled":
		if at := s.Policy.StartAt; at != nil {
			parts = append(parts, "scheduled for "+at.Local().Format(time.DateTime))
		} else {
			parts = append(parts, "scheduled")
		}
	case "paused":
		if s.Gate == "" {
			parts = append(parts, "paused: 'update resume' goes on")
		}
	case "maintenance_window":
		if w := s.Policy.Maintenance; w != nil {
			tz := w.TimeZone
			if tz == "" {
				tz = "UTC"
			}
			parts = append(parts, fmt.Sprintf("outside the maintenance window %s-%s %s", w.Start, w.End, tz))
		} else {
			parts = append(parts, "outside the maintenance window")
		}
	case "rate":
		parts = append(parts, fmt.Sprintf("rate limit: %d devices a minute", s.Policy.Rate))
	case "offline_devices":
	default:
		parts = append(parts, s.Waiting)
	}
	if s.Unseen > 0 {
		p := fmt.Sprintf("%d device(s) not connected", s.Unseen)
		if s.UnseenUntil != nil {
			p += ", offline at " + s.UnseenUntil.Local().Format(time.DateTime)
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, "; ")
}
