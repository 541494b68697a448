package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
)

// Kinds of stream message, also the SSE event names.
const (
	sseEvent   = "event"   // a fleet.Event, with its seq as the SSE id
	sseSummary = "summary" // a fleet.UpdateSummary
)

// streamMsg is one message for stream clients, as published on MQTT.
type streamMsg struct {
	kind    string
	update  string
	payload []byte
}

// hub fans the MQTT event and status messages out to the event stream
// clients. publish runs on the publisher's goroutine (the engine loop): it
// only does non-blocking sends to each client's bounded channel; a client
// that is full loses the message, which is counted, and (for an event) is
// marked lagged so that it catches up from the store.
type hub struct {
	log *slog.Logger
	// mu guards clients and closed.
	mu      sync.RWMutex
	clients map[*streamClient]struct{}
	closed  bool
	done    chan struct{} // closed by close

	dropped atomic.Int64 // messages dropped for slow clients
}

type streamClient struct {
	update string // "" means every update
	ch     chan streamMsg
	lagged atomic.Bool   // an event was dropped since the last catch-up
	wake   chan struct{} // signalled (capacity 1) when lagged is set
}

func newHub(log *slog.Logger) *hub {
	return &hub{log: log, clients: map[*streamClient]struct{}{}, done: make(chan struct{})}
}

// publish is the MQTT subscription handler.
func (h *hub) publish(topic string, payload []byte) {
	var m streamMsg
	if id, ok := strings.CutPrefix(topic, protocol.EventsRoot+"updates/"); ok {
		m = streamMsg{kind: sseEvent, update: id, payload: payload}
	} else if id, ok := strings.CutPrefix(topic, protocol.StatusRoot+"updates/"); ok {
		m = streamMsg{kind: sseSummary, update: id, payload: payload}
	} else {
		return
	}
	h.mu.RLock()
	defer h.mu.RUnlock()
	for c := range h.clients {
		if c.update != "" && c.update != m.update {
			continue
		}
		select {
		case c.ch <- m:
		default:
			h.dropped.Add(1)
			if m.kind == sseEvent {
				c.lagged.Store(true)
				select {
				case c.wake <- struct{}{}:
				default:
				}
			}
		}
	}
}

// add registers a client; it returns nil after close.
func (h *hub) add(update string, buffer int) *streamClient {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil
	}
	c := &streamClient{update: update, ch: make(chan streamMsg, buffer), wake: make(chan struct{}, 1)}
	h.clients[c] = struct{}{}
	return c
}

func (h *hub) remove(c *streamClient) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.clients, c)
}

// count returns the number of connected stream clients.
func (h *hub) count() int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return len(h.clients)
}

// close ends every stream; it is idempotent.
func (h *hub) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.closed {
		h.closed = true
		close(h.done)
	}
}

// eventStream serves GET /api/v1/events/stream: Server-Sent Events of the
// update's events (SSE "event", with the seq as id) and summaries (SSE
// "summary"), or of every update's without ?update=. A client that sends
// Last-Event-ID (or ?after=) first receives the stored events after it, so
// a reconnecting client misses nothing.
func (s *Server) eventStream(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	update := q.Get("update")
	after := int64(-1)
	for _, v := range []string{r.Header.Get("Last-Event-ID"), q.Get("after")} {
		if v == "" {
			continue
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			s.writeError(w, r, fleet.Errorf(fleet.ErrInvalidInput, "event id %q: want a sequence number >= 0", v))
			return
		}
		after = n
		break
	}
	ctx := r.Context()
	if update != "" {
		if _, err := s.Store.Update(ctx, update); err != nil {
			s.writeError(w, r, err)
			return
		}
	}
	c := s.hub.add(update, s.streamBuffer())
	if c == nil {
		s.writeError(w, r, fleet.Errorf(fleet.ErrClosed, "server is shutting down"))
		return
	}
	defer s.hub.remove(c)

	// Every event published from now on is in c.ch; every event published
	// before is in the store once Wait returns.
	if err := s.Store.Wait(ctx); err != nil {
		s.writeError(w, r, err)
		return
	}
	if after < 0 {
		seq, err := s.Store.MaxEventSeq(ctx)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		after = seq
	}
	st := &stream{w: w, rc: http.NewResponseController(w), last: after}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	fmt.Fprintf(&st.buf, "retry: 2000\n\n")

	if update != "" && s.Engine != nil {
		if sum, err := s.summary(ctx, update); err == nil {
			st.write(sseSummary, "", protocol.Encode(sum))
		}
	}
	if err := s.catchUp(ctx, st, update); err != nil {
		s.logger().Warn("event stream catch-up", "err", err)
		return
	}
	heartbeat := time.NewTicker(s.streamHeartbeat())
	defer heartbeat.Stop()
	for {
		if err := st.flush(); err != nil {
			return // the client went away
		}
		select {
		case <-ctx.Done():
			return
		case <-s.hub.done:
			return
		case <-heartbeat.C:
			st.buf.WriteString(": keep-alive\n\n")
		case <-c.wake:
			if err := s.catchUpIfLagged(ctx, st, c); err != nil {
				return
			}
		case m := <-c.ch:
			if err := s.deliver(ctx, st, c, m); err != nil {
				return
			}
			// Drain what is queued before one flush.
			for n := len(c.ch); n > 0; n-- {
				if err := s.deliver(ctx, st, c, <-c.ch); err != nil {
					return
				}
			}
		}
	}
}

