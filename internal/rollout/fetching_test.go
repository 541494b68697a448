package rollout_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/agent"
	"github.com/flotaio/flota/internal/fleet"
)

// createWaiting creates an update on a firmware still fetching and checks
// that it waits, its devices chosen and offered nothing.
func createWaiting(t *testing.T, h *harness, devices int) (fleet.Firmware, fleet.Update) {
	t.Helper()
	ctx := context.Background()
	pending, err := h.store.AddPendingFirmware(ctx, fleet.Firmware{Name: "app", Version: "1.1.0", Model: "m1"}, "fetch-1")
	require.NoError(t, err)
	u := h.create(pending, fleet.Policy{}, fleet.Selector{})
	assert.Equal(t, fleet.UpdateWaiting, u.State)
	s, err := h.engine.Summary(ctx, u.ID)
	require.NoError(t, err)
	assert.Equal(t, "firmware_fetching", s.Waiting)
	assert.Equal(t, devices, s.Counts[fleet.StateQueued])
	require.NotNil(t, s.FirmwareFetch)
	assert.Equal(t, "fetch-1", s.FirmwareFetch.ID)
	_, _, err = h.store.OpenFirmware(ctx, pending.ID)
	require.ErrorIs(t, err, fleet.ErrFirmwareFetching)
	return pending, u
}

func TestEngine_WaitingUpdateStartsAtARestartWhenItsFirmwareWasStoredBeforeTheStop(t *testing.T) {
	h := newHarness(t)
	agents := h.startAgents(3, "w", agent.Config{})
	h.waitDevices(3)
	pending, u := createWaiting(t, h, 3)

	require.NoError(t, h.engine.Close())
	img := make([]byte, 40<<10)
	_, _ = rand.Read(img)
	fw, err := h.store.FillPendingFirmware(context.Background(), pending.ID, bytes.NewReader(img), nil)
	require.NoError(t, err)
	assert.Equal(t, pending.ID, fw.ID)
	assert.Empty(t, fw.Fetch)
	h.openEngine()
	// A new process: its devices connect again and say hello.
	for _, a := range agents {
		a.Close()
	}
	agents = h.startAgentsLike(agents)

	s := h.waitEnd(u.ID, 60*time.Second)
	assert.Equal(t, fleet.UpdateCompleted, s.State)
	assert.Equal(t, 3, s.Counts[fleet.StateSucceeded])
	for _, a := range agents {
		assert.Equal(t, sha(img), a.Stats().ImageSHA256)
	}
}

func TestEngine_WaitingUpdateEndsFailedAtARestartWhenItsFetchDied(t *testing.T) {
	h := newHarness(t)
	agents := h.startAgents(2, "d", agent.Config{})
	h.waitDevices(2)
	_, u := createWaiting(t, h, 2)

	require.NoError(t, h.engine.Close())
	h.openEngine()
	s := h.waitEnd(u.ID, 10*time.Second)
	assert.Equal(t, fleet.UpdateFailed, s.State)
	assert.Equal(t, 2, s.Counts[fleet.StateCancelled])
	assert.Contains(t, s.EndedReason, "stopped while the firmware was fetching")
	require.NoError(t, h.store.Flush(context.Background()))
	stored, err := h.store.Update(context.Background(), u.ID)
	require.NoError(t, err)
	assert.Equal(t, fleet.UpdateFailed, stored.State)
	assert.Equal(t, s.EndedReason, stored.EndedReason)
	for _, a := range agents {
		assert.Zero(t, a.Stats().BytesReceived, "nothing was offered")
	}
}
