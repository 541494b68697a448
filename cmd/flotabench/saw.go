package main

import (
	"context"
	"fmt"
	"io"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"

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

	p, err := openPeerBroker(o)
	if err != nil {
		return res, err
	}
	defer p.Close()
	n := o.Devices
	chunks := o.chunks()
	var requests, badReqs, pubErrs atomic.Int64
	frames := sync.Pool{New: func() any {
		buf := make([]byte, protocol.HeaderSize+o.ChunkSize)
		return &buf
	}}
	// Requests are answered on the requesting device's connection goroutine;
	// the broker copies the frame for the subscriber before Publish returns,
	// so the buffer goes back to the pool at once.
	err = p.b.Subscribe(protocol.DevicesRoot+"+/up/"+sawReqKind, func(topic string, payload []byte) {
		i, ok := p.device(topic)
		if !ok {
			return
		}
		c, err := strconv.Atoi(string(payload))
		if err != nil || c < 0 || c >= chunks {
			badReqs.Add(1)
			return
		}
		requests.Add(1)
		bp := frames.Get().(*[]byte)
		buf := chunkFrame(*bp, image, c*o.ChunkSize, o.ChunkSize, uint32(i+1))
		if err := p.b.Publish(protocol.DownTopic(p.ids[i], protocol.KindChunk), buf, false, 1); err != nil {
			pubErrs.Add(1)
		}
		frames.Put(bp)
	})
	if err != nil {
		return res, err
	}

	subs, err := startSubscribers(ctx, o, subModeSaw, "tcp://"+p.b.Addr(), tmp)
	if err != nil {
		return res, err
	}
	defer subs.close()
	fmt.Fprintf(stderr, "saw: %d devices ready\n", n)

	start := func(i int) error {
		return p.b.Publish(protocol.DownTopic(p.ids[i], sawStartKind), []byte("{}"), false, 1)
	}
	times, elapsed, err := p.drive(ctx, o, subs, &res, start,
		func(dropped int64) error {
			return fmt.Errorf("the broker dropped %d deliveries; some devices never finished", dropped)
		},
		func(done int) error {
			return fmt.Errorf("%d of %d devices done after %v (--timeout); %d requests answered, %d bad, %d publish errors, the broker dropped %d deliveries",
				done, n, o.Timeout, requests.Load(), badReqs.Load(), pubErrs.Load(), p.b.Stats().MessagesDropped)
		})
	if err != nil {
		return res, err
	}
	res.measureSelf(rss)
	sampling = false
	st := subs.stats(ctx)
	res.fill(runSaw, n, times, elapsed, o.Size, p.b.Stats().MessagesDropped)
	res.Note = fmt.Sprintf("first start published -> last done; device time = its start published -> its done received; "+
		"one QoS 1 request and one QoS 1 chunk per chunk, answered by an inline subscriber; %d requests; RSS of this process (broker and publisher); devices: %s",
		requests.Load(), st)
	if d := p.dupes.Load() + p.strays.Load() + badReqs.Load() + pubErrs.Load(); d > 0 {
		res.Note += fmt.Sprintf("; %d duplicate, stray or bad messages or publish errors", d)
	}
	return res, nil
}
