package rollout_test

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
	"github.com/flotaio/flota/internal/rollout"
)

// logBuffer collects log output written from any goroutine.
type logBuffer struct {
	mu  sync.Mutex // guards buf
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// count returns the lines holding sub.
func (b *logBuffer) count(sub string) int { return strings.Count(b.String(), sub) }

func capturedLogger(b *logBuffer) *slog.Logger { return slog.New(slog.NewTextHandler(b, nil)) }

// acceptedDevice returns a scripted device on 1.0.0, alone in the fleet,
// that has accepted at offset 0 the offer of an update to a 1.1.0 image of
// size bytes created with pol.
func acceptedDevice(h *harness, id string, size int, pol fleet.Policy) (*scripted, fleet.Firmware, fleet.Update, protocol.Offer) {
	h.t.Helper()
	d := newScripted(h.t, h, id, "1.0.0")
	h.waitDevices(1)
	fw, _ := h.addFirmware(size, "1.1.0")
	u := h.create(fw, pol, fleet.Selector{})
	o := d.offer()
	d.report(o, fleet.StateAccepted, 0, "")
	return d, fw, u, o
}

// downloadingDevice returns a scripted device downloading an update.
func downloadingDevice(h *harness, id string) (*scripted, fleet.Update, protocol.Offer) {
	h.t.Helper()
	d, _, u, o := acceptedDevice(h, id, 64*1024, fleet.Policy{ChunkSize: 4096, Window: 1})
	eventually(h.t, 5*time.Second, func() bool { return h.deviceState(u.ID, id).State == fleet.StateDownloading }, "downloading")
	return d, u, o
}

func TestEngine_IllegalTransitionsFloodBoundsEventRowsAndCountsAll(t *testing.T) {
	var logs logBuffer
	// The flood must reach the loop whole: no per-device quota (fair.go).
	h := newHarnessWith(t, capturedLogger(&logs), func(e *rollout.Engine) { e.MessageQuota = 1 << 20 })
	d, u, o := downloadingDevice(h, "evil")

	// A device downloading cannot reject its offer: each report is an illegal
	// change.
	const n = 3000
	payload := protocol.Encode(protocol.Report{V: 1, Update: o.Update, Handle: o.Handle, State: fleet.StateRejected})
	for i := 0; i < n; i++ {
		d.c.Publish(protocol.UpTopic("evil", protocol.KindReport), 0, false, payload)
	}
	eventually(t, 20*time.Second, func() bool { return h.engine.Stats().IllegalChanges >= n }, "every illegal change counted")

	st := h.engine.Stats()
	assert.EqualValues(t, n, st.IllegalChanges)
	assert.EqualValues(t, n-1, st.IllegalEventsSuppressed)
	illegal := 0
	for _, ev := range h.events(u.ID) {
		if ev.Type == fleet.EventIllegal {
			illegal++
		}
	}
	assert.Equal(t, 1, illegal, "one event row per device and interval")
	t.Logf("%d illegal changes: %d event row, %d log lines (%d bytes of log)", st.IllegalChanges, illegal,
		logs.count("illegal device transition"), len(logs.String()))
	assert.LessOrEqual(t, logs.count("illegal device transition"), 20, "log lines per device are limited too")
	assert.Positive(t, st.LogLinesSuppressed)
	assert.Equal(t, fleet.StateDownloading, h.deviceState(u.ID, "evil").State)
}

func TestEngine_IllegalTransitionRecordedAgainAfterTheInterval(t *testing.T) {
	clock := &fakeClock{now: time.Now()}
	h := newHarnessWith(t, testLogger(t), func(e *rollout.Engine) { e.Now = clock.Now })
	d, u, o := downloadingDevice(h, "evil")

	illegal := func() (n int) {
		for _, ev := range h.events(u.ID) {
			if ev.Type == fleet.EventIllegal {
				n++
			}
		}
		return n
	}
	for round := 1; round <= 3; round++ {
		for i := 0; i < 5; i++ {
			d.report(o, fleet.StateRejected, 0, "")
		}
		eventually(t, 5*time.Second, func() bool { return h.engine.Stats().IllegalChanges >= int64(5*round) }, "counted")
		assert.Equal(t, round, illegal(), "one event in round %d", round)
		clock.Set(clock.Now().Add(rollout.DefaultIllegalEventInterval))
	}
}

func TestEngine_BadMessageFloodLogsBoundedLinesAndASummary(t *testing.T) {
	var logs logBuffer
	clock := &fakeClock{now: time.Now()}
	h := newHarnessWith(t, capturedLogger(&logs), func(e *rollout.Engine) {
		e.Now = clock.Now
		e.MessageQuota = 1 << 20 // the flood must reach the loop whole (fair.go)
	})
	d := newScripted(t, h, "noisy", "1.0.0")
	h.waitDevices(1)

	const n = 10000
	for i := 0; i < n; i++ {
		d.c.Publish(protocol.UpTopic("noisy", protocol.KindReport), 0, false, []byte("{not json"))
	}
	eventually(t, 30*time.Second, func() bool { return h.engine.Stats().BadMessages >= n }, "every bad message counted")
	// A message is counted bad before its line is written or suppressed.
	eventually(t, 5*time.Second, func() bool {
		return int64(logs.count("bad device message"))+h.engine.Stats().LogLinesSuppressed >= n
	}, "every bad message's line written or suppressed")
	st := h.engine.Stats()
	assert.EqualValues(t, n, st.BadMessages)
	lines := logs.count("bad device message")
	assert.Positive(t, lines)
	assert.LessOrEqual(t, lines, 20)
	assert.EqualValues(t, n-lines, st.LogLinesSuppressed)

	// When the window ends, the engine's timer writes what was dropped.
	clock.Set(clock.Now().Add(time.Minute))
	eventually(t, 5*time.Second, func() bool { return logs.count("log lines suppressed") == 1 }, "a summary line")
	assert.Contains(t, logs.String(), "device=noisy suppressed=")
	assert.Less(t, len(logs.String()), 64*1024, "the whole log stays small")
	t.Logf("%d bad messages: %d log lines and a summary, %d bytes of log", st.BadMessages, lines, len(logs.String()))
}

// TestEngine_BadTopicIsLoggedQuotedAndCut: a topic the engine cannot parse
// is logged escaped and cut, not as the device sent it, under the device's
// log limit.
func TestEngine_BadTopicIsLoggedQuotedAndCut(t *testing.T) {
	var logs logBuffer
	h := newHarnessWith(t, capturedLogger(&logs), nil)
	topic := protocol.UpTopic("x", "a") + "/\x1b[2J" + strings.Repeat("z", 1000)
	require.NoError(t, h.broker.Publish(topic, []byte("{}"), false, 0))
	eventually(t, 5*time.Second, func() bool { return logs.count("bad device topic") == 1 }, "logged")
	out := logs.String()
	assert.NotContains(t, out, "\x1b")
	assert.NotContains(t, out, strings.Repeat("z", 200))
	assert.Contains(t, out, "device=x ")

	// A flood of them is limited as the device's own lines.
	for i := 0; i < 100; i++ {
		require.NoError(t, h.broker.Publish(topic, []byte("{}"), false, 0))
	}
	eventually(t, 5*time.Second, func() bool { return h.engine.Stats().BadMessages == 101 }, "counted")
	assert.Equal(t, 20, logs.count("bad device topic"))
}
