package logsafe

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of Limit.
const (
	// DefaultLines is how many lines at info level and above one client may
	// cause per interval: enough for a device's whole story (connect,
	// refusals, a few bad messages), not for a flood.
	DefaultLines = 20
	// DefaultInterval is the limiter's window, and how often a client's
	// suppressed lines are summarised.
	DefaultInterval = time.Minute
	// DefaultMaxKeys bounds the clients tracked at once; beyond it, lines of
	// new clients share one budget, OthersKey.
	DefaultMaxKeys = 10000
	// DefaultTotal bounds the lines of all clients together per interval
	// (100 a second), so that many clients, or one client under many IDs,
	// cannot flood the log either.
	DefaultTotal = 6000
)

// OthersKey is the key under which lines of clients beyond Limit.MaxKeys are
// limited together. It is no valid client ID.
const OthersKey = "(others)"

// maxKeyLen bounds a key kept by the limiter: client IDs are 64 bytes at
// most where they are validated; a longer value is cut.
const maxKeyLen = 64

// KeyAttrs are the attribute names whose value says which client caused a
// line: the broker and mochi log "client", the engine "device".
var KeyAttrs = [...]string{"client", "device"}

// Limit configures a Limiter. Zero fields take the defaults; a negative
// Lines disables limiting.
type Limit struct {
	Lines    int           // lines per client per Interval
	Interval time.Duration // window and summary period
	MaxKeys  int           // clients tracked at once
	Total    int           // lines of all clients together per Interval
}

func (l Limit) withDefaults() Limit {
	if l.Lines == 0 {
		l.Lines = DefaultLines
	}
	if l.Interval <= 0 {
		l.Interval = DefaultInterval
	}
	if l.MaxKeys <= 0 {
		l.MaxKeys = DefaultMaxKeys
	}
	if l.Total <= 0 {
		l.Total = DefaultTotal
	}
	return l
}

// Limiter limits the log lines each client causes. A line at info level or
// above that carries a client (an attribute named in KeyAttrs, in the call or
// added with Logger.With) counts against that client's budget of Lines per
// Interval; once it is spent, the client's lines are dropped and counted
// until its window ends, when one warning, "log lines suppressed", says how
// many. Debug lines and lines without a client pass untouched: an operator
// who turns on debug asked for volume, and lines of the orchestrator's own
// doing are not a client's to flood.
//
// All clients together pass at most Total lines per interval; past it, a
// client's lines are counted under OthersKey. Memory is bounded: at most
// MaxKeys windows are kept, each removed (and
// summarised) once it ends. Summaries are written when the limiter next sees
// a line after the window ended, or by Sweep, which owners call from a timer
// so that a client that went quiet still gets its summary.
type Limiter struct {
	limit Limit
	// Now is the limiter's clock (time.Now); tests set a fake one.
	Now func() time.Time

	suppressed atomic.Int64

	mu         sync.Mutex         // guards windows, lastSweep, totalStart and total
	windows    map[string]*window // by client
	lastSweep  time.Time
	totalStart time.Time // start of the interval total counts
	total      int       // lines of all clients passed since totalStart
}

// window is one client's budget in the current interval.
type window struct {
	start      time.Time
	lines      int
	suppressed int64
	keyAttr    string       // the attribute the key came from, for the summary
	h          slog.Handler // the handler its last suppressed line came through
}

// NewLimiter returns a limiter with the limits of l (defaults for zero
// fields).
func NewLimiter(l Limit) *Limiter {
	return &Limiter{limit: l.withDefaults(), Now: time.Now, windows: map[string]*window{}}
}

// Suppressed returns how many lines the limiter dropped since it was made.
func (l *Limiter) Suppressed() int64 { return l.suppressed.Load() }

// Logger returns a logger that writes through h under the limiter; nil
// logger means slog.Default.
func (l *Limiter) Logger(logger *slog.Logger) *slog.Logger {
	if logger == nil {
		logger = slog.Default()
	}
	return slog.New(l.Handler(logger.Handler()))
}

// Handler returns h wrapped by the limiter.
func (l *Limiter) Handler(h slog.Handler) slog.Handler {
	return &limitHandler{l: l, h: h}
}

func (l *Limiter) now() time.Time {
	if l.Now == nil {
		return time.Now()
	}
	return l.Now()
}

// summary is a pending "log lines suppressed" line.
type summary struct {
	h       slog.Handler
	keyAttr string
	key     string
	n       int64
}

