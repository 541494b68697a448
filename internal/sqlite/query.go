package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/flotaio/flota/internal/fleet"
)

// scanner is a *sql.Row or *sql.Rows.
type scanner = interface{ Scan(...any) error }

// where builds a WHERE clause from conditions joined by AND.
type where struct {
	conds []string
	args  []any
}

func (w *where) add(cond string, args ...any) {
	w.conds = append(w.conds, cond)
	w.args = append(w.args, args...)
}

func (w *where) String() string {
	if len(w.conds) == 0 {
		return ""
	}
	return " WHERE " + strings.Join(w.conds, " AND ")
}

// limitClause returns LIMIT/OFFSET for a page; limit <= 0 means no limit.
func limitClause(limit, offset int) string {
	if limit <= 0 {
		limit = -1
	}
	return fmt.Sprintf(" LIMIT %d OFFSET %d", limit, max(offset, 0))
}

// --- devices ---

// DeviceFilter narrows ListDevices. Empty fields match all; Limit <= 0 means
// no limit. After pages by key: only devices with a larger ID are returned
// (the total still counts every match), which stays as fast on the last page
// of a large fleet as on the first, unlike Offset.
type DeviceFilter struct {
	Model   string
	Version string
	Online  *bool
	// Prefix matches devices whose ID starts with it.
	Prefix string
	Tags   map[string]string // every one, with its value
	After  string
	Limit  int
	Offset int
}

const deviceCols = `id, model, version, tags, first_seen, last_seen, online, image, caps`

func scanDevice(sc scanner) (fleet.Device, error) {
	var d fleet.Device
	var tags, first, last, caps string
	if err := sc.Scan(&d.ID, &d.Model, &d.Version, &tags, &first, &last, &d.Online, &d.Image, &caps); err != nil {
		return fleet.Device{}, err
	}
	if caps != "" {
		d.Caps = strings.Split(caps, ",")
	}
	if tags != "" && tags != "{}" {
		if err := json.Unmarshal([]byte(tags), &d.Tags); err != nil {
			return fleet.Device{}, fmt.Errorf("device %s tags: %w", d.ID, err)
		}
	}
	var err error
	if d.FirstSeen, err = parseTime(first); err != nil {
		return fleet.Device{}, err
	}
	if d.LastSeen, err = parseTime(last); err != nil {
		return fleet.Device{}, err
	}
	return d, nil
}

// Device returns the device with that ID, or fleet.ErrDeviceNotFound.
func (s *Store) Device(ctx context.Context, id string) (fleet.Device, error) {
	db, err := s.db()
	if err != nil {
		return fleet.Device{}, err
	}
	d, err := scanDevice(db.QueryRowContext(ctx, `SELECT `+deviceCols+` FROM devices WHERE id = ?`, id))
	if err != nil {
		return fleet.Device{}, fmt.Errorf("device %s: %w", id, notFound(err, fleet.ErrDeviceNotFound, id))
	}
	return d, nil
}

