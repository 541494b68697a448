package sqlite

import (
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
)

// TestStore_SelectDevicesAgreesWithMatcher checks that the selection done in
// SQL (tags, exact version) and with a cached range check selects exactly
// the devices fleet.Selector.Matches selects.
func TestStore_SelectDevicesAgreesWithMatcher(t *testing.T) {
	s := newTestStore(t, "")
	ctx := context.Background()
	versions := []string{"1.0.0", "1.2.0", "2.0.0", "weird", ""}
	var all []fleet.Device
	for i := range 40 {
		d := fleet.Device{ID: fmt.Sprintf("d%02d", i), Model: []string{"m1", "m2"}[i%2], Version: versions[i%len(versions)]}
		switch i % 4 {
		case 0:
			d.Tags = map[string]string{"site": "a", `we"ird.key`: "x y"}
		case 1:
			d.Tags = map[string]string{"site": "b", "ring": "canary"}
		case 2:
			d.Tags = map[string]string{"ring": ""}
		}
		require.NoError(t, s.SaveDevice(d))
		all = append(all, d)
	}
	require.NoError(t, s.Flush(ctx))

	for _, sel := range []fleet.Selector{
		{},
		{Model: "m1"},
		{Version: "1.2.0"},
		{Version: ">=1.1.0"},
		{Version: "<2.0.0", Model: "m2"},
		{Tags: map[string]string{"site": "a"}},
		{Tags: map[string]string{`we"ird.key`: "x y"}},
		{Tags: map[string]string{"site": "b", "ring": "canary"}},
		{Tags: map[string]string{"ring": ""}}, // matches devices without a ring, or an empty one
		{Tags: map[string]string{"site": "a"}, Version: "~1.0", Devices: []string{"d00", "d04", "d20"}},
	} {
		t.Run(fmt.Sprintf("%+v", sel), func(t *testing.T) {
			var want []string
			for _, d := range all {
				if sel.Matches(d) {
					want = append(want, d.ID)
				}
			}
			ds, err := s.SelectDevices(ctx, sel)
			require.NoError(t, err)
			var got []string
			for _, d := range ds {
				got = append(got, d.ID)
			}
			assert.Equal(t, want, got)
		})
	}
}

// TestStore_PagingByKeyMatchesOffset walks devices and an update's devices
// with ?after= and checks it returns the same pages as offsets.
func TestStore_PagingByKeyMatchesOffset(t *testing.T) {
	s := newTestStore(t, "")
	ctx := context.Background()
	var ids []string
	for i := range 25 {
		id := fmt.Sprintf("d%02d", i)
		ids = append(ids, id)
		require.NoError(t, s.SaveDevice(fleet.Device{ID: id, Model: []string{"m1", "m2"}[i%3/2]}))
	}
	addUpdate(t, s, "u1", ids...)
	for _, id := range ids[5:] {
		require.NoError(t, s.SaveProgress(fleet.Progress{UpdateID: "u1", DeviceID: id, State: fleet.StateSucceeded}, 1))
	}
	require.NoError(t, s.Flush(ctx))

	t.Run("devices", func(t *testing.T) {
		for _, model := range []string{"", "m1"} {
			var byKey, byOffset []string
			after := ""
			for {
				page, total, err := s.ListDevices(ctx, DeviceFilter{Model: model, After: after, Limit: 4})
				require.NoError(t, err)
				byOffset2, total2, err := s.ListDevices(ctx, DeviceFilter{Model: model, Limit: 4, Offset: len(byKey)})
				require.NoError(t, err)
				assert.Equal(t, total2, total, "total counts every match")
				for _, d := range byOffset2 {
					byOffset = append(byOffset, d.ID)
				}
				if len(page) == 0 {
					break
				}
				for _, d := range page {
					byKey = append(byKey, d.ID)
				}
				after = page[len(page)-1].ID
			}
			assert.Equal(t, byOffset, byKey)
			assert.NotEmpty(t, byKey)
		}
	})
	t.Run("progress", func(t *testing.T) {
		for _, state := range []fleet.DeviceState{"", fleet.StateSucceeded} {
			var byKey []string
			after := ""
			for {
				page, total, err := s.Progress(ctx, "u1", ProgressFilter{State: state, After: after, Limit: 6})
				require.NoError(t, err)
				if state == "" {
					assert.Equal(t, 25, total)
				} else {
					assert.Equal(t, 20, total)
				}
				if len(page) == 0 {
					break
				}
				for _, p := range page {
					byKey = append(byKey, p.DeviceID)
				}
				after = page[len(page)-1].DeviceID
			}
			if state == "" {
				assert.Equal(t, ids, byKey)
			} else {
				assert.Equal(t, ids[5:], byKey)
			}
		}
	})
}
