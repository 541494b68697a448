package logsafe

import (
	"bytes"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestClean_EscapesAndTruncates(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"abc", `abc`},
		{"a\x1bb\n\"", `a\x1bb\n\"`},
		{strings.Repeat("x", 10), `xxxxxxxx+2B`},
		{"ééééé", `éééé+2B`}, // 10 bytes cut at 8: whole runes only
		{"ééééé"[:9], `éééé+1B`},
		{"\xff", `\xff`},
	} {
		assert.Equal(t, tc.want, Clean(tc.in, 8), "%q", tc.in)
	}
}

// captured returns a logger writing text lines into a buffer, and the
// buffer's lines.
func captured(level slog.Level) (slog.Handler, func() []string) {
	var buf bytes.Buffer
	h := slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: level})
	return h, func() []string {
		s := strings.TrimSpace(buf.String())
		if s == "" {
			return nil
		}
		return strings.Split(s, "\n")
	}
}

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time      { return c.t }
func (c *fakeClock) add(d time.Duration) { c.t = c.t.Add(d) }
func newClock() *fakeClock               { return &fakeClock{t: time.Unix(1_700_000_000, 0)} }
func count(lines []string, sub string) (n int) {
	for _, l := range lines {
		if strings.Contains(l, sub) {
			n++
		}
	}
	return n
}

func TestLimiter_BoundsLinesPerClientAndSummarises(t *testing.T) {
	h, lines := captured(slog.LevelDebug)
	clk := newClock()
	l := NewLimiter(Limit{Lines: 5, Interval: time.Minute})
	l.Now = clk.now
	log := l.Logger(slog.New(h))

	for i := 0; i < 10000; i++ {
		log.Warn("bad device message", "device", "d1", "n", i)
	}
	log.Info("other device", "client", "d2")
	log.Warn("no client")
	log.Debug("debug passes", "device", "d1")
	got := lines()
	assert.Equal(t, 5, count(got, "device=d1 n="), "d1's budget")
	assert.Equal(t, 1, count(got, "client=d2"), "another client has its own budget")
	assert.Equal(t, 1, count(got, "no client"))
	assert.Equal(t, 1, count(got, "debug passes"))
	assert.EqualValues(t, 9995, l.Suppressed())
	assert.Zero(t, count(got, "suppressed"), "no summary before the window ends")

	clk.add(time.Minute)
	l.Sweep()
	got = lines()
	require.Equal(t, 1, count(got, "log lines suppressed"), "%s", strings.Join(got, "\n"))
	assert.Contains(t, got[len(got)-1], "device=d1 suppressed=9995")
	assert.Empty(t, l.windows, "ended windows are forgotten")

	// A new window: the budget is back.
	log.Warn("bad device message", "device", "d1")
	assert.Len(t, lines(), len(got)+1)
}

func TestLimiter_KeyFromWithAndSummaryOnNextLine(t *testing.T) {
	h, lines := captured(slog.LevelInfo)
	clk := newClock()
	l := NewLimiter(Limit{Lines: 1, Interval: time.Second})
	l.Now = clk.now
	log := l.Logger(slog.New(h)).With("client", "c1")
	log.Info("one")
	log.Info("two")
	log.Info("three")
	clk.add(time.Second)
	log.Info("four")
	got := lines()
	require.Len(t, got, 3, "%s", strings.Join(got, "\n"))
	assert.Contains(t, got[0], "msg=one")
	assert.Contains(t, got[1], "suppressed=2")
	assert.Contains(t, got[2], "msg=four")
}

func TestLimiter_MemoryIsBoundedByMaxKeys(t *testing.T) {
	h, lines := captured(slog.LevelInfo)
	clk := newClock()
	l := NewLimiter(Limit{Lines: 2, Interval: time.Minute, MaxKeys: 100})
	l.Now = clk.now
	log := l.Logger(slog.New(h))
	for i := 0; i < 100000; i++ {
		log.Info("authentication refused", "client", fmt.Sprintf("c%d", i))
	}
	assert.LessOrEqual(t, len(l.windows), 101)
	assert.Equal(t, 100+2, len(lines()), "a line each for the first 100 clients, then the others share one budget")
	clk.add(time.Minute)
	l.Sweep()
	assert.Contains(t, strings.Join(lines(), "\n"), "client="+OthersKey+" suppressed=")
	assert.Empty(t, l.windows)
}

func TestLimiter_NegativeLinesDisables(t *testing.T) {
	h, lines := captured(slog.LevelInfo)
	l := NewLimiter(Limit{Lines: -1})
	log := l.Logger(slog.New(h))
	for i := 0; i < 100; i++ {
		log.Warn("x", "client", "c")
	}
	assert.Len(t, lines(), 100)
}

func TestLimiter_TotalBoundsManyClients(t *testing.T) {
	h, lines := captured(slog.LevelInfo)
	clk := newClock()
	l := NewLimiter(Limit{Lines: 5, Interval: time.Minute, Total: 50})
	l.Now = clk.now
	log := l.Logger(slog.New(h))
	for i := 0; i < 1000; i++ {
		log.Info("authentication refused", "client", fmt.Sprintf("c%d", i))
	}
	assert.Len(t, lines(), 50, "one client under many IDs gets the total")
	assert.EqualValues(t, 950, l.Suppressed())
	clk.add(time.Minute)
	l.Sweep()
	got := lines()
	assert.Contains(t, got[len(got)-1], "client="+OthersKey+" suppressed=950")
	log.Info("authentication refused", "client", "c1")
	assert.Len(t, lines(), 52, "a new interval, a new total")
}
