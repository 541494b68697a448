package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/flotaio/flota/internal/protocol"
)

// The raw-subscribers subcommand.
const (
	subscribersCmd = "raw-subscribers"
	readyLine      = "ready "
	statsLine      = "stats "

	// The modes of raw-subscribers: raw takes every chunk pushed to it;
	// stop-and-wait waits for a start message, then requests chunk 0, and
	// chunk n+1 once chunk n arrived.
	subModeRaw = "raw"
	subModeSaw = "stop-and-wait"

	connectParallelism = 64
	subTimeout         = 30 * time.Second
)

// subOptions are the raw-subscribers flags.
type subOptions struct {
	mode    string
	broker  string
	devices int
	size    int
	latency time.Duration // one-way delay on every message received and sent
}

func parseSubOptions(args []string) (subOptions, error) {
	var o subOptions
	fs := flag.NewFlagSet(subscribersCmd, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&o.mode, "mode", subModeRaw, "raw (chunks are pushed) or stop-and-wait (one chunk requested at a time)")
	fs.StringVar(&o.broker, "broker", "", "MQTT broker URL, tcp://HOST:PORT")
	fs.IntVar(&o.devices, "devices", 0, "number of subscribers")
	fs.IntVar(&o.size, "size", 0, "payload bytes each subscriber waits for")
	fs.DurationVar(&o.latency, "latency", 0, "one-way delay added to every message received and sent")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return o, err
		}
		return o, usagef("%s: %v", subscribersCmd, err)
	}
	if fs.NArg() > 0 {
		return o, usagef("%s: unexpected arguments: %s", subscribersCmd, strings.Join(fs.Args(), " "))
	}
	if o.mode != subModeRaw && o.mode != subModeSaw {
		return o, usagef("%s: --mode must be %s or %s, got %q", subscribersCmd, subModeRaw, subModeSaw, o.mode)
	}
	if u, err := url.Parse(o.broker); err != nil || u.Scheme == "" || u.Host == "" {
		return o, usagef("%s: --broker %q: want a URL such as tcp://127.0.0.1:1883", subscribersCmd, o.broker)
	}
	if o.devices < 1 || o.devices > maxDevices {
		return o, usagef("%s: --devices must be 1..%d, got %d", subscribersCmd, maxDevices, o.devices)
	}
	if o.size < 1 || o.size > maxSize {
		return o, usagef("%s: --size must be 1..%d, got %d", subscribersCmd, maxSize, o.size)
	}
	if o.latency < 0 || o.latency > maxLatency {
		return o, usagef("%s: --latency must be 0..%v, got %v", subscribersCmd, maxLatency, o.latency)
	}
	return o, nil
}

// subCounters are the subscribers' totals, printed on the stats line.
type subCounters struct {
	Done       int64 `json:"done"`
	Bytes      int64 `json:"payload_bytes"`
	Frames     int64 `json:"frames"`
	BadFrames  int64 `json:"bad_frames"`
	Lost       int64 `json:"connections_lost"`
	Requests   int64 `json:"requests,omitempty"`     // stop-and-wait: chunk requests sent
	OutOfOrder int64 `json:"out_of_order,omitempty"` // stop-and-wait: chunks at an offset not asked for
}

// rawSub is one subscriber: a paho client waiting for size payload bytes.
type rawSub struct {
	id     string
	client mqtt.Client
	// got and done are touched by paho's router goroutine only, or, with
	// --latency, by the delayer's goroutine only.
	got  int64 // payload bytes received
	done bool  // "done" sent
}

