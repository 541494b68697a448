package fleet_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
)

func TestSelector_ValidateRefusesEachLimitPlusOne(t *testing.T) {
	tags := func(n int) map[string]string {
		m := map[string]string{}
		for i := range n {
			m[fmt.Sprint("k", i)] = "v"
		}
		return m
	}
	ids := func(n int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = fmt.Sprintf("d%05d", i)
		}
		return out
	}
	long := func(n int) string { return strings.Repeat("x", n) }
	for name, tc := range map[string]struct {
		at, over fleet.Selector
		msg      string
	}{
		"tags":      {fleet.Selector{Tags: tags(fleet.MaxSelectorTags)}, fleet.Selector{Tags: tags(fleet.MaxSelectorTags + 1)}, "tags: 257, at most 256"},
		"devices":   {fleet.Selector{Devices: ids(fleet.MaxSelectorDevices)}, fleet.Selector{Devices: ids(fleet.MaxSelectorDevices + 1)}, "device IDs: 10001, at most 10000"},
		"model":     {fleet.Selector{Model: long(fleet.MaxSelectorString)}, fleet.Selector{Model: long(fleet.MaxSelectorString + 1)}, "model bytes: 257, at most 256"},
		"version":   {fleet.Selector{Version: strings.Repeat("1", fleet.MaxSelectorString)}, fleet.Selector{Version: strings.Repeat("1", fleet.MaxSelectorString+1)}, "version bytes: 257, at most 256"},
		"tag key":   {fleet.Selector{Tags: map[string]string{long(fleet.MaxSelectorString): "v"}}, fleet.Selector{Tags: map[string]string{long(fleet.MaxSelectorString + 1): "v"}}, "at most 256"},
		"tag value": {fleet.Selector{Tags: map[string]string{"k": long(fleet.MaxSelectorString)}}, fleet.Selector{Tags: map[string]string{"k": long(fleet.MaxSelectorString + 1)}}, "at most 256"},
	} {
		t.Run(name, func(t *testing.T) {
			require.NoError(t, tc.at.Validate(), "at the limit")
			err := tc.over.Validate()
			require.ErrorIs(t, err, fleet.ErrSelectorTooLarge)
			assert.Contains(t, err.Error(), tc.msg)
		})
	}
}
