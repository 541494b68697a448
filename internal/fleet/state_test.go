package fleet

import (
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Short names for the expected table below.
const (
	qu = StateQueued
	sk = StateSkipped
	of = StateOffered
	ac = StateAccepted
	rj = StateRejected
	dl = StateDownloading
	dd = StateDownloaded
	ve = StateVerified
	in = StateInstalling
	rb = StateRebooting
	su = StateSucceeded
	fa = StateFailed
	ca = StateCancelled
	ol = StateOffline
)

// wantTransitions is the device state machine written out independently of
// state.go: a change to the machine must change this table too, and
// docs/PROTOCOL.md with it.
var wantTransitions = map[DeviceState][]DeviceState{
	qu: {of, sk, ca, fa, ol, su},
	of: {of, ac, rj, fa, ca, qu, sk},
	ac: {of, dl, dd, fa, ca, qu},
	dl: {of, dd, fa, ca, qu},
	dd: {of, ve, fa, ca, qu},
	ve: {of, in, fa, ca, qu},
	in: {rb, su, fa},
	rb: {su, fa},
	fa: {qu},
	ol: {qu},
	su: {},
	rj: {},
	ca: {},
	sk: {},
}

func TestAllDeviceStates_Complete(t *testing.T) {
	assert.Len(t, AllDeviceStates, len(wantTransitions))
	seen := map[DeviceState]bool{}
	for _, s := range AllDeviceStates {
		assert.False(t, seen[s], "duplicate %s", s)
		seen[s] = true
		assert.True(t, s.Valid(), "%s", s)
		_, ok := wantTransitions[s]
		assert.True(t, ok, "%s missing from the expected table", s)
	}
}

func TestCanTransition_EveryPair(t *testing.T) {
	for _, from := range AllDeviceStates {
		allowed := map[DeviceState]bool{}
		for _, to := range wantTransitions[from] {
			allowed[to] = true
		}
		for _, to := range AllDeviceStates {
			t.Run(fmt.Sprintf("%s->%s", from, to), func(t *testing.T) {
				assert.Equal(t, allowed[to], CanTransition(from, to))
			})
		}
	}
}

func TestCanTransition_UnknownStates(t *testing.T) {
	assert.False(t, CanTransition("", StateOffered))
	assert.False(t, CanTransition("bogus", StateOffered))
	assert.False(t, CanTransition(StateQueued, "bogus"))
	assert.False(t, CanTransition(StateQueued, ""))
}

func TestTransition_Result(t *testing.T) {
	got, err := Transition(StateOffered, StateAccepted)
	require.NoError(t, err)
	assert.Equal(t, StateAccepted, got)

	got, err = Transition(StateSucceeded, StateOffered)
	require.Error(t, err)
	assert.ErrorIs(t, err, ErrIllegalTransition)
	assert.Equal(t, StateSucceeded, got, "an illegal transition keeps the state")
	assert.Contains(t, err.Error(), "succeeded -> offered")

	for _, from := range AllDeviceStates {
		for _, to := range AllDeviceStates {
			_, err := Transition(from, to)
			assert.Equal(t, CanTransition(from, to), err == nil, "%s -> %s", from, to)
			if err != nil {
				assert.True(t, errors.Is(err, ErrIllegalTransition))
			}
		}
	}
}

func TestDeviceState_Valid(t *testing.T) {
	for _, s := range AllDeviceStates {
		assert.True(t, s.Valid(), "%s", s)
	}
	for _, s := range []DeviceState{"", "Accepted", "done", "downloading "} {
		assert.False(t, s.Valid(), "%q", s)
	}
}

func TestDeviceState_TerminalAndTransferring(t *testing.T) {
	tests := []struct {
		s            DeviceState
		terminal     bool
		transferring bool
	}{
		{qu, false, false},
		{of, false, true},
		{ac, false, true},
		{dl, false, true},
		{dd, false, true},
		{ve, false, true},
		{in, false, true},
		{rb, false, false},
		{su, true, false},
		{rj, true, false},
		{fa, true, false},
		{ca, true, false},
		{sk, true, false},
		{ol, true, false},
	}
	require.Len(t, tests, len(AllDeviceStates))
	for _, tt := range tests {
		assert.Equal(t, tt.terminal, tt.s.Terminal(), "%s.Terminal", tt.s)
		assert.Equal(t, tt.transferring, tt.s.Transferring(), "%s.Transferring", tt.s)
	}
	assert.False(t, DeviceState("bogus").Terminal())
	assert.False(t, DeviceState("bogus").Transferring())
}

func TestDeviceState_TerminalHasNoWayOutButRetry(t *testing.T) {
	// Terminal states lead nowhere, except failed and offline, which may be
	// queued again.
	for _, s := range AllDeviceStates {
		if !s.Terminal() {
			continue
		}
		for _, to := range AllDeviceStates {
			if CanTransition(s, to) {
				assert.Contains(t, []DeviceState{StateFailed, StateOffline}, s, "%s -> %s", s, to)
				assert.Equal(t, StateQueued, to, "%s -> %s", s, to)
			}
		}
	}
}

func TestUpdateState_Terminal(t *testing.T) {
	tests := []struct {
		s    UpdateState
		want bool
	}{
		{UpdateRunning, false},
		{UpdatePaused, false},
		{UpdateCompleted, true},
		{UpdateCompletedWithFailures, true},
		{UpdateCancelled, true},
		{"", false},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, tt.s.Terminal(), "%q", tt.s)
	}
}
