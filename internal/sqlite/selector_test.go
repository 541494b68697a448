package sqlite

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
)

// maxSelector returns a selector at every limit of fleet.Selector at once:
// the most tags (some of them empty: "without this tag"), the most device
// IDs, and the longest model and version.
func maxSelector() fleet.Selector {
	sel := fleet.Selector{
		Model:   strings.Repeat("m", fleet.MaxSelectorString),
		Version: strings.Repeat("1", fleet.MaxSelectorString),
		Tags:    map[string]string{},
	}
	for i := range fleet.MaxSelectorTags {
		k := fmt.Sprintf("k%03d", i) + strings.Repeat("k", fleet.MaxSelectorString-4)
		sel.Tags[k] = ""
		if i%4 != 0 {
			sel.Tags[k] = strings.Repeat("v", fleet.MaxSelectorString-4) + fmt.Sprintf("%04d", i)
		}
	}
	for i := range fleet.MaxSelectorDevices {
		sel.Devices = append(sel.Devices, fmt.Sprintf("d%05d", i))
	}
	return sel
}

func TestStore_SelectDevicesWorksAtTheSelectorLimits(t *testing.T) {
	s := newTestStore(t, "")
	ctx := context.Background()
	sel := maxSelector()
	present := map[string]string{}
	for k, v := range sel.Tags {
		if v != "" {
			present[k] = v
		}
	}
	device := func(id string, edit func(tags map[string]string)) fleet.Device {
		tags := maps.Clone(present)
		if edit != nil {
			edit(tags)
		}
		return fleet.Device{ID: id, Model: sel.Model, Version: sel.Version, Tags: tags}
	}
	someKey := func(empty bool) string {
		for k, v := range sel.Tags {
			if (v == "") == empty {
				return k
			}
		}
		panic("no such tag")
	}
	devs := []fleet.Device{
		device("d00001", nil), // every tag
		device("d00002", func(tags map[string]string) { delete(tags, someKey(false)) }),   // one missing
		device("d00003", func(tags map[string]string) { tags[someKey(false)] = "other" }), // one differs
		device("d00004", func(tags map[string]string) { tags[someKey(true)] = "set" }),    // one that must be absent is set
		device("d00005", func(tags map[string]string) { tags[someKey(true)] = "" }),       // set but empty: matches
		device("d00006", func(tags map[string]string) { tags["extra"] = "x" }),            // more tags: matches
		device("x00001", nil), // not among the IDs
		{ID: "d00007", Model: "other", Version: sel.Version, Tags: maps.Clone(present)}, // other model
	}
	for _, d := range devs {
		require.NoError(t, s.SaveDevice(d))
	}
	require.NoError(t, s.Flush(ctx))

	got, err := s.SelectDevices(ctx, sel)
	require.NoError(t, err, "the largest selector allowed runs in the store")
	var ids []string
	for _, d := range got {
		ids = append(ids, d.ID)
	}
	var want []string
	m, err := sel.Compile()
	require.NoError(t, err)
	for _, d := range devs {
		if m.Match(d) {
			want = append(want, d.ID)
		}
	}
	assert.Equal(t, []string{"d00001", "d00005", "d00006"}, want)
	assert.Equal(t, want, ids, "the store selects what the matcher matches")
}

func TestStore_SelectDevicesRefusesASelectorOverTheLimits(t *testing.T) {
	s := newTestStore(t, "")
	sel := maxSelector()
	sel.Tags["one-more"] = "x"
	_, err := s.SelectDevices(context.Background(), sel)
	require.ErrorIs(t, err, fleet.ErrSelectorTooLarge)
	assert.False(t, errors.Is(err, fleet.ErrInvalidInput))
}
