package main

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
)

func TestServe_NegativeRetentionIsAUsageError(t *testing.T) {
	for _, args := range [][]string{
		{"serve", "--event-max-rows", "-1"},
		{"serve", "--event-retention", "-1h"},
	} {
		r := runCLI(t, "", args...)
		assert.Equal(t, exitUsage, r.code, "%v", args)
		assert.Contains(t, r.stderr, "must not be negative")
	}
}

// TestMain_EventMaxRowsBoundsTheLog starts serve's wiring with a row bound
// on a data directory whose log is over it: the pruner's first pass, at
// start, deletes the oldest events, and the engine numbers new events after
// the newest one.
func TestMain_EventMaxRowsBoundsTheLog(t *testing.T) {
	m := newTestMain(t)
	require.NoError(t, m.Run(context.Background()))
	ctx := context.Background()
	for seq := int64(1); seq <= 50; seq++ {
		require.NoError(t, m.Store.AppendEvent(fleet.Event{Seq: seq, Time: time.Now(), Type: fleet.EventDevice,
			UpdateID: "u-old", DeviceID: "d1"}))
	}
	require.NoError(t, m.Store.Flush(ctx))
	require.NoError(t, m.Close())

	m2 := newTestMain(t)
	m2.Config.DataDir = m.Config.DataDir
	m2.Config.EventMaxRows = 20
	require.NoError(t, m2.Run(ctx))
	t.Cleanup(func() { assert.NoError(t, m2.Close()) })
	require.Eventually(t, func() bool {
		wm, err := m2.Store.PrunedThrough(ctx)
		return err == nil && wm == 30
	}, 10*time.Second, 10*time.Millisecond)
	evs, err := m2.Store.Events(ctx, "", 0, 0)
	require.NoError(t, err)
	require.Len(t, evs, 20)
	assert.EqualValues(t, 31, evs[0].Seq)
	seq, err := m2.Store.MaxEventSeq(ctx)
	require.NoError(t, err)
	assert.EqualValues(t, 50, seq)
}

// TestMain_DefaultRetentionPrunesOldEvents starts serve's wiring with its
// default configuration on a data directory holding events from 31 days
// ago and from now: the pruner deletes the old ones and keeps the others.
func TestMain_DefaultRetentionPrunesOldEvents(t *testing.T) {
	m := newTestMain(t)
	require.NoError(t, m.Run(context.Background()))
	ctx := context.Background()
	old := time.Now().Add(-31 * 24 * time.Hour)
	for seq := int64(1); seq <= 30; seq++ {
		at := time.Now()
		if seq <= 20 {
			at = old
		}
		require.NoError(t, m.Store.AppendEvent(fleet.Event{Seq: seq, Time: at, Type: fleet.EventDevice,
			UpdateID: "u-old", DeviceID: "d1"}))
	}
	require.NoError(t, m.Store.Flush(ctx))
	require.NoError(t, m.Close())

	m2 := newTestMain(t)
	m2.Config.DataDir = m.Config.DataDir
	require.NoError(t, m2.Run(ctx))
	t.Cleanup(func() { assert.NoError(t, m2.Close()) })
	require.Eventually(t, func() bool {
		wm, err := m2.Store.PrunedThrough(ctx)
		return err == nil && wm == 20
	}, 10*time.Second, 10*time.Millisecond)
	evs, err := m2.Store.Events(ctx, "", 0, 0)
	require.NoError(t, err)
	require.Len(t, evs, 10)
	assert.EqualValues(t, 21, evs[0].Seq)
	assert.Equal(t, DefaultEventMaxRows, int(m2.Config.EventMaxRows), "a row bound by default too")
}

func TestServe_BadLogAndEventLimitsAreUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"serve", "--illegal-event-interval", "-1s"},
		{"serve", "--log-client-lines", "0"},
		{"serve", "--log-client-lines", "-2"},
		{"serve", "--log-client-interval", "0s"},
		{"serve", "--log-clients-total", "0"},
	} {
		r := runCLI(t, "", args...)
		assert.Equal(t, exitUsage, r.code, "%v", args)
		assert.Contains(t, r.stderr, "--log-client-lines", "%v", args)
	}
}