// runSubscribers is the raw-subscribers subcommand: it connects the
// subscribers, prints "ready N", and runs until its standard input ends (or
// a signal), then prints "stats {json}" and disconnects them.
func runSubscribers(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parseSubOptions(args)
	if err != nil {
		return err
	}
	// Stop on EOF of stdin: the parent closed it, or died.
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() { // ends with the process: a blocked read cannot be cancelled
		_, _ = io.Copy(io.Discard, bufio.NewReader(os.Stdin))
		cancel(errors.New("stdin closed"))
	}()

	var c struct {
		done, bytes, frames, bad, lost, reqs, ooo atomic.Int64
	}
	// With --latency every message is processed, and every message sent,
	// that much later: a request/response round trip gains twice the delay.
	link := newDelayer(ctx, o.latency)
	defer link.wait()
	send := func(cl mqtt.Client, topic string, payload []byte) {
		link.after(func() { cl.Publish(topic, 1, false, payload) }) // not waited for: a handler must not block
	}
	subs := make([]*rawSub, o.devices)
	for i := range subs {
		subs[i] = &rawSub{id: rawDeviceID(i + 1)}
	}
	rawHandler := func(s *rawSub) mqtt.MessageHandler {
		doneTopic := protocol.UpTopic(s.id, rawDoneKind)
		return func(cl mqtt.Client, m mqtt.Message) {
			f, err := protocol.DecodeFrame(m.Payload())
			if err != nil {
				c.bad.Add(1)
				return
			}
			n := int64(len(f.Payload))
			link.after(func() {
				c.frames.Add(1)
				c.bytes.Add(n)
				s.got += n
				if s.got >= int64(o.size) && !s.done {
					s.done = true
					c.done.Add(1)
					send(cl, doneTopic, []byte("{}"))
				}
			})
		}
	}

	// sawHandler requests the next chunk only once the previous one arrived.
	sawHandler := func(s *rawSub) mqtt.MessageHandler {
		doneTopic := protocol.UpTopic(s.id, rawDoneKind)
		reqTopic := protocol.UpTopic(s.id, sawReqKind)
		startTopic := protocol.DownTopic(s.id, sawStartKind)
		request := func(cl mqtt.Client, chunk int64) {
			c.reqs.Add(1)
			send(cl, reqTopic, strconv.AppendInt(nil, chunk, 10))
		}
		return func(cl mqtt.Client, m mqtt.Message) {
			if m.Topic() == startTopic {
				link.after(func() { request(cl, 0) })
				return
			}
			f, err := protocol.DecodeFrame(m.Payload())
			if err != nil {
				c.bad.Add(1)
				return
			}
			n, offset := int64(len(f.Payload)), int64(f.Offset)
			link.after(func() {
				c.frames.Add(1)
				c.bytes.Add(n)
				if offset != s.got || s.done {
					c.ooo.Add(1)
					return
				}
				s.got += n
				switch {
				case s.got >= int64(o.size):
					s.done = true
					c.done.Add(1)
					send(cl, doneTopic, []byte("{}"))
				case n == 0:
					c.bad.Add(1)
				default:
					request(cl, s.got/n)
				}
			})
		}
	}
	handler := rawHandler
	if o.mode == subModeSaw {
		handler = sawHandler
	}

	connect := func(s *rawSub) error {
		opts := mqtt.NewClientOptions().
			AddBroker(o.broker).
			SetClientID(s.id).
			SetCleanSession(true).
			SetOrderMatters(true).
			SetAutoReconnect(false).
			SetConnectTimeout(subTimeout).
			SetWriteTimeout(subTimeout).
			SetKeepAlive(60 * time.Second).
			SetConnectionLostHandler(func(_ mqtt.Client, err error) {
				c.lost.Add(1)
				fmt.Fprintf(stderr, "%s: connection lost: %v\n", s.id, err)
			})
		s.client = mqtt.NewClient(opts)
		if tok := s.client.Connect(); !tok.WaitTimeout(subTimeout) || tok.Error() != nil {
			return fmt.Errorf("%s: connect: %v", s.id, tokenErr(tok))
		}
		tok := s.client.Subscribe(protocol.DownFilter(s.id), 1, handler(s))
		if !tok.WaitTimeout(subTimeout) || tok.Error() != nil {
			return fmt.Errorf("%s: subscribe: %v", s.id, tokenErr(tok))
		}
		if st, ok := tok.(*mqtt.SubscribeToken); ok {
			for _, code := range st.Result() {
				if code > 2 {
					return fmt.Errorf("%s: subscription refused (code %#x)", s.id, code)
				}
			}
		}
		return nil
	}
	defer disconnectAll(subs)
	if err := forEach(ctx, subs, connectParallelism, connect); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s%d\n", readyLine, len(subs))

	<-ctx.Done()
	out, err := json.Marshal(subCounters{Done: c.done.Load(), Bytes: c.bytes.Load(), Frames: c.frames.Load(),
		BadFrames: c.bad.Load(), Lost: c.lost.Load(), Requests: c.reqs.Load(), OutOfOrder: c.ooo.Load()})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s%s\n", statsLine, out)
	return nil
}

func tokenErr(t mqtt.Token) error {
	if err := t.Error(); err != nil {
		return err
	}
	return errors.New("timed out")
}

// forEach runs fn on every subscriber, at most par at once, and returns the
// first error; it stops starting new calls after an error or when ctx ends.
func forEach(ctx context.Context, subs []*rawSub, par int, fn func(*rawSub) error) error {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex // guards first
		first error
	)
	sem := make(chan struct{}, par)
	for _, s := range subs {
		mu.Lock()
		failed := first != nil
		mu.Unlock()
		if failed || ctx.Err() != nil {
			break
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := fn(s); err != nil {
				mu.Lock()
				if first == nil {
					first = err
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if first == nil && ctx.Err() != nil {
		return context.Cause(ctx)
	}
	return first
}

// disconnectAll disconnects every connected subscriber.
func disconnectAll(subs []*rawSub) {
	_ = forEach(context.Background(), subs, 256, func(s *rawSub) error {
		if s.client != nil && s.client.IsConnectionOpen() {
			s.client.Disconnect(0)
		}
		return nil
	})
}
