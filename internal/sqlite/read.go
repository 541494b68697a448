package sqlite

import (
	"context"
	"fmt"
)

// FleetSummary counts the registered devices: online and offline, and per
// model and version.
type FleetSummary struct {
	Total    int            `json:"total"`
	Online   int            `json:"online"`
	Offline  int            `json:"offline"`
	Versions []VersionCount `json:"versions"` // by model, then version
}

// VersionCount is the number of devices of one model running one version.
type VersionCount struct {
	Model   string `json:"model"`
	Version string `json:"version"`
	Devices int    `json:"devices"`
	Online  int    `json:"online"`
}

// MaxSummaryVersions bounds the model and version pairs FleetSummary returns.
const MaxSummaryVersions = 1000

// FleetSummary aggregates the devices table in SQL: one row per model and
// version (at most MaxSummaryVersions), whatever the size of the fleet.
func (s *Store) FleetSummary(ctx context.Context) (FleetSummary, error) {
	db, err := s.db()
	if err != nil {
		return FleetSummary{}, err
	}
	var out FleetSummary
	if err := db.QueryRowContext(ctx, `SELECT COUNT(*), COALESCE(SUM(online != 0), 0) FROM devices`).
		Scan(&out.Total, &out.Online); err != nil {
		return FleetSummary{}, fmt.Errorf("count devices: %w", err)
	}
	out.Offline = out.Total - out.Online
	rows, err := db.QueryContext(ctx, `SELECT model, version, COUNT(*), SUM(online != 0) FROM devices
		GROUP BY model, version ORDER BY model, version LIMIT ?`, MaxSummaryVersions)
	if err != nil {
		return FleetSummary{}, fmt.Errorf("device versions: %w", err)
	}
	out.Versions, err = collect(rows, func(sc interface{ Scan(...any) error }) (VersionCount, error) {
		var v VersionCount
		err := sc.Scan(&v.Model, &v.Version, &v.Devices, &v.Online)
		return v, err
	}, "device versions")
	if err != nil {
		return FleetSummary{}, err
	}
	if out.Versions == nil {
		out.Versions = []VersionCount{}
	}
	return out, nil
}

// Wait returns when every write queued before it is committed, so that a
// read after it sees them. Unlike Flush it leaves a write error for Flush to
// report.
func (s *Store) Wait(ctx context.Context) error {
	return s.doSync(ctx, func() error { return nil })
}
