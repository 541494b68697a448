package httpapi

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/sqlite"
)

// Limits of the history routes.
const (
	// DefaultHistoryEvents is the number of a device's events GET
	// /api/v1/devices/{id}/history returns without ?limit=.
	DefaultHistoryEvents = 100
	// DefaultFailureSample is the number of device IDs per reason GET
	// /api/v1/updates/{id}/failures returns without ?sample=.
	DefaultFailureSample = 20
	// MaxFailureSample bounds ?sample=.
	MaxFailureSample = 1000
	// DefaultTimelinePoints and MaxTimelinePoints bound ?points= of GET
	// /api/v1/updates/{id}/timeline.
	DefaultTimelinePoints = 200
	MaxTimelinePoints     = 1000
	// TimelineRecentEvents is the number of last events a timeline holds.
	TimelineRecentEvents = 100
	// DefaultTimelineReplays is the default of Server.MaxTimelineReplays:
	// a replay reads an update's whole event log, so a few at once keep
	// the store's readers for everyone else.
	DefaultTimelineReplays = 2
)

// replayLimit bounds the timeline replays running at once.
type replayLimit struct {
	slots   chan struct{}
	refused atomic.Int64 // requests refused for want of a slot
}

func newReplayLimit(n int) *replayLimit {
	return &replayLimit{slots: make(chan struct{}, orDefault(n, DefaultTimelineReplays))}
}

// acquire takes a slot, or counts a refusal and returns false.
func (l *replayLimit) acquire() bool {
	select {
	case l.slots <- struct{}{}:
		return true
	default:
		l.refused.Add(1)
		return false
	}
}

func (l *replayLimit) release() { <-l.slots }

// Response bodies of the history routes.
type (
	// DeviceHistory is the body of GET /api/v1/devices/{id}/history: the
	// device, the updates it was in (newest first) and its last events
	// (newest first). LastState and LastUpdate are those of the newest
	// update it was in, empty when it was in none.
	DeviceHistory struct {
		Device       fleet.Device          `json:"device"`
		LastState    fleet.DeviceState     `json:"last_state,omitempty"`
		LastUpdate   string                `json:"last_update,omitempty"`
		Updates      []sqlite.DeviceUpdate `json:"updates"`
		UpdatesTotal int                   `json:"updates_total"`
		Events       []fleet.Event         `json:"events"`
	}
	// FailureSummary is the body of GET /api/v1/updates/{id}/failures: the
	// devices that did not end on the firmware, grouped by state and
	// reason, largest group first.
	FailureSummary struct {
		Update string                `json:"update"`
		Total  int                   `json:"total"` // devices in all groups
		Groups []sqlite.FailureGroup `json:"groups"`
	}
	// Timeline is the body of GET /api/v1/updates/{id}/timeline: the
	// update's devices per state over time, replayed from the event log,
	// and its last events (newest first).
	Timeline struct {
		Update        string          `json:"update"`
		Points        []TimelinePoint `json:"points"`
		Recent        []fleet.Event   `json:"recent"`
		PrunedThrough int64           `json:"pruned_through"`
		// Truncated says that retention deleted the update's first events:
		// the points before the first remaining one are missing.
		Truncated bool `json:"truncated"`
	}
	// TimelinePoint is how many devices were in each state at Time.
	TimelinePoint struct {
		Time   time.Time                 `json:"time"`
		Counts map[fleet.DeviceState]int `json:"counts"`
	}
)

func (s *Server) deviceHistory(w http.ResponseWriter, r *http.Request) {
	limit, _, err := pageParams(r.URL.Query().Get("limit"), "")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if r.URL.Query().Get("limit") == "" {
		limit = DefaultHistoryEvents
	}
	s.settle(r)
	id := r.PathValue("id")
	d, err := s.Store.Device(r.Context(), id)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	ups, total, err := s.Store.DeviceUpdates(r.Context(), id, limit)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	evs, err := s.Store.DeviceEvents(r.Context(), id, limit)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	h := DeviceHistory{Device: d, Updates: nonNil(ups), UpdatesTotal: total, Events: nonNil(evs)}
	if len(ups) > 0 {
		h.LastState, h.LastUpdate = ups[0].State, ups[0].UpdateID
	}
	writeJSON(w, http.StatusOK, h)
}

func (s *Server) updateFailures(w http.ResponseWriter, r *http.Request) {
	sample, err := boundedParam(r, "sample", DefaultFailureSample, MaxFailureSample)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.settle(r)
	id := r.PathValue("id")
	if _, err := s.Store.Update(r.Context(), id); err != nil {
		s.writeError(w, r, err)
		return
	}
	groups, err := s.Store.Failures(r.Context(), id, sample)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := FailureSummary{Update: id, Groups: nonNil(groups)}
	for _, g := range groups {
		out.Total += g.Count
	}
	writeJSON(w, http.StatusOK, out)
}

