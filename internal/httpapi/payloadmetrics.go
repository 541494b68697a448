package httpapi

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/flotaio/flota/internal/rollout"
)

var descPayloadBuilds = desc("flota_payload_builds_total",
	"Payload builds (compressed images and deltas) by outcome: built (kept), skipped (no smaller than what it replaces), failed, refused (the build queue was full), retried (after a disk fault).", "outcome")

// putPayloadBuilds reports the payload builder's counters.
func putPayloadBuilds(put func(*prometheus.Desc, prometheus.ValueType, float64, ...string), p rollout.BuilderStats) {
	put(descPayloadBuilds, prometheus.CounterValue, float64(p.Built), "built")
	put(descPayloadBuilds, prometheus.CounterValue, float64(p.Skipped), "skipped")
	put(descPayloadBuilds, prometheus.CounterValue, float64(p.Failed), "failed")
	put(descPayloadBuilds, prometheus.CounterValue, float64(p.Refused), "refused")
	put(descPayloadBuilds, prometheus.CounterValue, float64(p.Retries), "retried")
}