// ListDevices returns one page of the devices matching f, ordered by ID, and
// the number of matching devices.
func (s *Store) ListDevices(ctx context.Context, f DeviceFilter) ([]fleet.Device, int, error) {
	db, err := s.db()
	if err != nil {
		return nil, 0, err
	}
	var w where
	if f.Model != "" {
		w.add("model = ?", f.Model)
	}
	if f.Version != "" {
		w.add("version = ?", f.Version)
	}
	if f.Online != nil {
		w.add("online = ?", *f.Online)
	}
	if f.Prefix != "" {
		// A range on the primary key, not LIKE, so that the index serves it.
		w.add("id >= ? AND id < ?", f.Prefix, f.Prefix+"\U0010FFFF")
	}
	if err := w.addTags(f.Tags); err != nil {
		return nil, 0, fmt.Errorf("list devices: %w", err)
	}
	var total int
	if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM devices`+w.String(), w.args...).Scan(&total); err != nil {
		return nil, 0, fmt.Errorf("count devices: %w", err)
	}
	if f.After != "" {
		w.add("id > ?", f.After)
	}
	rows, err := db.QueryContext(ctx, `SELECT `+deviceCols+` FROM devices`+w.String()+` ORDER BY id`+
		limitClause(f.Limit, f.Offset), w.args...)
	if err != nil {
		return nil, 0, fmt.Errorf("list devices: %w", err)
	}
	ds, err := collect(rows, scanDevice, "list devices")
	if err != nil {
		return nil, 0, err
	}
	return ds, total, nil
}

// SelectDevices returns the devices sel matches, ordered by ID, with their
// ID, model, version, presence and image only: what choosing an update's
// targets and their deltas needs (Device has the rest). Model, exact version, tags and explicit IDs
// are filtered in SQL; a version range in Go, parsing each distinct version
// once, so that selecting from 100,000 devices stays well under 200 ms
// (BenchmarkStore_SelectDevices100k). Tags and IDs are passed as one JSON
// parameter each, so that the statement is the same whatever their number:
// a selector at the limits of fleet.Selector runs like a small one.
func (s *Store) SelectDevices(ctx context.Context, sel fleet.Selector) ([]fleet.Device, error) {
	db, err := s.db()
	if err != nil {
		return nil, err
	}
	if err := sel.Validate(); err != nil {
		return nil, err
	}
	var w where
	if sel.Model != "" {
		w.add("model = ?", sel.Model)
	}
	var rng *fleet.Matcher // the version range alone; nil when SQL decides
	if v, ok := sel.ExactVersion(); ok {
		w.add("version = ?", v)
	} else if sel.Version != "" {
		if rng, err = (fleet.Selector{Version: sel.Version}).Compile(); err != nil {
			return nil, err
		}
	}
	want := map[string]string{} // tags the device must have
	var absent []string         // an empty value matches a device without the tag, as Matcher does
	for k, v := range sel.Tags {
		if v != "" {
			want[k] = v
		} else {
			absent = append(absent, k)
		}
	}
	if err := w.addTags(want); err != nil {
		return nil, fmt.Errorf("select devices: %w", err)
	}
	if len(absent) > 0 {
		slices.Sort(absent)
		js, err := json.Marshal(absent)
		if err != nil {
			return nil, fmt.Errorf("select devices: %w", err)
		}
		w.add(`NOT EXISTS (SELECT 1 FROM json_each(devices.tags) AS have
			WHERE have.value != '' AND have.key IN (SELECT value FROM json_each(?)))`, string(js))
	}
	if len(sel.Devices) > 0 {
		ids, err := json.Marshal(sel.Devices)
		if err != nil {
			return nil, fmt.Errorf("select devices: %w", err)
		}
		w.add("id IN (SELECT value FROM json_each(?))", string(ids))
	}
	rows, err := db.QueryContext(ctx, `SELECT id, model, version, online, image FROM devices`+w.String()+` ORDER BY id`, w.args...)
	if err != nil {
		return nil, fmt.Errorf("select devices: %w", err)
	}
	defer rows.Close()
	var out []fleet.Device
	inRange := map[string]bool{}
	for rows.Next() {
		var d fleet.Device
		if err := rows.Scan(&d.ID, &d.Model, &d.Version, &d.Online, &d.Image); err != nil {
			return nil, fmt.Errorf("select devices: %w", err)
		}
		if rng != nil {
			ok, seen := inRange[d.Version]
			if !seen {
				ok = rng.Match(fleet.Device{Version: d.Version})
				inRange[d.Version] = ok
			}
			if !ok {
				continue
			}
		}
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("select devices: %w", err)
	}
	return out, nil
}

// --- updates ---

const updateCols = `id, firmware_id, selector, policy, state, created_at, started_at, finished_at, created_by`

func scanUpdate(sc scanner) (fleet.Update, error) {
	var u fleet.Update
	var sel, pol, state, created string
	var started, finished sql.NullString
	if err := sc.Scan(&u.ID, &u.FirmwareID, &sel, &pol, &state, &created, &started, &finished, &u.CreatedBy); err != nil {
		return fleet.Update{}, err
	}
	u.State = fleet.UpdateState(state)
	if err := json.Unmarshal([]byte(sel), &u.Selector); err != nil {
		return fleet.Update{}, fmt.Errorf("update %s selector: %w", u.ID, err)
	}
	if err := json.Unmarshal([]byte(pol), &u.Policy); err != nil {
		return fleet.Update{}, fmt.Errorf("update %s policy: %w", u.ID, err)
	}
	var err error
	if u.CreatedAt, err = parseTime(created); err != nil {
		return fleet.Update{}, err
	}
	if u.StartedAt, err = parseTimePtr(started); err != nil {
		return fleet.Update{}, err
	}
	if u.FinishedAt, err = parseTimePtr(finished); err != nil {
		return fleet.Update{}, err
	}
	return u, nil
}

// Update returns the update with that ID, or fleet.ErrUpdateNotFound.
func (s *Store) Update(ctx context.Context, id string) (fleet.Update, error) {
	db, err := s.db()
	if err != nil {
		return fleet.Update{}, err
	}
	u, err := scanUpdate(db.QueryRowContext(ctx, `SELECT `+updateCols+` FROM updates WHERE id = ?`, id))
	if err != nil {
		return fleet.Update{}, fmt.Errorf("update %s: %w", id, notFound(err, fleet.ErrUpdateNotFound, id))
	}
	return u, nil
}

// UpdateCounters returns an update's stored transfer totals.
func (s *Store) UpdateCounters(ctx context.Context, id string) (Counters, error) {
	db, err := s.db()
	if err != nil {
		return Counters{}, err
	}
	var c Counters
	err = db.QueryRowContext(ctx, `SELECT bytes_sent, bytes_acked, resends FROM updates WHERE id = ?`, id).
		Scan(&c.BytesSent, &c.BytesAcked, &c.Resends)
	if err != nil {
		return Counters{}, fmt.Errorf("update %s counters: %w", id, notFound(err, fleet.ErrUpdateNotFound, id))
	}
	return c, nil
}

// ListUpdates returns every update, newest first.
func (s *Store) ListUpdates(ctx context.Context) ([]fleet.Update, error) {
	return s.queryUpdates(ctx, `SELECT `+updateCols+` FROM updates ORDER BY created_at DESC, rowid DESC`)
}

// StoppingUpdates returns the cancelled and aborted updates that still have
// devices in a non-final state (installing when the update stopped, say),
// oldest first: the engine follows them to their end after a restart.
func (s *Store) StoppingUpdates(ctx context.Context) ([]fleet.Update, error) {
	return s.queryUpdates(ctx, `SELECT `+updateCols+` FROM updates u WHERE state IN (?, ?)
		AND EXISTS (SELECT 1 FROM progress p WHERE p.update_id = u.id AND p.state NOT IN (?, ?, ?, ?, ?))
		ORDER BY created_at, rowid`,
		string(fleet.UpdateCancelled), string(fleet.UpdateAborted),
		string(fleet.StateSucceeded), string(fleet.StateFailed), string(fleet.StateRejected),
		string(fleet.StateCancelled), string(fleet.StateSkipped))
}

// ActiveUpdates returns the scheduled, running and paused updates, oldest first.
func (s *Store) ActiveUpdates(ctx context.Context) ([]fleet.Update, error) {
	return s.queryUpdates(ctx, `SELECT `+updateCols+` FROM updates WHERE state IN (?, ?, ?) ORDER BY created_at, rowid`,
		string(fleet.UpdateScheduled), string(fleet.UpdateRunning), string(fleet.UpdatePaused))
}

func (s *Store) queryUpdates(ctx context.Context, query string, args ...any) ([]fleet.Update, error) {
	db, err := s.db()
	if err != nil {
		return nil, err
	}
	rows, err := db.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("list updates: %w", err)
	}
	return collect(rows, scanUpdate, "list updates")
}

// --- progress ---

// ProgressFilter narrows Progress. An empty State matches all; Limit <= 0
// means no limit. After pages by key, as DeviceFilter.After: only rows of
// devices with a larger ID.
type ProgressFilter struct {
	State  fleet.DeviceState
	After  string
	Limit  int
	Offset int
}

// ProgressRow is a progress row with the transfer handle the engine stored,
// so that it can resume transfers after a restart.
type ProgressRow struct {
	fleet.Progress
	Handle uint32 `json:"handle"`
}

const progressCols = `update_id, device_id, state, offset, attempts, reason, handle, started_at, finished_at, updated_at, encoding, payload_size, wire_bytes`

// scanProgressRow scans progressCols, then the columns after them into
// extra.
func scanProgressRow(sc scanner, extra ...any) (ProgressRow, error) {
	var r ProgressRow
	var state, reason, updated string
	var handle int64
	var started, finished sql.NullString
	if err := sc.Scan(append([]any{&r.UpdateID, &r.DeviceID, &state, &r.Offset, &r.Attempts, &reason, &handle,
		&started, &finished, &updated, &r.Encoding, &r.PayloadSize, &r.WireBytes}, extra...)...); err != nil {
		return ProgressRow{}, err
	}
	r.State = fleet.DeviceState(state)
	r.Reason = fleet.Reason(reason)
	r.Handle = uint32(handle)
	var err error
	if r.StartedAt, err = parseTimePtr(started); err != nil {
		return ProgressRow{}, err
	}
	if r.FinishedAt, err = parseTimePtr(finished); err != nil {
		return ProgressRow{}, err
	}
	if r.UpdatedAt, err = parseTime(updated); err != nil {
		return ProgressRow{}, err
	}
	return r, nil
}

func scanProgress(sc scanner) (fleet.Progress, error) {
	r, err := scanProgressRow(sc)
	return r.Progress, err
}

// Progress returns one page of an update's progress rows, ordered by device
// ID, and the number of rows matching f.
func (s *Store) Progress(ctx context.Context, updateID string, f ProgressFilter) ([]fleet.Progress, int, error) {
	db, err := s.db()
	if err != nil {
		return nil, 0, err
	}
	var w where
	w.add("update_id = ?", updateID)
	if f.State != "" {
		w.add("state = ?", string(f.State))
	}
	var total int
	if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM progress`+w.String(), w.args...).Scan(&total); err != nil {
		return nil, 0, fmt.Errorf("count progress: %w", err)
	}
	if f.After != "" {
		w.add("device_id > ?", f.After)
	}
	rows, err := db.QueryContext(ctx, `SELECT `+progressCols+` FROM progress`+w.String()+` ORDER BY device_id`+
		limitClause(f.Limit, f.Offset), w.args...)
	if err != nil {
		return nil, 0, fmt.Errorf("list progress: %w", err)
	}
	ps, err := collect(rows, scanProgress, "list progress")
	if err != nil {
		return nil, 0, err
	}
	return ps, total, nil
}

