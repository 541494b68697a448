package main

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/flotaio/flota/broker"
	"github.com/flotaio/flota/internal/protocol"
)

// peerBroker is what the raw and the stop-and-wait runs share: an embedded
// broker with the orchestrator's settings, the devices' IDs, and each
// device's first "done".
type peerBroker struct {
	b     *broker.Broker
	ids   []string
	index map[string]int // device ID -> index; read-only once built
	// dones receives the index of each device at its first "done"; it has
	// room for one per device, so the handler never blocks.
	dones         chan int
	seen          []atomic.Bool
	strays, dupes atomic.Int64
}

func openPeerBroker(o options) (*peerBroker, error) {
	// The raw and stop-and-wait devices publish kinds of their own.
	b := broker.New(broker.Options{Addr: "127.0.0.1:0", Window: o.Window, UpKinds: []string{rawDoneKind, sawReqKind}})
	if err := b.Open(); err != nil {
		return nil, err
	}
	n := o.Devices
	p := &peerBroker{b: b, ids: make([]string, n), index: make(map[string]int, n), dones: make(chan int, n), seen: make([]atomic.Bool, n)}
	for i := range p.ids {
		p.ids[i] = rawDeviceID(i + 1)
		p.index[p.ids[i]] = i
	}
	// The handler runs on a subscriber's connection goroutine.
	err := b.Subscribe(protocol.DevicesRoot+"+/up/"+rawDoneKind, func(topic string, _ []byte) {
		i, ok := p.device(topic)
		switch {
		case !ok:
		case p.seen[i].Swap(true):
			p.dupes.Add(1)
		default:
			p.dones <- i
		}
	})
	if err != nil {
		b.Close()
		return nil, err
	}
	return p, nil
}

func (p *peerBroker) Close() error { return p.b.Close() }

// device returns the index of the device that published on the up topic,
// counting a topic of no device of the run as a stray.
func (p *peerBroker) device(topic string) (int, bool) {
	id, _, ok := protocol.ParseUpTopic(topic)
	i, known := p.index[id]
	if !ok || !known {
		p.strays.Add(1)
		return 0, false
	}
	return i, true
}

// drive starts devices with start, o.MaxInFlight at a time, until every
// device said "done". It returns each device's time from its start to its
// done and the time from the first start to the last done, and measures the
// CPU of this process and of the subscribers into res. stalled explains a run
// that made no progress for rawStall while the broker had dropped
// deliveries; expired one that reached o.Timeout.
func (p *peerBroker) drive(ctx context.Context, o options, subs *subscribers, res *result, start func(i int) error,
	stalled func(dropped int64) error, expired func(done int) error) ([]time.Duration, time.Duration, error) {
	n := len(p.ids)
	started := make([]time.Time, n)
	times := make([]time.Duration, 0, n)
	deadline := time.NewTimer(o.Timeout)
	defer deadline.Stop()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	next, inFlight, lastProgress := 0, 0, time.Now()
	cpu := startCPU(nil, subs.proc)
	first := time.Now()
	var last time.Time
	for len(times) < n {
		for inFlight < o.MaxInFlight && next < n {
			started[next] = time.Now()
			if err := start(next); err != nil {
				return nil, 0, err
			}
			next++
			inFlight++
		}
		select {
		case i := <-p.dones:
			last = time.Now()
			times = append(times, last.Sub(started[i]))
			inFlight--
			lastProgress = last
		case <-tick.C:
			if dropped := p.b.Stats().MessagesDropped; dropped > 0 && time.Since(lastProgress) > rawStall {
				return nil, 0, stalled(dropped)
			}
		case <-subs.proc.done:
			return nil, 0, fmt.Errorf("%d of %d devices done: %s", len(times), n, subs.proc.failure())
		case <-deadline.C:
			return nil, 0, expired(len(times))
		case <-ctx.Done():
			return nil, 0, context.Cause(ctx)
		}
	}
	res.BrokerCPU, res.DevicesCPU = cpu.stop()
	res.DevicesPeakRSS = peakRSSOf(subs.proc)
	return times, last.Sub(first), nil
}

// chunkFrame writes into buf (room for a header and a chunk) the frame of the
// chunk of image at off for the device with handle, and returns it.
func chunkFrame(buf, image []byte, off, chunkSize int, handle uint32) []byte {
	end := min(off+chunkSize, len(image))
	buf = buf[:protocol.HeaderSize+end-off]
	copy(buf[protocol.HeaderSize:], image[off:end])
	var flags byte
	if end == len(image) {
		flags = protocol.FlagLast
	}
	protocol.PutFrameHeader(buf, flags, handle, uint32(off))
	return buf
}
