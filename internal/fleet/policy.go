package fleet

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"
	_ "time/tzdata" // maintenance windows name IANA zones; do not depend on the host's
)

// Policy defaults beyond the transfer settings.
const (
	DefaultSuccessThreshold = 1.0
	DefaultRetryBackoff     = 10 * time.Second
	MaxRetryBackoff         = 10 * time.Minute
	DefaultIdleTimeout      = 2 * time.Minute
	DefaultConfirmTimeout   = 10 * time.Minute
	DefaultOfflineAfter     = 10 * time.Minute
)

// Policy is how an update is carried out. Zero fields take defaults
// (WithDefaults); docs/ARCHITECTURE.md describes how each acts.
type Policy struct {
	MaxInFlight int `json:"max_in_flight"` // devices transferring at once
	Window      int `json:"window"`        // unacknowledged chunks per device
	ChunkSize   int `json:"chunk_size"`    // bytes per chunk
	MaxAttempts int `json:"max_attempts"`  // attempts per device before it fails

	// Rate bounds the devices started per minute; 0 means no bound.
	Rate int `json:"rate,omitempty"`

	// Phases are cumulative sizes, as percentages of the targets ("1%") or
	// counts ("10"), e.g. ["1%","10%","50%","100%"]. A phase's devices
	// must reach SuccessThreshold before the next phase starts (after Soak);
	// with ManualGates the update pauses at each gate for an operator.
	Phases           []string `json:"phases,omitempty"`
	SuccessThreshold float64  `json:"success_threshold,omitempty"` // 0..1; default 1
	Soak             Duration `json:"soak,omitempty"`
	ManualGates      bool     `json:"manual_gates,omitempty"`

	// FailureThreshold aborts the update when failures reach it ("10%" of
	// the finished devices, or a count "5"), once at least
	// FailureMinFinished devices have finished.
	FailureThreshold   Threshold `json:"failure_threshold,omitzero"`
	FailureMinFinished int       `json:"failure_min_finished,omitempty"`

	// IdleTimeout: a transfer without progress for this long fails its
	// attempt (transfer_timeout), or goes back to the queue when its device
	// is away. ConfirmTimeout: a device that installed and did not come back
	// on the target version within this long fails (confirm_timeout).
	IdleTimeout    Duration `json:"idle_timeout,omitempty"`
	ConfirmTimeout Duration `json:"confirm_timeout,omitempty"`
	// OfflineAfter: a queued device that has not been seen for this long
	// while the update runs (since the update started running here, or
	// since the device went away) ends offline, so that the update ends
	// even when some targets never show up.
	OfflineAfter Duration `json:"offline_after,omitempty"`
	// RetryBackoff is the first delay before a failed attempt is retried;
	// it doubles per attempt up to MaxRetryBackoff, with ±50% jitter.
	RetryBackoff Duration `json:"retry_backoff,omitempty"`

	// StartAt schedules the update: devices are started from then on.
	StartAt *time.Time `json:"start_at,omitempty"`
	// Maintenance restricts when devices are started (transfers in flight
	// may finish outside it).
	Maintenance *MaintenanceWindow `json:"maintenance,omitempty"`

	// AllowDowngrade updates devices that run a newer version than the
	// target; Force also reinstalls on devices that already run it.
	// Otherwise such devices are skipped (version_not_newer,
	// already_current).
	AllowDowngrade bool `json:"allow_downgrade,omitempty"`
	Force          bool `json:"force,omitempty"`

	// Dynamic lets devices that appear while the update runs, and match its
	// selector, join it.
	Dynamic bool `json:"dynamic,omitempty"`

	// NoDelta sends no device a delta, and NoCompress no device a
	// compressed image: by default each device gets the smallest payload
	// it can decode (docs/ARCHITECTURE.md, Payloads).
	NoDelta    bool `json:"no_delta,omitempty"`
	NoCompress bool `json:"no_compress,omitempty"`
}

// WithDefaults returns p with zero fields set to the defaults.
func (p Policy) WithDefaults() Policy {
	if p.MaxInFlight == 0 {
		p.MaxInFlight = DefaultMaxInFlight
	}
	if p.Window == 0 {
		p.Window = DefaultWindow
	}
	if p.ChunkSize == 0 {
		p.ChunkSize = DefaultChunkSize
	}
	if p.MaxAttempts == 0 {
		p.MaxAttempts = DefaultMaxAttempts
	}
	if p.SuccessThreshold == 0 {
		p.SuccessThreshold = DefaultSuccessThreshold
	}
	if p.IdleTimeout == 0 {
		p.IdleTimeout = Duration(DefaultIdleTimeout)
	}
	if p.ConfirmTimeout == 0 {
		p.ConfirmTimeout = Duration(DefaultConfirmTimeout)
	}
	if p.RetryBackoff == 0 {
		p.RetryBackoff = Duration(DefaultRetryBackoff)
	}
	if p.OfflineAfter == 0 {
		p.OfflineAfter = Duration(DefaultOfflineAfter)
	}
	return p
}

