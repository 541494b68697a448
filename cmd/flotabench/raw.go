package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/flotaio/flota/internal/protocol"
)

// Raw run settings.
const (
	rawIDPrefix = "raw-"
	rawDoneKind = "done"
	// rawStall fails the raw run early when the broker dropped deliveries and
	// no device finished for this long: the missing chunks never come.
	rawStall = 5 * time.Second
)

// rawDeviceID is the client ID of the raw subscriber numbered n (from 1).
func rawDeviceID(n int) string { return fmt.Sprintf("%s%05d", rawIDPrefix, n) }

// runRawBench publishes the image straight through the embedded broker, with
// the same settings as the orchestrator's, to o.Devices subscribers in a
// separate process, o.MaxInFlight devices at a time, and measures from the
// first publish to the last device's "done".
func runRawBench(ctx context.Context, o options, image []byte, tmp string, stderr io.Writer) (res result, err error) {
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

	subs, err := startSubscribers(ctx, o, subModeRaw, "tcp://"+p.b.Addr(), tmp)
	if err != nil {
		return res, err
	}
	defer subs.close()
	fmt.Fprintf(stderr, "raw: %d subscribers ready\n", n)

	chunks := o.chunks()
	frame := make([]byte, protocol.HeaderSize+o.ChunkSize)
	publishDevice := func(i int) error {
		topic := protocol.DownTopic(p.ids[i], protocol.KindChunk)
		for c := range chunks {
			if err := p.b.Publish(topic, chunkFrame(frame, image, c*o.ChunkSize, o.ChunkSize, uint32(i+1)), false, 1); err != nil {
				return err
			}
		}
		return nil
	}

	times, elapsed, err := p.drive(ctx, o, subs, &res, publishDevice,
		func(dropped int64) error {
			return fmt.Errorf("the broker dropped %d deliveries (full client queue: %d chunks per device, queue %d); some devices never got the whole image",
				dropped, chunks, clientQueue(o.Window))
		},
		func(done int) error {
			return fmt.Errorf("%d of %d devices done after %v (--timeout); the broker dropped %d deliveries",
				done, n, o.Timeout, p.b.Stats().MessagesDropped)
		})
	if err != nil {
		return res, err
	}
	res.measureSelf(rss)
	sampling = false
	st := subs.stats(ctx)
	res.fill(runRaw, n, times, elapsed, o.Size, p.b.Stats().MessagesDropped)
	res.Note = fmt.Sprintf("first chunk published -> last done; device time = its first chunk published -> its done received; "+
		"QoS 1, no per-chunk acks, no store; RSS of this process (broker and publisher); subscribers: %s", st)
	if d := p.dupes.Load() + p.strays.Load(); d > 0 {
		res.Note += fmt.Sprintf("; %d duplicate or stray done messages", d)
	}
	return res, nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// percentile is the nearest-rank percentile of sorted durations.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p*float64(len(sorted))+0.999999) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// subscribers is the raw-subscribers process. Closing its standard input
// tells it to print its counters and exit.
type subscribers struct {
	proc  *child
	stdin *os.File // write end of the child's stdin
	out   *lineWatcher
	log   *os.File
}

// startSubscribers starts the raw-subscribers process in a mode (subModeRaw
// or subModeSaw) and waits until every subscriber is connected and
// subscribed.
func startSubscribers(ctx context.Context, o options, mode, brokerURL, tmp string) (*subscribers, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find own binary: %w", err)
	}
	log, err := os.Create(filepath.Join(tmp, "subscribers-"+mode+".log"))
	if err != nil {
		return nil, err
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		log.Close()
		return nil, err
	}
	out := newLineWatcher(log, readyLine, statsLine)
	proc, err := startChild(subscribersCmd, exe, []string{subscribersCmd,
		"--mode", mode, "--broker", brokerURL, "--devices", strconv.Itoa(o.Devices), "--size", strconv.Itoa(o.Size),
		"--latency", o.Latency.String(),
	}, simEnv(), pr, out, log, log.Name())
	pr.Close() // the child holds its own copy
	if err != nil {
		pw.Close()
		log.Close()
		return nil, err
	}
	s := &subscribers{proc: proc, stdin: pw, out: out, log: log}
	readyCtx, cancel := context.WithTimeout(ctx, startTimeout+time.Duration(o.Devices/100)*time.Second)
	defer cancel()
	if _, err := waitLine(readyCtx, out, proc, readyLine); err != nil {
		s.close()
		return nil, err
	}
	return s, nil
}

// stats asks the subscribers to exit and returns the counters they print.
func (s *subscribers) stats(ctx context.Context) string {
	s.stdin.Close() // EOF: print the counters and exit
	ctx, cancel := context.WithTimeout(ctx, stopGrace)
	defer cancel()
	line, err := waitLine(ctx, s.out, s.proc, statsLine)
	if err != nil {
		return "no counters (" + firstLine(err) + ")"
	}
	return line
}

// close stops the process (if still running) and closes the files. It is
// idempotent.
func (s *subscribers) close() {
	s.stdin.Close()
	if !s.proc.waitExit(context.Background(), stopGrace) {
		s.proc.stop()
	}
	s.log.Close()
}

func firstLine(err error) string {
	msg := err.Error()
	for i, r := range msg {
		if r == '\n' {
			return msg[:i]
		}
	}
	return msg
}

// measureSelf ends RSS sampling of this process (which holds the broker in
// the raw and stop-and-wait runs) and adds its high-water mark.
func (res *result) measureSelf(rss *rssSampler) {
	mem, memErr := readMem(0)
	res.PeakRSS = rss.stop()
	if memErr == nil {
		res.HWM = mem.HWM
		res.PeakRSS = max(res.PeakRSS, mem.RSS)
	}
}

// fill records an in-process run's figures from its per-device times.
func (res *result) fill(name string, n int, times []time.Duration, elapsed time.Duration, size int, dropped int64) {
	slices.Sort(times)
	res.Name = name
	res.Devices = n
	res.Completed = len(times)
	res.Seconds = elapsed.Seconds()
	res.rates(size)
	res.P50Ms = ms(percentile(times, 0.50))
	res.P99Ms = ms(percentile(times, 0.99))
	res.RSSProcess = "flotabench"
	res.BrokerDropped = dropped
}
