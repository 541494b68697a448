package main

import (
	"context"
	"fmt"
	"io"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flotaio/flota/broker"
	"github.com/flotaio/flota/internal/protocol"
)

// Stop-and-wait run: the message kinds between the publisher and a device.
const (
	sawStartKind = "start" // down: begin the download (the offer of a stop-and-wait protocol)
	sawReqKind   = "req"   // up: the index of the chunk wanted, in decimal
)

// runSawBench measures a stop-and-wait peer, as ThingsBoard's MQTT OTA and
// AWS's MQTT file streams work: through the same embedded broker as the raw
// run, o.MaxInFlight devices at a time are sent a start message; each then
// requests chunk 0, and chunk n+1 only once chunk n arrived. This process
// answers every request with that one chunk from an inline subscriber. The
// time is from the first start to the last device's "done".
func runSawBench(ctx context.Context, o options, image []byte, tmp string, stderr io.Writer) (res result, err error) {
	// The raw run before this one, in the same process, left a large heap:
	// return it to the OS so that this run's peak RSS is its own.
	debug.FreeOSMemory()
	rss := sampleRSS(0)
	sampling := true
	defer func() {
		if sampling {
			rss.stop()
		}
	}()

	b := broker.New(broker.Options{Addr: "127.0.0.1:0", Window: o.Window})
	if err := b.Open(); err != nil {
		return res, err
	}
	defer b.Close()

	n := o.Devices
	index := make(map[string]int, n) // device ID -> index; read-only once built
	ids := make([]string, n)
	for i := range ids {
		ids[i] = rawDeviceID(i + 1)
		index[ids[i]] = i
	}
	chunks := o.chunks()
	var requests, badReqs, strays, dupes, pubErrs atomic.Int64
	frames := sync.Pool{New: func() any {
		buf := make([]byte, protocol.HeaderSize+o.ChunkSize)
		return &buf
	}}
	// Requests are answered on the requesting device's connection goroutine;
	// the broker copies the frame for the subscriber before Publish returns,
	// so the buffer goes back to the pool at once.
	err = b.Subscribe(protocol.DevicesRoot+"+/up/"+sawReqKind, func(topic string, payload []byte) {
		id, _, ok := protocol.ParseUpTopic(topic)
		i, known := index[id]
		if !ok || !known {
			strays.Add(1)
			return
		}
		c, err := strconv.Atoi(string(payload))
		if err != nil || c < 0 || c >= chunks {
			badReqs.Add(1)
			return
		}
		requests.Add(1)
		off := c * o.ChunkSize
		end := min(off+o.ChunkSize, len(image))
		bp := frames.Get().(*[]byte)
		buf := (*bp)[:protocol.HeaderSize+end-off]
		copy(buf[protocol.HeaderSize:], image[off:end])
		var flags byte
		if end == len(image) {
			flags = protocol.FlagLast
		}
		protocol.PutFrameHeader(buf, flags, uint32(i+1), uint32(off))
		if err := b.Publish(protocol.DownTopic(id, protocol.KindChunk), buf, false, 1); err != nil {
			pubErrs.Add(1)
		}
		frames.Put(bp)
	})
	if err != nil {
		return res, err
	}
	// As in the raw run, the "done" handler only hands the first "done" of
	// each device to the loop below; dones has room for one per device.
	seen := make([]atomic.Bool, n)
	dones := make(chan int, n)
	err = b.Subscribe(protocol.DevicesRoot+"+/up/"+rawDoneKind, func(topic string, _ []byte) {
		id, _, ok := protocol.ParseUpTopic(topic)
		i, known := index[id]
		switch {
		case !ok || !known:
			strays.Add(1)
		case seen[i].Swap(true):
			dupes.Add(1)
		default:
			dones <- i
		}
	})
	if err != nil {
		return res, err
	}

	subs, err := startSubscribers(ctx, o, subModeSaw, "tcp://"+b.Addr(), tmp)
	if err != nil {
		return res, err
	}
	defer subs.close()
	fmt.Fprintf(stderr, "saw: %d devices ready\n", n)

	started := make([]time.Time, n)
	times := make([]time.Duration, 0, n)
	deadline := time.NewTimer(o.Timeout)
	defer deadline.Stop()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	next, inFlight, lastProgress := 0, 0, time.Now()
	cpu := startCPU(nil, subs.proc)
	start := time.Now()
	var last time.Time
	for len(times) < n {
		for inFlight < o.MaxInFlight && next < n {
			started[next] = time.Now()
			if err := b.Publish(protocol.DownTopic(ids[next], sawStartKind), []byte("{}"), false, 1); err != nil {
				return res, err
			}
			next++
			inFlight++
		}
		select {
		case i := <-dones:
			last = time.Now()
			times = append(times, last.Sub(started[i]))
			inFlight--
			lastProgress = last
		case <-tick.C:
			dropped := b.Stats().MessagesDropped
			if dropped > 0 && time.Since(lastProgress) > rawStall {
				return res, fmt.Errorf("the broker dropped %d deliveries; %d of %d devices never finished", dropped, n-len(times), n)
			}
		case <-subs.proc.done:
			return res, fmt.Errorf("%d of %d devices done: %s", len(times), n, subs.proc.failure())
		case <-deadline.C:
			return res, fmt.Errorf("%d of %d devices done after %v (--timeout); %d requests answered, %d bad, %d publish errors, the broker dropped %d deliveries",
				len(times), n, o.Timeout, requests.Load(), badReqs.Load(), pubErrs.Load(), b.Stats().MessagesDropped)
		case <-ctx.Done():
			return res, context.Cause(ctx)
		}
	}
	elapsed := last.Sub(start)
	res.BrokerCPU, res.DevicesCPU = cpu.stop()
	res.measureSelf(rss)
	sampling = false
	st := subs.stats(ctx)
	res.fill(runSaw, n, times, elapsed, o.Size, b.Stats().MessagesDropped)
	res.Note = fmt.Sprintf("first start published -> last done; device time = its start published -> its done received; "+
		"one QoS 1 request and one QoS 1 chunk per chunk, answered by an inline subscriber; %d requests; RSS of this process (broker and publisher); devices: %s",
		requests.Load(), st)
	if d := dupes.Load() + strays.Load() + badReqs.Load() + pubErrs.Load(); d > 0 {
		res.Note += fmt.Sprintf("; %d duplicate, stray or bad messages or publish errors", d)
	}
	return res, nil
}
