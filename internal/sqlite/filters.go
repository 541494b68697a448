package sqlite

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/flotaio/flota/internal/fleet"
)

// EventFilter narrows an update's event log: to one device's events, to
// one event type, or both. The zero value is every event.
type EventFilter struct {
	Device string
	Type   string
}

// FilteredEvents is Events narrowed by f.
func (s *Store) FilteredEvents(ctx context.Context, updateID string, f EventFilter, afterSeq int64, limit int) ([]fleet.Event, error) {
	db, err := s.db()
	if err != nil {
		return nil, err
	}
	var w where
	if updateID != "" {
		w.add("update_id = ?", updateID)
	}
	if f.Device != "" {
		w.add("device_id = ?", f.Device)
	}
	if f.Type != "" {
		w.add("type = ?", f.Type)
	}
	w.add("seq > ?", afterSeq)
	rows, err := db.QueryContext(ctx, `SELECT `+eventCols+` FROM events`+w.String()+` ORDER BY seq`+
		limitClause(limit, 0), w.args...)
	if err != nil {
		return nil, fmt.Errorf("events: %w", err)
	}
	return collect(rows, scanEvent, "events")
}

// addTags narrows w to devices that have every tag of tags with its value.
// A device's tags have distinct keys: it matches when as many of them as
// are wanted are wanted pairs. The IN list does not depend on the device:
// SQLite builds its index once per query, and each device's tags are
// looked up in it.
func (w *where) addTags(tags map[string]string) error {
	if len(tags) == 0 {
		return nil
	}
	js, err := json.Marshal(tags)
	if err != nil {
		return err
	}
	w.add(`(SELECT count(*) FROM json_each(devices.tags) AS have
		WHERE (have.key, have.value) IN (SELECT key, value FROM json_each(?))) = ?`, string(js), len(tags))
	return nil
}
