package sqlite

import (
	"context"
	"fmt"
	"strings"

	"github.com/flotaio/flota/internal/fleet"
)

// What the dashboard and `device show` read: a device's history, an
// update's failures by reason, an update's event log replayed, and a page
// of the update list. Every read here is bounded by a limit or by an index.

// DeviceUpdate is one update a device was in: its progress row with what
// identifies the update.
type DeviceUpdate struct {
	fleet.Progress
	UpdateState fleet.UpdateState `json:"update_state"`
	FirmwareID  string            `json:"firmware"`
}

// DeviceUpdates returns up to limit updates the device was in, newest
// first (limit <= 0: all), and how many there are.
func (s *Store) DeviceUpdates(ctx context.Context, deviceID string, limit int) ([]DeviceUpdate, int, error) {
	db, err := s.db()
	if err != nil {
		return nil, 0, err
	}
	var total int
	if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM progress WHERE device_id = ?`, deviceID).Scan(&total); err != nil {
		return nil, 0, fmt.Errorf("count device updates: %w", err)
	}
	cols := "p." + strings.ReplaceAll(progressCols, ", ", ", p.")
	rows, err := db.QueryContext(ctx, `SELECT `+cols+`, u.state, u.firmware_id
		FROM progress p JOIN updates u ON u.id = p.update_id
		WHERE p.device_id = ? ORDER BY u.created_at DESC, u.rowid DESC`+limitClause(limit, 0), deviceID)
	if err != nil {
		return nil, 0, fmt.Errorf("device updates: %w", err)
	}
	out, err := collect(rows, func(sc interface{ Scan(...any) error }) (DeviceUpdate, error) {
		var du DeviceUpdate
		var ustate string
		r, err := scanProgressRow(sc, &ustate, &du.FirmwareID)
		du.Progress, du.UpdateState = r.Progress, fleet.UpdateState(ustate)
		return du, err
	}, "device updates")
	if err != nil {
		return nil, 0, err
	}
	return out, total, nil
}

// DeviceEvents returns the device's last limit events (limit <= 0: all),
// newest first.
func (s *Store) DeviceEvents(ctx context.Context, deviceID string, limit int) ([]fleet.Event, error) {
	db, err := s.db()
	if err != nil {
		return nil, err
	}
	rows, err := db.QueryContext(ctx, `SELECT `+eventCols+` FROM events WHERE device_id = ? ORDER BY seq DESC`+
		limitClause(limit, 0), deviceID)
	if err != nil {
		return nil, fmt.Errorf("device events: %w", err)
	}
	return collect(rows, scanEvent, "device events")
}

// FailureGroup counts an update's devices that ended in one state for one
// reason, with up to a sample of their IDs.
type FailureGroup struct {
	State   fleet.DeviceState `json:"state"`
	Reason  fleet.Reason      `json:"reason"`
	Count   int               `json:"count"`
	Devices []string          `json:"devices"` // the first IDs, in order; at most the sample asked for
}

// unsuccessful are the terminal states of a device that did not end on
// the update's firmware.
var unsuccessful = []fleet.DeviceState{fleet.StateFailed, fleet.StateRejected, fleet.StateOffline,
	fleet.StateSkipped, fleet.StateCancelled}

// Failures groups an update's devices that ended failed, rejected,
// offline, skipped or cancelled by state and reason, largest group first,
// with up to sample device IDs each. The groups are few (states times
// reason codes), so each sample is one indexed query.
func (s *Store) Failures(ctx context.Context, updateID string, sample int) ([]FailureGroup, error) {
	db, err := s.db()
	if err != nil {
		return nil, err
	}
	args := []any{updateID}
	for _, st := range unsuccessful {
		args = append(args, string(st))
	}
	rows, err := db.QueryContext(ctx, `SELECT state, reason, COUNT(*) AS n FROM progress
		WHERE update_id = ? AND state IN (?, ?, ?, ?, ?) GROUP BY state, reason ORDER BY n DESC, state, reason`, args...)
	if err != nil {
		return nil, fmt.Errorf("failures: %w", err)
	}
	groups, err := collect(rows, func(sc interface{ Scan(...any) error }) (FailureGroup, error) {
		var g FailureGroup
		var st, reason string
		err := sc.Scan(&st, &reason, &g.Count)
		g.State, g.Reason = fleet.DeviceState(st), fleet.Reason(reason)
		return g, err
	}, "failures")
	if err != nil {
		return nil, err
	}
	for i := range groups {
		rows, err := db.QueryContext(ctx, `SELECT device_id FROM progress WHERE update_id = ? AND state = ? AND reason = ?
			ORDER BY device_id`+limitClause(max(sample, 1), 0), updateID, string(groups[i].State), string(groups[i].Reason))
		if err != nil {
			return nil, fmt.Errorf("failures: %w", err)
		}
		ids, err := collect(rows, func(sc interface{ Scan(...any) error }) (string, error) {
			var id string
			return id, sc.Scan(&id)
		}, "failures")
		if err != nil {
			return nil, err
		}
		groups[i].Devices = ids
	}
	return groups, nil
}

// EachEvent calls fn with every event of the update in order, reading in
// pages so that a long log is never held in memory; fn's error stops it.
func (s *Store) EachEvent(ctx context.Context, updateID string, fn func(fleet.Event) error) error {
	const page = 5000
	var after int64
	for {
		evs, err := s.Events(ctx, updateID, after, page)
		if err != nil {
			return err
		}
		for _, e := range evs {
			if err := fn(e); err != nil {
				return err
			}
		}
		if len(evs) < page {
			return nil
		}
		after = evs[len(evs)-1].Seq
	}
}

// UpdateFilter narrows ListUpdatesPage. Query matches a prefix of the
// update's ID, of its firmware's ID, name or version; empty matches all.
type UpdateFilter struct {
	Query  string
	Limit  int // <= 0: no limit
	Offset int
}

// ListUpdatesPage returns one page of the updates matching f, newest
// first, and the number of matching updates.
func (s *Store) ListUpdatesPage(ctx context.Context, f UpdateFilter) ([]fleet.Update, int, error) {
	db, err := s.db()
	if err != nil {
		return nil, 0, err
	}
	var w where
	if f.Query != "" {
		p := likePrefix(f.Query)
		w.add(`(id LIKE ? ESCAPE '\' OR firmware_id LIKE ? ESCAPE '\' OR firmware_id IN
			(SELECT id FROM firmware WHERE name LIKE ? ESCAPE '\' OR version LIKE ? ESCAPE '\'))`, p, p, p, p)
	}
	var total int
	if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM updates`+w.String(), w.args...).Scan(&total); err != nil {
		return nil, 0, fmt.Errorf("count updates: %w", err)
	}
	ups, err := s.queryUpdates(ctx, `SELECT `+updateCols+` FROM updates`+w.String()+
		` ORDER BY created_at DESC, rowid DESC`+limitClause(f.Limit, f.Offset), w.args...)
	if err != nil {
		return nil, 0, err
	}
	return ups, total, nil
}

// likePrefix returns a LIKE pattern (escape character \) matching strings
// that start with p.
func likePrefix(p string) string {
	r := strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`)
	return r.Replace(p) + "%"
}