// Validate reports a policy outside the supported ranges.
func (p Policy) Validate() error {
	switch {
	case p.MaxInFlight < 1:
		return Errorf(ErrInvalidPolicy, "max_in_flight must be at least 1")
	case p.Window < 1 || p.Window > MaxWindow:
		return Errorf(ErrInvalidPolicy, "window must be 1..%d", MaxWindow)
	case p.ChunkSize < MinChunkSize || p.ChunkSize > MaxChunkSize:
		return Errorf(ErrInvalidPolicy, "chunk_size must be %d..%d", MinChunkSize, MaxChunkSize)
	case p.MaxAttempts < 1:
		return Errorf(ErrInvalidPolicy, "max_attempts must be at least 1")
	case p.Rate < 0:
		return Errorf(ErrInvalidPolicy, "rate must not be negative")
	case p.SuccessThreshold < 0 || p.SuccessThreshold > 1:
		return Errorf(ErrInvalidPolicy, "success_threshold must be 0..1")
	case p.Soak < 0 || p.IdleTimeout < 0 || p.ConfirmTimeout < 0 || p.RetryBackoff < 0 || p.OfflineAfter < 0:
		return Errorf(ErrInvalidPolicy, "durations must not be negative")
	case p.FailureMinFinished < 0:
		return Errorf(ErrInvalidPolicy, "failure_min_finished must not be negative")
	}
	if _, err := ResolvePhases(p.Phases, 100); err != nil {
		return err
	}
	if p.Maintenance != nil {
		if err := p.Maintenance.Validate(); err != nil {
			return err
		}
	}
	return nil
}

// ResolvePhases turns phase sizes into cumulative device counts for total
// targets. The last phase always ends at total: a list that stops short
// gets a final phase for the rest. No phases means one phase of all.
func ResolvePhases(phases []string, total int) ([]int, error) {
	var out []int
	prev := 0
	for _, ph := range phases {
		ph = strings.TrimSpace(ph)
		var n int
		if pct, ok := strings.CutSuffix(ph, "%"); ok {
			f, err := strconv.ParseFloat(pct, 64)
			if err != nil || f <= 0 || f > 100 {
				return nil, Errorf(ErrInvalidPolicy, "phase %q: want a percentage in (0,100]", ph)
			}
			n = int(math.Ceil(f / 100 * float64(total)))
		} else {
			c, err := strconv.Atoi(ph)
			if err != nil || c <= 0 {
				return nil, Errorf(ErrInvalidPolicy, "phase %q: want a count or a percentage", ph)
			}
			n = c
		}
		n = min(n, total)
		if n < prev || (n == prev && len(out) > 0) {
			if n == total && prev == total {
				continue // several phases collapse to all on a small fleet
			}
			return nil, Errorf(ErrInvalidPolicy, "phases must grow: %q after %d devices", ph, prev)
		}
		if n == 0 {
			continue
		}
		out = append(out, n)
		prev = n
	}
	if prev < total || len(out) == 0 {
		out = append(out, total) // never empty, even for no targets (yet)
	}
	return out, nil
}

// Threshold is a number of devices or a percentage. Its JSON form is a
// string: "5" or "10%". The zero Threshold is unset.
type Threshold struct {
	Count   int     // devices, when Percent is 0
	Percent float64 // of the finished devices
}

// IsZero reports whether the threshold is unset.
func (t Threshold) IsZero() bool { return t.Count == 0 && t.Percent == 0 }

// ParseThreshold parses "5" or "10%".
func ParseThreshold(s string) (Threshold, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return Threshold{}, nil
	}
	if pct, ok := strings.CutSuffix(s, "%"); ok {
		f, err := strconv.ParseFloat(pct, 64)
		if err != nil || f <= 0 || f > 100 {
			return Threshold{}, Errorf(ErrInvalidPolicy, "threshold %q: want a percentage in (0,100]", s)
		}
		return Threshold{Percent: f}, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		return Threshold{}, Errorf(ErrInvalidPolicy, "threshold %q: want a count or a percentage", s)
	}
	return Threshold{Count: n}, nil
}

func (t Threshold) String() string {
	switch {
	case t.Percent > 0:
		return strconv.FormatFloat(t.Percent, 'f', -1, 64) + "%"
	case t.Count > 0:
		return strconv.Itoa(t.Count)
	}
	return ""
}

// Reached reports whether failures out of finished devices reach the
// threshold.
func (t Threshold) Reached(failures, finished int) bool {
	switch {
	case t.Percent > 0:
		return finished > 0 && float64(failures)*100 >= t.Percent*float64(finished)
	case t.Count > 0:
		return failures >= t.Count
	}
	return false
}

// MarshalJSON writes the string form.
func (t Threshold) MarshalJSON() ([]byte, error) { return json.Marshal(t.String()) }

