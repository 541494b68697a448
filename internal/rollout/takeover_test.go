package rollout_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/agent"
	"github.com/flotaio/flota/internal/fleet"
)

// An engine restarted while the devices stay connected (an external
// broker) hears no hello; the transport tells it which devices it found
// online, and the update goes on from the bytes each device holds.
func TestEngine_DevicesFoundOnlineAfterARestartResumeWithoutAHello(t *testing.T) {
	h := newHarness(t)
	agents := h.startAgents(6, "f", agent.Config{})
	h.waitDevices(6)
	const size = 2 * 1024 * 1024
	fw, img := h.addFirmware(size, "1.1.0")
	u := h.create(fw, fleet.Policy{ChunkSize: 1024, Window: 1, MaxInFlight: 3}, fleet.Selector{})
	eventually(t, 10*time.Second, func() bool {
		s, _ := h.engine.Summary(context.Background(), u.ID)
		return s.BytesAcked > 256*1024
	}, "transfers under way")

	require.NoError(t, h.engine.Close())
	h.openEngine()
	for _, a := range agents {
		h.engine.DeviceFoundOnline(a.ID())
	}
	s := h.waitEnd(u.ID, 60*time.Second)
	assert.Equal(t, fleet.UpdateCompleted, s.State)
	assert.Equal(t, 6, s.Counts[fleet.StateSucceeded])
	for _, a := range agents {
		st := a.Stats()
		assert.Equal(t, "1.1.0", st.Version, st.ID)
		assert.Equal(t, 1, st.Installs, st.ID)
		assert.Equal(t, sha(img), st.ImageSHA256, st.ID)
		assert.EqualValues(t, size, st.BytesReceived, "%s resumed from the bytes it held", st.ID)
	}
}
