package sqlite

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
)

// fleet100k is the size of the registered fleet of the scale benchmarks.
const fleet100k = 100_000

// seedFleet registers n devices through the writer, as hellos would: two
// models, four versions, a site tag (50 sites) and a ring tag (1 % canary).
func seedFleet(b *testing.B, s *Store, n int) []string {
	b.Helper()
	versions := []string{"1.0.0", "1.1.0", "1.2.3", "2.0.0"}
	ids := make([]string, n)
	now := time.Now()
	for i := range n {
		ids[i] = fmt.Sprintf("dev-%06d", i)
		ring := "main"
		if i%100 == 0 {
			ring = "canary"
		}
		d := fleet.Device{ID: ids[i], Model: []string{"sim-a", "sim-b"}[i%2], Version: versions[(i/2)%len(versions)],
			Tags: map[string]string{"site": fmt.Sprintf("site-%02d", i%50), "ring": ring}, LastSeen: now}
		require.NoError(b, s.SaveDevice(d))
	}
	require.NoError(b, s.Flush(context.Background()))
	return ids
}

// BenchmarkStore_SelectDevices100k measures target selection over 100,000
// registered devices, for each kind of selector.
func BenchmarkStore_SelectDevices100k(b *testing.B) {
	s := newTestStore(b, "")
	seedFleet(b, s, fleet100k)
	ctx := context.Background()
	for _, c := range []struct {
		name string
		sel  fleet.Selector
		want int
	}{
		{"all", fleet.Selector{}, fleet100k},
		{"model", fleet.Selector{Model: "sim-a"}, fleet100k / 2},
		{"model_version", fleet.Selector{Model: "sim-a", Version: "1.1.0"}, fleet100k / 8},
		{"version_range", fleet.Selector{Version: ">=1.1.0 <2.0.0"}, fleet100k / 2},
		{"tag_site", fleet.Selector{Tags: map[string]string{"site": "site-07"}}, fleet100k / 50},
		{"tag_canary", fleet.Selector{Model: "sim-a", Tags: map[string]string{"ring": "canary"}}, fleet100k / 100},
		{"tags_max", fleet.Selector{Tags: maxSelector().Tags}, 0},
		{"max", maxSelector(), 0},
	} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				ds, err := s.SelectDevices(ctx, c.sel)
				if err != nil {
					b.Fatal(err)
				}
				if len(ds) != c.want {
					b.Fatalf("selected %d devices, want %d", len(ds), c.want)
				}
			}
			b.ReportMetric(float64(c.want), "devices/op")
		})
	}
}

// BenchmarkStore_ListDevices100k measures one API page (100 devices) of a
// 100,000-device fleet: the first page, a deep page by offset, and the same
// deep page by key (?after=).
func BenchmarkStore_ListDevices100k(b *testing.B) {
	s := newTestStore(b, "")
	ids := seedFleet(b, s, fleet100k)
	ctx := context.Background()
	deep := fleet100k - 1000
	for _, c := range []struct {
		name string
		f    DeviceFilter
	}{
		{"first_page", DeviceFilter{Limit: 100}},
		{"offset_99k", DeviceFilter{Limit: 100, Offset: deep}},
		{"after_99k", DeviceFilter{Limit: 100, After: ids[deep-1]}},
		{"model_offset_49k", DeviceFilter{Model: "sim-b", Limit: 100, Offset: fleet100k/2 - 1000}},
		{"model_after_49k", DeviceFilter{Model: "sim-b", Limit: 100, After: ids[deep-1]}},
	} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				ds, total, err := s.ListDevices(ctx, c.f)
				if err != nil {
					b.Fatal(err)
				}
				if len(ds) != 100 || total == 0 {
					b.Fatalf("page of %d devices, total %d", len(ds), total)
				}
			}
		})
	}
}

// BenchmarkStore_Progress100k measures one API page (100 devices) of an
// update over 100,000 devices: first page, deep page by offset and by key,
// and a state filter.
func BenchmarkStore_Progress100k(b *testing.B) {
	s := newTestStore(b, "")
	ids := make([]string, fleet100k)
	for i := range ids {
		ids[i] = fmt.Sprintf("dev-%06d", i)
	}
	addUpdate(b, s, "big", ids...)
	for i := 0; i < fleet100k; i += 10 {
		require.NoError(b, s.SaveProgress(fleet.Progress{UpdateID: "big", DeviceID: ids[i], State: fleet.StateSucceeded}, 1))
	}
	ctx := context.Background()
	require.NoError(b, s.Flush(ctx))
	deep := fleet100k - 1000
	for _, c := range []struct {
		name string
		f    ProgressFilter
	}{
		{"first_page", ProgressFilter{Limit: 100}},
		{"offset_99k", ProgressFilter{Limit: 100, Offset: deep}},
		{"after_99k", ProgressFilter{Limit: 100, After: ids[deep-1]}},
		{"state_offset_9k", ProgressFilter{State: fleet.StateSucceeded, Limit: 100, Offset: fleet100k/10 - 1000}},
		{"state_after_9k", ProgressFilter{State: fleet.StateSucceeded, Limit: 100, After: ids[deep-1]}},
	} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				ps, total, err := s.Progress(ctx, "big", c.f)
				if err != nil {
					b.Fatal(err)
				}
				if len(ps) != 100 || total == 0 {
					b.Fatalf("page of %d rows, total %d", len(ps), total)
				}
			}
		})
	}
}
