package main

import (
	"slices"
	"time"

	"github.com/flotaio/flota/agent"
	"github.com/flotaio/flota/internal/fleet"
)

// outcomes counts the devices by how their last transfer ended. Every
// device is in exactly one of the first five counts.
type outcomes struct {
	// Updated: on the target version (--exit-when-updated), or else on any
	// version but the initial one, and holding no transfer.
	Updated int `json:"updated"`
	// Failed: the last transfer failed or was rejected; Reasons splits it.
	Failed int `json:"failed"`
	// Cancelled: the last transfer was cancelled.
	Cancelled int `json:"cancelled"`
	// InProgress: still holding a transfer at exit.
	InProgress int `json:"in_progress"`
	// Untouched: never offered anything (or done with it and not updated).
	Untouched int            `json:"untouched"`
	Reasons   map[string]int `json:"failure_reasons,omitempty"`
}

// timeStats are nearest-rank percentiles of per-device times, in ms.
type timeStats struct {
	Count int     `json:"count"`
	P50Ms float64 `json:"p50_ms"`
	P90Ms float64 `json:"p90_ms"`
	P99Ms float64 `json:"p99_ms"`
	MaxMs float64 `json:"max_ms"`
}

// profile is the network and fault profile the run used.
type profile struct {
	BandwidthBytesPerSec int64   `json:"bandwidth_bytes_per_sec"` // 0: unlimited
	LatencyMs            float64 `json:"latency_ms"`              // one way
	DropChunks           float64 `json:"drop_chunks"`
	Disconnect           float64 `json:"disconnect"`
	RebootMidDownload    float64 `json:"reboot_mid_download"`
	FailInstall          float64 `json:"fail_install"`
	RebootDelayMs        float64 `json:"reboot_delay_ms"`
	InstallDelayMs       float64 `json:"install_delay_ms"`
	ConnectRate          int     `json:"connect_rate"`
	Persistent           bool    `json:"persistent"` // --state-dir set
	Seed                 uint64  `json:"seed"`
}

func profileOf(o options, seed uint64) profile {
	return profile{
		BandwidthBytesPerSec: o.bandwidth, LatencyMs: ms(o.latency),
		DropChunks: o.faults.DropChunks, Disconnect: o.faults.Disconnect,
		RebootMidDownload: o.faults.RebootMidDownload, FailInstall: o.faults.FailInstall,
		RebootDelayMs: ms(o.rebootDelay), InstallDelayMs: ms(o.installDelay),
		ConnectRate: o.connectRate, Persistent: o.stateDir != "", Seed: seed,
	}
}

// isUpdated is the summary's notion of an updated device.
func isUpdated(o options, s agent.Stats) bool {
	if o.exitWhenUpdated != "" {
		return s.Version == o.exitWhenUpdated
	}
	return s.Version != o.version
}

// outcomeStats counts outcomes and takes the percentiles of the devices'
// end times (offer to confirmed boot, failure or cancel).
func outcomeStats(o options, all []agent.Stats) (outcomes, timeStats) {
	var oc outcomes
	var times []time.Duration
	for _, s := range all {
		switch {
		case s.Holding:
			oc.InProgress++
		case s.Failed:
			oc.Failed++
			if oc.Reasons == nil {
				oc.Reasons = make(map[string]int)
			}
			oc.Reasons[string(s.LastReason)]++
		case isUpdated(o, s):
			oc.Updated++
		case s.State == fleet.StateCancelled:
			oc.Cancelled++
		default:
			oc.Untouched++
		}
		if s.EndTime > 0 && !s.Holding {
			times = append(times, s.EndTime)
		}
	}
	slices.Sort(times)
	ts := timeStats{Count: len(times), P50Ms: ms(percentile(times, 0.50)), P90Ms: ms(percentile(times, 0.90)),
		P99Ms: ms(percentile(times, 0.99))}
	if len(times) > 0 {
		ts.MaxMs = ms(times[len(times)-1])
	}
	return oc, ts
}
