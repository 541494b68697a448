package rollout

import "time"

// The resend timeout adapts to the acks' round trip, as TCP's retransmission
// timeout does (RFC 6298): each device keeps a smoothed round-trip time and
// its variation, measured from the send of a chunk to the ack that covers it;
// the timeout is the smoothed time plus four variations, never below
// Engine.AckTimeout, and it doubles with every resend that brings no progress.
// An overloaded broker or a slow link then makes resends rarer instead of
// filling the queues with copies of chunks still on their way.
const (
	// MaxResendTimeout bounds the adaptive resend timeout, backoff included;
	// it is also kept below half the update's idle timeout, so a device gets
	// at least one resend before its transfer is failed as idle.
	MaxResendTimeout = 30 * time.Second
	// maxBackoff bounds the doubling: 2^6 = 64 times the base timeout.
	maxBackoff = 6
)

// rttEstimator is a smoothed round-trip time and its mean deviation.
type rttEstimator struct {
	srtt, rttvar time.Duration
	samples      int
}

// add folds one round-trip sample in (RFC 6298 section 2: alpha 1/8, beta 1/4).
func (r *rttEstimator) add(d time.Duration) {
	if d < 0 {
		return
	}
	if r.samples == 0 {
		r.srtt, r.rttvar = d, d/2
	} else {
		dev := r.srtt - d
		if dev < 0 {
			dev = -dev
		}
		r.rttvar += (dev - r.rttvar) / 4
		r.srtt += (d - r.srtt) / 8
	}
	r.samples++
}

// timeout is srtt + 4 rttvar, or 0 without samples.
func (r *rttEstimator) timeout() time.Duration {
	if r.samples == 0 {
		return 0
	}
	return r.srtt + 4*r.rttvar
}

// rttClock times one chunk of a target at a time: the chunk ending at mark,
// sent at start. Karn's rule: only chunks sent for the first time are timed,
// and a resend cancels the measurement, since an ack after a resend cannot
// tell which copy it answers.
type rttClock struct {
	mark    int64 // end offset of the timed chunk; 0 when none is timed
	start   time.Time
	high    int64 // end of the furthest chunk sent since the offer
	est     rttEstimator
	backoff int // resends on the timeout since the last ack progress
}

// sent notes a chunk ending at end sent at now; a chunk sent for the first
// time starts a measurement if none is running.
func (c *rttClock) sent(now time.Time, end int64) {
	if end <= c.high {
		return
	}
	c.high = end
	if c.mark == 0 {
		c.mark, c.start = end, now
	}
}

// acked notes ack progress to offset at now and returns the round trip it
// measured, or false. Progress ends any backoff.
func (c *rttClock) acked(now time.Time, offset int64) (time.Duration, bool) {
	c.backoff = 0
	if c.mark == 0 || offset < c.mark {
		return 0, false
	}
	d := now.Sub(c.start)
	c.mark = 0
	c.est.add(d)
	return d, true
}

// resent notes a go-back: the measurement is void, and a resend on the
// timeout backs the timeout off.
func (c *rttClock) resent(onTimeout bool) {
	c.mark = 0
	if onTimeout && c.backoff < maxBackoff {
		c.backoff++
	}
}

// reset forgets a measurement in progress (a new offer or attempt), keeping
// the estimate: the device and its link are the same.
func (c *rttClock) reset() {
	c.mark, c.high, c.backoff = 0, 0, 0
}

// resendTimeout is how long t may go without ack progress before the engine
// resends from the acknowledged offset: the device's own estimate, else the
// estimate over all devices, else AckTimeout; at least AckTimeout; doubled
// per resend without progress; at most MaxResendTimeout and half the idle
// timeout.
func (e *Engine) resendTimeout(t *target) time.Duration {
	base := t.rtt.est.timeout()
	if base == 0 {
		base = e.fleetRTT.timeout()
	}
	base = max(base, e.AckTimeout)
	limit := MaxResendTimeout
	if idle := t.r.u.Policy.IdleTimeout.D(); idle > 0 {
		limit = min(limit, idle/2)
	}
	limit = max(limit, e.AckTimeout)
	d := base
	for i := 0; i < t.rtt.backoff && d < limit; i++ {
		d *= 2
	}
	return min(d, limit)
}
