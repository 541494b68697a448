package rollout

import (
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
)

// countingTransport counts the chunks the engine publishes.
type countingTransport struct{ chunks int }

func (c *countingTransport) Publish(string, []byte, bool, byte) error { c.chunks++; return nil }

func (c *countingTransport) Subscribe(string, func(string, []byte)) error { return nil }

func TestRTTEstimator_FollowsRFC6298(t *testing.T) {
	var r rttEstimator
	assert.Zero(t, r.timeout(), "no samples, no estimate")

	r.add(100 * time.Millisecond)
	assert.Equal(t, 100*time.Millisecond, r.srtt)
	assert.Equal(t, 50*time.Millisecond, r.rttvar)
	assert.Equal(t, 300*time.Millisecond, r.timeout())

	r.add(500 * time.Millisecond)
	// rttvar = 3/4·50 + 1/4·|100−500| = 137.5 ms; srtt = 7/8·100 + 1/8·500 = 150 ms.
	assert.Equal(t, 137500*time.Microsecond, r.rttvar)
	assert.Equal(t, 150*time.Millisecond, r.srtt)
	assert.Equal(t, 700*time.Millisecond, r.timeout())
}

func TestRTTClock_KarnIgnoresAcksAfterAResend(t *testing.T) {
	t0 := time.Unix(1000, 0)
	var c rttClock
	c.sent(t0, 4096)
	c.resent(false)
	c.sent(t0.Add(time.Millisecond), 4096) // the resend itself is not timed
	_, ok := c.acked(t0.Add(time.Second), 4096)
	assert.False(t, ok, "an ack after a resend cannot be timed")

	c.sent(t0, 8192)
	c.sent(t0.Add(time.Millisecond), 12288) // one measurement at a time
	_, ok = c.acked(t0.Add(time.Second), 6144)
	assert.False(t, ok, "an ack short of the timed chunk measures nothing")
	d, ok := c.acked(t0.Add(3*time.Second), 8192)
	require.True(t, ok)
	assert.Equal(t, 3*time.Second, d)
	assert.Equal(t, 3*time.Second, c.est.srtt)
}

// newTimedTarget returns an engine with a fake clock and one downloading
// device with a window of chunks sent and none acknowledged.
func newTimedTarget(t *testing.T, now *time.Time) (*Engine, *countingTransport, *target) {
	t.Helper()
	blob := filepath.Join(t.TempDir(), "fw.bin")
	require.NoError(t, os.WriteFile(blob, make([]byte, 64*1024), 0o600))
	f, err := os.Open(blob)
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })

	tr := &countingTransport{}
	e := New(nil, tr, slog.New(slog.DiscardHandler))
	e.AckTimeout = 2 * time.Second
	e.Now = func() time.Time { return *now }
	pol := fleet.Policy{ChunkSize: 4096, Window: 4, IdleTimeout: fleet.Duration(10 * time.Minute)}
	r := newRun(fleet.Update{ID: "u-1", State: fleet.UpdateRunning, Policy: pol}, fleet.Firmware{ID: "fw-1", Size: 64 * 1024}, f, nil)
	tg := r.add(fleet.Progress{DeviceID: "d-1", State: fleet.StateDownloading}, 1)
	tg.slot = true
	tg.progress = *now
	e.sizeOffer(tg) // as an offer does
	e.pump(tg)
	require.Equal(t, 4, tr.chunks, "a window of chunks")
	e.runs = map[string]*run{r.u.ID: r}
	e.active = map[string]*target{"d-1": tg}
	e.ready = map[string]bool{"d-1": true} // connected: resends go to a device that is here
	return e, tr, tg
}

func TestEngine_ResendTimeoutFollowsAckRoundTripWithBackoff(t *testing.T) {
	now := time.Unix(1000, 0)
	e, tr, tg := newTimedTarget(t, &now)
	assert.Equal(t, 2*time.Second, e.resendTimeout(tg), "no samples: AckTimeout")

	// The first chunk's ack arrives 5 s after it was sent: an overloaded link.
	now = now.Add(5 * time.Second)
	e.onAck("d-1", protocol.Ack{Handle: 1, Offset: 4096})
	// srtt 5 s, rttvar 2.5 s: 15 s.
	assert.Equal(t, 15*time.Second, e.resendTimeout(tg))
	sent := tr.chunks

	now = now.Add(10 * time.Second)
	e.timers(now)
	assert.Equal(t, sent, tr.chunks, "10 s without progress is within the measured round trip: no resend")

	now = now.Add(6 * time.Second)
	e.timers(now)
	require.Greater(t, tr.chunks, sent, "past the timeout the window is sent again")
	assert.Equal(t, 30*time.Second, e.resendTimeout(tg), "a resend without progress doubles the timeout")
	sent = tr.chunks

	now = now.Add(20 * time.Second)
	e.timers(now)
	assert.Equal(t, sent, tr.chunks, "the backed-off timeout has not passed")

	// Progress ends the backoff; a device without samples of its own starts
	// from the estimate over all devices.
	now = now.Add(time.Second)
	e.onAck("d-1", protocol.Ack{Handle: 1, Offset: 8192})
	assert.Equal(t, 15*time.Second, e.resendTimeout(tg))
	other := newRun(tg.r.u, tg.r.fw, nil, nil).add(fleet.Progress{DeviceID: "d-2", State: fleet.StateDownloading}, 2)
	assert.Equal(t, 15*time.Second, e.resendTimeout(other))
}

func TestEngine_ResendTimeoutBounds(t *testing.T) {
	now := time.Unix(1000, 0)
	e, _, tg := newTimedTarget(t, &now)

	// A fast link never brings the timeout below AckTimeout.
	now = now.Add(time.Millisecond)
	e.onAck("d-1", protocol.Ack{Handle: 1, Offset: 4096})
	assert.Equal(t, 2*time.Second, e.resendTimeout(tg))

	// Backoff stops at MaxResendTimeout, and at half the idle timeout.
	for range 10 {
		tg.rtt.resent(true)
	}
	assert.Equal(t, MaxResendTimeout, e.resendTimeout(tg))
	tg.r.u.Policy.IdleTimeout = fleet.Duration(20 * time.Second)
	assert.Equal(t, 10*time.Second, e.resendTimeout(tg))
}
