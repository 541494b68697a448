package rollout

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
)

// plainStatus has deviceStatus's fields and tags but not its AppendJSON:
// encoding/json's reflection encodes it, the reference.
type plainStatus deviceStatus

func TestDeviceStatusJSON_EqualsEncodingJSON(t *testing.T) {
	for _, s := range []string{"", "sim-00042", "a<b>&\"c\\", "ctl\x01\n", "ünï\xff", "ls\u2028"} {
		for _, reason := range []fleet.Reason{"", fleet.ReasonBadDigest, fleet.Reason(s)} {
			st := deviceStatus{Device: s, Update: "upd-" + s, State: fleet.DeviceState(s), Offset: 16384, Size: -1, Attempt: 3,
				Reason: reason, Version: s, Time: time.Date(2026, 11, 27, 11, 29, 10, 120, time.FixedZone("x", 3600))}
			want, err := json.Marshal(plainStatus(st))
			require.NoError(t, err)
			assert.Equal(t, string(want), string(st.AppendJSON(nil)))
		}
	}
}
