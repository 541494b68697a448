package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"strings"

	"github.com/flotaio/flota/internal/fleet"
)

// targetsPerInsert is the number of progress rows one INSERT of
// insertTargets carries: 13 parameters each, well under SQLite's 32,766,
// and enough that a 100,000-device update costs 1,000 statement executions
// instead of 100,000 (BenchmarkStore_CreateUpdate100k).
const targetsPerInsert = 200

// progressParams is the number of parameters of one progress row.
const progressParams = 13

// insertTargetsSQL returns sqlUpsertProgress with n rows of values.
func insertTargetsSQL(n int) string {
	row := "(" + strings.TrimSuffix(strings.Repeat("?, ", progressParams), ", ") + ")"
	values := strings.TrimSuffix(strings.Repeat(row+", ", n), ", ")
	i := strings.Index(sqlUpsertProgress, "VALUES")
	j := strings.Index(sqlUpsertProgress, "ON CONFLICT")
	return sqlUpsertProgress[:i] + "VALUES " + values + "\n\t\t" + sqlUpsertProgress[j:]
}

// insertTargets stores one progress row per target of u, with handle 0, in
// tx, many rows per statement. A target's zero UpdatedAt means u.CreatedAt.
func insertTargets(ctx context.Context, tx *sql.Tx, u fleet.Update, targets []fleet.Progress) error {
	var full *sql.Stmt
	defer func() {
		if full != nil {
			full.Close()
		}
	}()
	args := make([]any, 0, targetsPerInsert*progressParams)
	for start := 0; start < len(targets); start += targetsPerInsert {
		chunk := targets[start:min(start+targetsPerInsert, len(targets))]
		args = args[:0]
		for _, p := range chunk {
			updated := p.UpdatedAt
			if updated.IsZero() {
				updated = u.CreatedAt
			}
			args = append(args, u.ID, p.DeviceID, string(p.State), p.Offset, p.Attempts, string(p.Reason), int64(0),
				fmtTimePtr(p.StartedAt), fmtTimePtr(p.FinishedAt), fmtTime(updated), p.Encoding, p.PayloadSize, p.WireBytes)
		}
		var err error
		if len(chunk) == targetsPerInsert {
			if full == nil {
				if full, err = tx.PrepareContext(ctx, insertTargetsSQL(targetsPerInsert)); err != nil {
					return fmt.Errorf("prepare targets: %w", err)
				}
			}
			_, err = full.ExecContext(ctx, args...)
		} else {
			_, err = tx.ExecContext(ctx, insertTargetsSQL(len(chunk)), args...)
		}
		if err != nil {
			return fmt.Errorf("targets %s..%s: %w", chunk[0].DeviceID, chunk[len(chunk)-1].DeviceID, err)
		}
	}
	return nil
}