// AllProgress returns every progress row of an update with its handle,
// ordered by device ID.
func (s *Store) AllProgress(ctx context.Context, updateID string) ([]ProgressRow, error) {
	db, err := s.db()
	if err != nil {
		return nil, err
	}
	rows, err := db.QueryContext(ctx, `SELECT `+progressCols+` FROM progress WHERE update_id = ? ORDER BY device_id`, updateID)
	if err != nil {
		return nil, fmt.Errorf("all progress: %w", err)
	}
	return collect(rows, func(sc scanner) (ProgressRow, error) { return scanProgressRow(sc) }, "all progress")
}

// CountProgress returns how many of an update's devices are in each state;
// states with no device are absent.
func (s *Store) CountProgress(ctx context.Context, updateID string) (map[fleet.DeviceState]int, error) {
	db, err := s.db()
	if err != nil {
		return nil, err
	}
	rows, err := db.QueryContext(ctx, `SELECT state, COUNT(*) FROM progress WHERE update_id = ? GROUP BY state`, updateID)
	if err != nil {
		return nil, fmt.Errorf("count progress: %w", err)
	}
	defer rows.Close()
	counts := map[fleet.DeviceState]int{}
	for rows.Next() {
		var st string
		var n int
		if err := rows.Scan(&st, &n); err != nil {
			return nil, fmt.Errorf("count progress: %w", err)
		}
		counts[fleet.DeviceState(st)] = n
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("count progress: %w", err)
	}
	return counts, nil
}

