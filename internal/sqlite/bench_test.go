package sqlite

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
)

// BenchmarkStore_SaveProgress measures batched progress upserts through the
// writer goroutine, as the engine issues them at state changes and
// checkpoints.
func BenchmarkStore_SaveProgress(b *testing.B) {
	s := newTestStore(b, "")
	ctx := context.Background()
	const devices = 10_000
	ids := make([]string, devices)
	for i := range ids {
		ids[i] = fmt.Sprintf("dev-%05d", i)
	}
	addUpdate(b, s, "bench", ids...)
	before := s.Stats()

	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		p := fleet.Progress{UpdateID: "bench", DeviceID: ids[i%devices], State: fleet.StateDownloading,
			Offset: int64(i) * 16384, Attempts: 1}
		if err := s.SaveProgress(p, uint32(i)); err != nil {
			b.Fatal(err)
		}
	}
	require.NoError(b, s.Flush(ctx))
	b.StopTimer()

	st := s.Stats()
	rows := st.Rows - before.Rows
	b.ReportMetric(float64(rows)/b.Elapsed().Seconds(), "rows/s")
	b.ReportMetric(float64(st.Transactions-before.Transactions), "sqlite-txs")
}

// BenchmarkStore_CreateUpdate100k measures one update with 100,000 targets,
// stored in one transaction.
func BenchmarkStore_CreateUpdate100k(b *testing.B) {
	s := newTestStore(b, "")
	ctx := context.Background()
	fw, err := s.AddFirmware(ctx, fleet.Firmware{Version: "1"}, strings.NewReader("image"))
	require.NoError(b, err)
	const n = 100_000
	targets := make([]fleet.Progress, n)
	for i := range targets {
		targets[i] = fleet.Progress{DeviceID: fmt.Sprintf("dev-%06d", i), State: fleet.StateQueued}
	}
	before := s.Stats()

	iters := 0
	for b.Loop() {
		u := fleet.Update{ID: fmt.Sprintf("up-%d", iters), FirmwareID: fw.ID, State: fleet.UpdateRunning,
			Policy: fleet.Policy{}.WithDefaults()}
		if err := s.CreateUpdate(ctx, u, targets); err != nil {
			b.Fatal(err)
		}
		iters++
	}
	b.ReportMetric(float64(n*iters)/b.Elapsed().Seconds(), "rows/s")
	b.ReportMetric(float64(s.Stats().Transactions-before.Transactions), "sqlite-txs")
}

// stateWalk is the path of a device through a successful update: eight
// state changes, each a progress upsert and an event.
var stateWalk = []fleet.DeviceState{fleet.StateOffered, fleet.StateAccepted, fleet.StateDownloading,
	fleet.StateDownloaded, fleet.StateVerified, fleet.StateInstalling, fleet.StateRebooting, fleet.StateSucceeded}

// BenchmarkStore_StateChanges queues what the engine writes while 1,000
// devices walk through an update (stateWalk: per change, SaveProgress then
// AppendEvent, as Engine.setState does) and waits for the commit; one op is
// those 16,000 writes. "device" queues each device's changes one after the
// other, as when a device passes through quick states, so that a batch
// holds several saves of one row; "state" queues every device's first
// change, then every device's second, ..., so that no batch holds two saves
// of one row. upserts/op counts the progress upserts executed, rows/op
// those and the events inserted.
func BenchmarkStore_StateChanges(b *testing.B) {
	const devices = 1000
	ids := make([]string, devices)
	for i := range ids {
		ids[i] = fmt.Sprintf("dev-%04d", i)
	}
	for _, order := range []string{"device", "state"} {
		b.Run("order="+order, func(b *testing.B) {
			s := newTestStore(b, "")
			ctx := context.Background()
			addUpdate(b, s, "bench", ids...)
			var seq int64
			change := func(dev string, step, attempt int) {
				seq++
				p := fleet.Progress{UpdateID: "bench", DeviceID: dev, State: stateWalk[step], Offset: int64(step) << 14,
					Attempts: attempt}
				if err := s.SaveProgress(p, uint32(attempt)); err != nil {
					b.Fatal(err)
				}
				if err := s.AppendEvent(fleet.Event{Seq: seq, Type: fleet.EventDevice, UpdateID: "bench",
					DeviceID: dev, State: string(p.State), Offset: p.Offset, Attempt: attempt}); err != nil {
					b.Fatal(err)
				}
			}
			before := s.Stats()
			b.ReportAllocs()
			iters := 0
			for b.Loop() {
				iters++
				if order == "device" {
					for _, dev := range ids {
						for step := range stateWalk {
							change(dev, step, iters)
						}
					}
				} else {
					for step := range stateWalk {
						for _, dev := range ids {
							change(dev, step, iters)
						}
					}
				}
				if err := s.Flush(ctx); err != nil {
					b.Fatal(err)
				}
			}
			st := s.Stats()
			upserts := float64(st.ProgressWrites-before.ProgressWrites) / float64(iters)
			b.ReportMetric(upserts, "upserts/op")
			b.ReportMetric(upserts+devices*float64(len(stateWalk)), "rows/op") // and one event per change
			b.ReportMetric(float64(st.Transactions-before.Transactions)/float64(iters), "txs/op")
		})
	}
}

// BenchmarkStore_WriteAllocs measures one device state change as the engine
// writes it (Engine.setState: SaveProgress, then AppendEvent with the same
// time), 10,000 devices taking turns, with a subscriber to the committed
// events as Engine.Open sets one. B/op and allocs/op are what the callers
// and the writer goroutine allocate per change, commits included.
func BenchmarkStore_WriteAllocs(b *testing.B) {
	s := newTestStore(b, "")
	ctx := context.Background()
	const devices = 10_000
	ids := make([]string, devices)
	started := make([]time.Time, devices) // when each device was offered the update
	t0 := time.Now().UTC()
	for i := range ids {
		ids[i] = fmt.Sprintf("dev-%05d", i)
		started[i] = t0.Add(time.Duration(i) * time.Millisecond)
	}
	addUpdate(b, s, "bench", ids...)
	var published int
	s.OnEventsCommitted(func(evs []fleet.Event) {
		for _, e := range evs {
			if e.UpdateID != "" {
				published++
			}
		}
	})

	b.ReportAllocs()
	iters := 0
	for b.Loop() {
		now := time.Now().UTC()
		step := (iters / devices) % len(stateWalk)
		from := stateWalk[(step+len(stateWalk)-1)%len(stateWalk)]
		dev := iters % devices
		p := fleet.Progress{UpdateID: "bench", DeviceID: ids[dev], State: stateWalk[step],
			Offset: int64(iters) << 10, Attempts: 1, UpdatedAt: now, StartedAt: &started[dev]}
		if p.State.Terminal() {
			p.FinishedAt = &now
		}
		if err := s.SaveProgress(p, uint32(iters)); err != nil {
			b.Fatal(err)
		}
		iters++
		if err := s.AppendEvent(fleet.Event{Seq: int64(iters), Time: now, Type: fleet.EventDevice, UpdateID: "bench",
			DeviceID: p.DeviceID, From: string(from), State: string(p.State), Offset: p.Offset, Attempt: p.Attempts}); err != nil {
			b.Fatal(err)
		}
	}
	require.NoError(b, s.Flush(ctx))
	b.StopTimer()
	s.OnEventsCommitted(nil)
	require.Equal(b, iters, published)
}
