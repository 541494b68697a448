package fleet

import (
	"fmt"
	"strings"
	"time"
)

// Explain says, for people, why an update that has not ended starts no
// device, and which devices it still waits for; "" when nothing holds it.
// The CLI prints it and the summary carries it (waiting_detail) for the
// dashboard: one wording everywhere.
func (s UpdateSummary) Explain() string {
	if s.State.Terminal() {
		return ""
	}
	var parts []string
	switch {
	case s.Gate == "failed":
		p := fmt.Sprintf("phase %d gate failed", s.Phase)
		if g := s.GateFigures; g != nil {
			p += fmt.Sprintf(" (succeeded=%d needed=%d of %d)", g.Succeeded, g.Needed, g.Size)
		}
		parts = append(parts, p+": 'update resume' goes on, 'update cancel' ends")
	case s.Gate == "waiting_approval":
		parts = append(parts, fmt.Sprintf("phase %d passed: waits for 'update resume'", s.Phase))
	case s.Gate == "soaking":
		parts = append(parts, fmt.Sprintf("phase %d passed: soaking until %s", s.Phase, until(s.WaitingUntil)))
	}
	switch s.Waiting {
	case "", "gate":
	case "scheduled":
		if at := s.Policy.StartAt; at != nil {
			parts = append(parts, "scheduled for "+until(at))
		} else {
			parts = append(parts, "scheduled")
		}
	case "paused":
		if s.Gate == "" {
			by := "an operator"
			if s.PausedReason != "" && s.PausedReason != ReasonOperator {
				by = string(s.PausedReason)
			}
			parts = append(parts, "paused by "+by+": 'update resume' goes on")
		}
	case "maintenance_window":
		if w := s.Policy.Maintenance; w != nil {
			tz := w.TimeZone
			if tz == "" {
				tz = "UTC"
			}
			parts = append(parts, fmt.Sprintf("outside the maintenance window %s-%s %s: opens %s", w.Start, w.End, tz, until(s.WaitingUntil)))
		} else {
			parts = append(parts, "outside the maintenance window")
		}
	case "rate":
		parts = append(parts, fmt.Sprintf("rate limit: %d devices a minute, next start %s", s.Policy.Rate, until(s.WaitingUntil)))
	case "offline_devices":
	case "store":
		parts = append(parts, "the store cannot write (see the orchestrator's health): the update goes on when it can")
	case "firmware_damaged":
		parts = append(parts, "the image's file is missing or changed: restore it, then 'update resume'")
	default:
		parts = append(parts, s.Waiting)
	}
	if s.PayloadsPending > 0 {
		parts = append(parts, fmt.Sprintf("%d device(s) wait for a delta being built (at most %s each, then they get the image)",
			s.PayloadsPending, DefaultPayloadWait))
	}
	if s.Unseen > 0 {
		p := fmt.Sprintf("%d device(s) not connected", s.Unseen)
		if s.UnseenUntil != nil {
			p += ", offline at " + until(s.UnseenUntil)
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, "; ")
}

// TextTimeLayout is how times are written for people, in CLI tables and in
// sentences such as Explain's: date, time of day to the second, and the
// offset from UTC, so that a line read elsewhere names the same instant.
// JSON carries RFC 3339 in UTC instead.
const TextTimeLayout = "2006-01-02 15:04:05 -07:00"

// until formats a time the summary waits for, in UTC (the server's and the
// reader's zones may differ; a summary is also read as JSON).
func until(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return t.UTC().Format(TextTimeLayout)
}