// allow reports whether a line of key may pass, and returns the summaries
// due (to be written outside the lock).
func (l *Limiter) allow(key, keyAttr string, h slog.Handler, now time.Time) (bool, []summary) {
	l.mu.Lock()
	defer l.mu.Unlock()
	due := l.sweepLocked(now, nil)
	w := l.windows[key]
	if w != nil && now.Sub(w.start) >= l.limit.Interval {
		due = w.summarise(key, due)
		delete(l.windows, key)
		w = nil
	}
	if w == nil {
		if len(l.windows) >= l.limit.MaxKeys {
			key, keyAttr = OthersKey, "client"
			w = l.windows[key]
		}
		if w == nil {
			key = strings.Clone(key) // not the caller's buffer
			w = &window{start: now, keyAttr: keyAttr}
			l.windows[key] = w
		}
	}
	if now.Sub(l.totalStart) >= l.limit.Interval {
		l.totalStart, l.total = now, 0
	}
	w.lines++
	if w.lines <= l.limit.Lines {
		if l.total < l.limit.Total {
			l.total++
			return true, due
		}
		// Within its own budget, over everyone's: counted with the others.
		if o := l.windows[OthersKey]; o != nil {
			w = o
		} else {
			w = &window{start: now, keyAttr: "client", lines: l.limit.Lines}
			l.windows[OthersKey] = w
		}
	}
	w.suppressed++
	w.h = h
	l.suppressed.Add(1)
	return false, due
}

// Sweep writes the summaries of windows that ended and forgets them. It
// does the work at most once per interval, so it is cheap to call often.
func (l *Limiter) Sweep() {
	now := l.now()
	l.mu.Lock()
	due := l.sweepLocked(now, nil)
	l.mu.Unlock()
	writeSummaries(due, now, l.limit.Interval)
}

// sweepLocked removes the windows that ended, once per interval, appending
// their summaries to due. l.mu is held.
func (l *Limiter) sweepLocked(now time.Time, due []summary) []summary {
	if now.Sub(l.lastSweep) < l.limit.Interval {
		return due
	}
	l.lastSweep = now
	for key, w := range l.windows {
		if now.Sub(w.start) >= l.limit.Interval {
			due = w.summarise(key, due)
			delete(l.windows, key)
		}
	}
	return due
}

func (w *window) summarise(key string, due []summary) []summary {
	if w.suppressed == 0 {
		return due
	}
	return append(due, summary{h: w.h, keyAttr: w.keyAttr, key: key, n: w.suppressed})
}

func writeSummaries(due []summary, now time.Time, interval time.Duration) {
	for _, s := range due {
		r := slog.NewRecord(now, slog.LevelWarn, "log lines suppressed", 0)
		r.AddAttrs(slog.String(s.keyAttr, s.key), slog.Int64("suppressed", s.n), slog.Duration("interval", interval))
		if s.h.Enabled(context.Background(), r.Level) {
			_ = s.h.Handle(context.Background(), r) // a handler's error has nowhere to go
		}
	}
}

// limitHandler is a Limiter's slog.Handler: h under the limiter, with the
// client key given by WithAttrs, if any.
type limitHandler struct {
	l       *Limiter
	h       slog.Handler
	key     string
	keyAttr string
}

func (h *limitHandler) Enabled(ctx context.Context, level slog.Level) bool {
	return h.h.Enabled(ctx, level)
}

func (h *limitHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level < slog.LevelInfo || h.l.limit.Lines < 0 {
		return h.h.Handle(ctx, r)
	}
	key, keyAttr := h.key, h.keyAttr
	if keyAttr == "" {
		r.Attrs(func(a slog.Attr) bool {
			if k, ok := keyOf(a); ok {
				key, keyAttr = k, a.Key
				return false
			}
			return true
		})
	}
	if keyAttr == "" {
		return h.h.Handle(ctx, r)
	}
	now := h.l.now()
	ok, due := h.l.allow(key, keyAttr, h.h, now)
	writeSummaries(due, now, h.l.limit.Interval)
	if !ok {
		return nil
	}
	return h.h.Handle(ctx, r)
}

func (h *limitHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	n := *h
	n.h = h.h.WithAttrs(attrs)
	for _, a := range attrs {
		if k, ok := keyOf(a); ok && n.keyAttr == "" {
			n.key, n.keyAttr = k, a.Key
		}
	}
	return &n
}

func (h *limitHandler) WithGroup(name string) slog.Handler {
	n := *h
	n.h = h.h.WithGroup(name)
	return &n
}

// keyOf returns the client a is about, if it is one of KeyAttrs.
func keyOf(a slog.Attr) (string, bool) {
	for _, k := range KeyAttrs {
		if a.Key == k {
			s := a.Value.Resolve().String()
			if s == "" {
				return "", false
			}
			if len(s) > maxKeyLen {
				s = s[:maxKeyLen]
			}
			return s, true
		}
	}
	return "", false
}
