package fleet

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

// The version order of docs/PROTOCOL.md §5.4, which the orchestrator's
// skip decisions and the Go agent's anti-rollback share: semver precedence
// with a lower-case "v" prefix, short versions and build metadata allowed;
// any other string has no order.
func TestCompareVersions_FollowsTheProtocolsVersionOrder(t *testing.T) {
	tests := []struct {
		a, b string
		cmp  int
		ok   bool
	}{
		{"v1.5.0", "1.5.0", 0, true},
		{"1.5", "1.5.0", 0, true},
		{"1", "1.0.0", 0, true},
		{"1.5.0+b1", "1.5.0+b2", 0, true},
		{"1.5.0-rc.1", "1.5.0", -1, true},
		{"1.10.0", "1.9.0", 1, true},
		{"V1.5.0", "1.5.0", 0, false},
		{"1.5.0.1", "1.5.0", 0, false},
		{"abc", "1.0.0", 0, false},
		{"1.0.0", "abc", 0, false},
	}
	for _, tt := range tests {
		cmp, ok := CompareVersions(tt.a, tt.b)
		assert.Equal(t, tt.ok, ok, "%s vs %s: ordered", tt.a, tt.b)
		if tt.ok {
			assert.Equal(t, tt.cmp, cmp, "%s vs %s", tt.a, tt.b)
		}
	}
}