// UnmarshalJSON reads "5", "10%" or a bare number of devices.
func (t *Threshold) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		var n int
		if err2 := json.Unmarshal(b, &n); err2 != nil {
			return fmt.Errorf("threshold: want \"N\" or \"P%%\": %w", err)
		}
		s = strconv.Itoa(n)
	}
	v, err := ParseThreshold(s)
	if err != nil {
		return err
	}
	*t = v
	return nil
}

// Duration is a time.Duration whose JSON form is a Go duration string
// ("90s", "10m"); a number is read as seconds.
type Duration time.Duration

// D returns the time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// MarshalJSON writes the string form.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads "10m" or a number of seconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		var secs float64
		if err2 := json.Unmarshal(b, &secs); err2 != nil {
			return fmt.Errorf("duration: want \"10m\" or seconds: %w", err)
		}
		*d = Duration(secs * float64(time.Second))
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("duration %q: %w", s, err)
	}
	*d = Duration(v)
	return nil
}

// MaintenanceWindow is a daily time range in a time zone. End before Start
// spans midnight ("22:00"–"04:00").
type MaintenanceWindow struct {
	Start    string `json:"start"`    // "HH:MM" (or "HH:MM:SS")
	End      string `json:"end"`      // "HH:MM" (or "HH:MM:SS")
	TimeZone string `json:"timezone"` // IANA name, e.g. "Europe/Berlin"; empty: UTC
}

// parseClock returns the second of the day of "HH:MM" or "HH:MM:SS".
func parseClock(s string) (int, error) {
	s = strings.TrimSpace(s)
	parts := strings.Split(s, ":")
	if len(parts) < 2 || len(parts) > 3 {
		return 0, fmt.Errorf("%q: want HH:MM or HH:MM:SS", s)
	}
	secs := 0
	for i, p := range parts {
		name, max := [3]string{"hour", "minute", "second"}[i], [3]int{23, 59, 59}[i]
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 || len(p) != 2 && (i > 0 || len(p) != 1) {
			return 0, fmt.Errorf("%q: the %s %q is not a number of two digits (want HH:MM or HH:MM:SS)", s, name, p)
		}
		if n > max {
			return 0, fmt.Errorf("%q: the %s %d is out of range 00..%02d", s, name, n, max)
		}
		secs += n * [3]int{3600, 60, 1}[i]
	}
	return secs, nil
}

// Validate reports a malformed window.
func (w MaintenanceWindow) Validate() error {
	s, err := parseClock(w.Start)
	if err != nil {
		return Errorf(ErrInvalidPolicy, "maintenance window start %v", err)
	}
	e, err := parseClock(w.End)
	if err != nil {
		return Errorf(ErrInvalidPolicy, "maintenance window end %v", err)
	}
	if s == e {
		return Errorf(ErrInvalidPolicy, "maintenance window is empty: start equals end")
	}
	if _, err := time.LoadLocation(w.TimeZone); err != nil {
		return Errorf(ErrInvalidPolicy, "maintenance time zone %q: %v", w.TimeZone, err)
	}
	return nil
}

// Contains reports whether t falls inside the window. A malformed window
// contains nothing.
func (w MaintenanceWindow) Contains(t time.Time) bool {
	s, err1 := parseClock(w.Start)
	e, err2 := parseClock(w.End)
	loc, err3 := time.LoadLocation(w.TimeZone)
	if err1 != nil || err2 != nil || err3 != nil {
		return false
	}
	lt := t.In(loc)
	m := lt.Hour()*3600 + lt.Minute()*60 + lt.Second()
	if s < e {
		return m >= s && m < e
	}
	return m >= s || m < e
}

// NextOpen returns the first time at or after t inside the window, to the
// second; t itself when t is inside, the zero time for a malformed window.
func (w MaintenanceWindow) NextOpen(t time.Time) time.Time {
	s, err := parseClock(w.Start)
	loc, err2 := time.LoadLocation(w.TimeZone)
	if err != nil || err2 != nil {
		return time.Time{}
	}
	if w.Contains(t) {
		return t
	}
	lt := t.In(loc)
	day := time.Date(lt.Year(), lt.Month(), lt.Day(), 0, 0, 0, 0, loc)
	for i := 0; i < 3; i++ { // today's start, else tomorrow's (or the day after, across a DST change)
		open := day.AddDate(0, 0, i).Add(time.Duration(s) * time.Second)
		if !open.Before(t) {
			return open
		}
	}
	return time.Time{}
}

// Backoff is the delay before attempt n+1 after n failed attempts: base
// doubled per attempt, capped at MaxRetryBackoff, with ±50% jitter from r.
func Backoff(base time.Duration, attempts int, r *rand.Rand) time.Duration {
	d := base
	for i := 1; i < attempts && d < MaxRetryBackoff; i++ {
		d *= 2
	}
	d = min(d, MaxRetryBackoff)
	if r != nil && d > 0 {
		d = d/2 + time.Duration(r.Int64N(int64(d)))
	}
	return d
}
