package httpapi

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/flotaio/flota/internal/rollout"
)

var descPayloadBuilds = desc("flota_payload_builds_total",
	"Payload builds (compressed images and deltas) by outcome: built (kept), skipped (no smaller than what it replaces), failed, refused (the build queue was full), retried (after a disk fault).", "outcome")

// putPayloadBuilds reports the payload builder's counters.
func putPayloadBuilds(put func(*prometheus.Desc, prometheus.ValueType, float64, ...string), s rollout.Stats) {
	put(descPayloadBuilds, prometheus.CounterValue, float64(s.PayloadsBuilt), "built")
	put(descPayloadBuilds, prometheus.CounterValue, float64(s.PayloadsSkipped), "skipped")
	put(descPayloadBuilds, prometheus.CounterValue, float64(s.PayloadsFailed), "failed")
	put(descPayloadBuilds, prometheus.CounterValue, float64(s.PayloadsRefused), "refused")
	put(descPayloadBuilds, prometheus.CounterValue, float64(s.PayloadRetries), "retried")
}
