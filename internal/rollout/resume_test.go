package rollout_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
)

// finishFrom completes o from offset next: the download, the install
// reports and the hello of the confirmed boot.
func (s *scripted) finishFrom(o protocol.Offer, next int64, version string) {
	s.t.Helper()
	s.report(o, fleet.StateAccepted, next, "")
	s.downloadFrom(o, next)
	for _, st := range []fleet.DeviceState{fleet.StateDownloaded, fleet.StateVerified, fleet.StateInstalling, fleet.StateRebooting} {
		s.report(o, st, o.Firmware.Size, "")
	}
	s.hello(version, &protocol.Held{Update: o.Update, Handle: o.Handle, Offset: o.Firmware.Size, State: fleet.StateRebooting})
}

// inFlightSampler polls an update's summary and keeps the most devices it
// saw holding slots and in transfer states (offered to installing).
type inFlightSampler struct {
	mu                  sync.Mutex // guards the maxima
	slots, transferring int
	stop                chan struct{}
	done                sync.WaitGroup
}

func sampleInFlight(h *harness, id string) *inFlightSampler {
	s := &inFlightSampler{stop: make(chan struct{})}
	s.done.Add(1)
	go func() {
		defer s.done.Done()
		for {
			select {
			case <-s.stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			sum, err := h.engine.Summary(context.Background(), id)
			if err != nil {
				continue
			}
			n := 0
			for st, c := range sum.Counts {
				if st.Transferring() {
					n += c
				}
			}
			s.mu.Lock()
			s.slots, s.transferring = max(s.slots, sum.InFlight), max(s.transferring, n)
			s.mu.Unlock()
		}
	}()
	return s
}

func (s *inFlightSampler) maxima() (slots, transferring int) {
	close(s.stop)
	s.done.Wait()
	return s.slots, s.transferring
}

// After a restart the transfers that were in progress resume first: they
// keep their slots, new devices that say hello first wait, and at no sampled
// instant are more devices in flight, or in transfer states, than
// max_in_flight.
func TestEngine_RestartResumesTransfersFirstWithinMaxInFlight(t *testing.T) {
	h := newHarness(t)
	a := newScripted(t, h, "a", "1.0.0")
	b := newScripted(t, h, "b", "1.0.0")
	h.waitDevices(2)
	h.registerOffline("c")
	h.registerOffline("d")
	fw, _ := h.addFirmware(16*1024, "1.1.0")
	u := h.create(fw, fleet.Policy{ChunkSize: 1024, Window: 1, MaxInFlight: 2}, fleet.Selector{})
	sampler := sampleInFlight(h, u.ID)

	// a and b hold their first KiB when the engine stops.
	for _, d := range []*scripted{a, b} {
		o := d.offer()
		d.report(o, fleet.StateAccepted, 0, "")
		d.send(protocol.KindAck, protocol.Ack{V: 1, Handle: o.Handle, Offset: 1024})
	}
	eventually(t, 5*time.Second, func() bool { return h.summary(u.ID).BytesAcked >= 2048 }, "a and b downloading")
	before, _ := sampler.maxima()
	require.NoError(t, h.engine.Close())
	h.openEngine()
	sampler = sampleInFlight(h, u.ID)

	// New devices say hello first: they wait for a slot.
	c := newScripted(t, h, "c", "1.0.0")
	d := newScripted(t, h, "d", "1.0.0")
	select {
	case o := <-c.offers:
		t.Fatalf("c was offered %s before the transfers in progress resumed", o.Update)
	case o := <-d.offers:
		t.Fatalf("d was offered %s before the transfers in progress resumed", o.Update)
	case <-time.After(time.Second):
	}

	for _, dev := range []*scripted{a, b} {
		dev.hello("1.0.0", &protocol.Held{Update: u.ID, Offset: 1024, State: fleet.StateDownloading})
		dev.finishFrom(dev.offer(), 1024, "1.1.0")
	}
	for _, dev := range []*scripted{c, d} {
		dev.finishFrom(dev.offer(), 0, "1.1.0")
	}
	s := h.waitEnd(u.ID, 20*time.Second)
	assert.Equal(t, map[fleet.DeviceState]int{fleet.StateSucceeded: 4}, s.Counts)
	slots, transferring := sampler.maxima()
	assert.LessOrEqual(t, max(slots, before), 2, "in flight")
	assert.LessOrEqual(t, transferring, 2, "devices in transfer states")
}
