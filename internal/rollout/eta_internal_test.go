package rollout

import (
	"encoding/json"
	"math"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestETA_StaysEncodable(t *testing.T) {
	assert.Equal(t, 10.0, eta(100, 10))
	// A stalled update's smoothed rate decays to subnormal numbers; the
	// quotient would be +Inf and the summary unencodable.
	for _, rate := range []float64{math.SmallestNonzeroFloat64, 1e-310, 1e-300, 0, -1} {
		got := eta(1<<20, rate)
		assert.Zero(t, got, "rate %g", rate)
		_, err := json.Marshal(got)
		assert.NoError(t, err)
	}
	assert.Zero(t, eta(1<<40, 1e-3), "over a year is no estimate")
}