// deliver writes a live message. If events were dropped for c before m was
// queued (publish marks c lagged before it queues anything later), the
// stored events are written first, so that none is skipped.
func (s *Server) deliver(ctx context.Context, st *stream, c *streamClient, m streamMsg) error {
	if err := s.catchUpIfLagged(ctx, st, c); err != nil {
		return err
	}
	st.send(m)
	return nil
}

// catchUpIfLagged writes the stored events after st.last if c lost events.
func (s *Server) catchUpIfLagged(ctx context.Context, st *stream, c *streamClient) error {
	if !c.lagged.Swap(false) {
		return nil
	}
	if err := s.Store.Wait(ctx); err != nil {
		return err
	}
	if err := s.catchUp(ctx, st, c.update); err != nil {
		s.logger().Warn("event stream catch-up", "err", err)
		return err
	}
	return nil
}

// catchUp writes the stored events after st.last.
func (s *Server) catchUp(ctx context.Context, st *stream, update string) error {
	for {
		evs, err := s.Store.Events(ctx, update, st.last, MaxPageSize)
		if err != nil {
			return err
		}
		for _, ev := range evs {
			if ev.UpdateID == "" {
				st.last = ev.Seq
				continue
			}
			st.write(sseEvent, strconv.FormatInt(ev.Seq, 10), protocol.Encode(protocol.Event(ev)))
			st.last = ev.Seq
		}
		if len(evs) < MaxPageSize {
			return nil
		}
		if err := st.flush(); err != nil {
			return err
		}
	}
}

// stream is one client's response.
type stream struct {
	w    http.ResponseWriter
	rc   *http.ResponseController
	buf  bytes.Buffer // written on flush
	last int64        // seq of the last event written
}

// send writes a live message; events already written are skipped.
func (st *stream) send(m streamMsg) {
	if m.kind != sseEvent {
		st.write(m.kind, "", m.payload)
		return
	}
	var ev struct {
		Seq int64 `json:"seq"`
	}
	if err := json.Unmarshal(m.payload, &ev); err != nil || ev.Seq <= st.last {
		return
	}
	st.last = ev.Seq
	st.write(sseEvent, strconv.FormatInt(ev.Seq, 10), m.payload)
}

// write appends one SSE message; payload is one line of JSON.
func (st *stream) write(kind, id string, payload []byte) {
	if id != "" {
		st.buf.WriteString("id: " + id + "\n")
	}
	st.buf.WriteString("event: " + kind + "\ndata: ")
	st.buf.Write(bytes.TrimRight(payload, "\n"))
	st.buf.WriteString("\n\n")
}

func (st *stream) flush() error {
	if st.buf.Len() == 0 {
		return nil
	}
	_, err := st.w.Write(st.buf.Bytes())
	st.buf.Reset()
	if err != nil {
		return err
	}
	return st.rc.Flush()
}

func (s *Server) streamBuffer() int {
	if s.StreamBuffer <= 0 {
		return DefaultStreamBuffer
	}
	return s.StreamBuffer
}

func (s *Server) streamHeartbeat() time.Duration {
	if s.StreamHeartbeat <= 0 {
		return DefaultStreamHeartbeat
	}
	return s.StreamHeartbeat
}