// --- events ---

const eventCols = `seq, time, type, update_id, device_id, from_state, state, reason, offset, attempt, phase`

func scanEvent(sc scanner) (fleet.Event, error) {
	var e fleet.Event
	var t, reason string
	if err := sc.Scan(&e.Seq, &t, &e.Type, &e.UpdateID, &e.DeviceID, &e.From, &e.State, &reason,
		&e.Offset, &e.Attempt, &e.Phase); err != nil {
		return fleet.Event{}, err
	}
	e.Reason = fleet.Reason(reason)
	var err error
	if e.Time, err = parseTime(t); err != nil {
		return fleet.Event{}, err
	}
	return e, nil
}

// Events returns up to limit events with a sequence number above afterSeq,
// in ascending order; updateID "" means events of every update (and those of
// none). limit <= 0 means no limit.
func (s *Store) Events(ctx context.Context, updateID string, afterSeq int64, limit int) ([]fleet.Event, error) {
	return s.FilteredEvents(ctx, updateID, EventFilter{}, afterSeq, limit)
}

// MaxEventSeq returns the highest event sequence number given out: the
// largest stored one, or the retention watermark when retention pruned every
// event (0 for a log that never held one). The engine continues numbering
// from it after a restart.
func (s *Store) MaxEventSeq(ctx context.Context) (int64, error) {
	db, err := s.db()
	if err != nil {
		return 0, err
	}
	var seq int64
	if err := db.QueryRowContext(ctx, `SELECT MAX(COALESCE((SELECT MAX(seq) FROM events), 0), pruned_through) FROM event_log`).Scan(&seq); err != nil {
		return 0, fmt.Errorf("max event seq: %w", err)
	}
	return seq, nil
}