// updateTimeline replays the update's event log. A device with no event
// stayed in the state it was created in (queued or skipped), which is its
// state now; a device's first event starts from queued. So each point is
// the states of the devices seen so far, plus the devices never seen in
// their current state, plus the devices seen later as queued.
func (s *Server) updateTimeline(w http.ResponseWriter, r *http.Request) {
	points, err := boundedParam(r, "points", DefaultTimelinePoints, MaxTimelinePoints)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if !s.replays.acquire() {
		w.Header().Set("Retry-After", "1")
		writeJSON(w, http.StatusServiceUnavailable, Error{Code: CodeUnavailable,
			Message: fmt.Sprintf("%d timelines are being replayed; try again in a moment", cap(s.replays.slots))})
		return
	}
	defer s.replays.release()
	s.settle(r)
	id := r.PathValue("id")
	u, err := s.Store.Update(r.Context(), id)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	final, err := s.Store.CountProgress(r.Context(), id)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	end := time.Now().UTC()
	if u.FinishedAt != nil {
		end = *u.FinishedAt
	}
	step := end.Sub(u.CreatedAt) / time.Duration(points)

	type snapshot struct {
		t      time.Time
		counts map[fleet.DeviceState]int // of the devices seen so far
		seen   int
	}
	cur := map[string]fleet.DeviceState{} // devices seen, by their state
	counts := map[fleet.DeviceState]int{}
	var snaps []snapshot
	take := func(t time.Time) {
		c := make(map[fleet.DeviceState]int, len(counts))
		for k, v := range counts {
			if v != 0 {
				c[k] = v
			}
		}
		snaps = append(snaps, snapshot{t: t, counts: c, seen: len(cur)})
	}
	take(u.CreatedAt)
	recent := make([]fleet.Event, 0, TimelineRecentEvents)
	var first *fleet.Event // the update's creation event comes first, unless pruned
	err = s.Store.EachEvent(r.Context(), id, func(e fleet.Event) error {
		if first == nil {
			first = &e
		}
		if len(recent) == TimelineRecentEvents {
			copy(recent, recent[1:])
			recent = recent[:len(recent)-1]
		}
		recent = append(recent, e)
		if e.Type != fleet.EventDevice || e.DeviceID == "" {
			return nil
		}
		if last := snaps[len(snaps)-1].t; e.Time.Sub(last) >= step && len(snaps) < points {
			take(e.Time)
		}
		if prev, ok := cur[e.DeviceID]; ok {
			counts[prev]--
		}
		st := fleet.DeviceState(e.State)
		cur[e.DeviceID] = st
		counts[st]++
		return nil
	})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	pruned, err := s.Store.PrunedThrough(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	// The devices never seen are in their state of now.
	never := map[fleet.DeviceState]int{}
	for st, n := range final {
		never[st] = n
	}
	for _, st := range cur {
		never[st]--
	}
	out := Timeline{Update: id, Recent: recent, PrunedThrough: pruned,
		Truncated: pruned > 0 && (first == nil || first.Type != fleet.EventUpdate || first.Seq <= pruned)}
	for _, sn := range snaps {
		c := map[fleet.DeviceState]int{}
		for st, n := range never {
			if n > 0 {
				c[st] += n
			}
		}
		for st, n := range sn.counts {
			c[st] += n
		}
		if later := len(cur) - sn.seen; later > 0 {
			c[fleet.StateQueued] += later
		}
		out.Points = append(out.Points, TimelinePoint{Time: sn.t, Counts: c})
	}
	out.Points = append(out.Points, TimelinePoint{Time: end, Counts: final})
	// Newest first, as the dashboard lists them.
	slices.Reverse(out.Recent)
	writeJSON(w, http.StatusOK, out)
}

// settleTimeout bounds how long a history read waits for the store's
// queued writes.
const settleTimeout = 2 * time.Second

// settle waits, up to settleTimeout, until the writes queued so far are
// committed, so that a history read right after the engine reported a
// change (an update's end, say) includes it. While the store cannot write
// (a full disk) it reads what is committed: a history a moment old beats
// none, so the wait's error is not the request's.
func (s *Server) settle(r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), settleTimeout)
	defer cancel()
	if err := s.Store.Wait(ctx); err != nil {
		s.logger().Debug("history read without the latest writes", "path", r.URL.Path, "err", err)
	}
}

// boundedParam parses the query parameter name as a number from 1 to max;
// missing, it is def.
func boundedParam(r *http.Request, name string, def, max int) (int, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > max {
		return 0, fleet.Errorf(fleet.ErrInvalidInput, "%s=%q: want a number from 1 to %d", name, v, max)
	}
	return n, nil
}
