package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"

	"github.com/flotaio/flota/internal/fleet"
)

// PayloadDir is the directory under DataDir that holds the payload files
// (compressed images and deltas), named by the builder.
const PayloadDir = "payloads"

// migrationPayloads adds what the payload builder and the engine keep:
// the image and capabilities of a device's last hello, the payload of each
// device's current attempt (a resume after a restart sends the same one)
// and the bytes it was sent, and one row per encoded copy of an image.
// base_id is NULL for a compressed copy; a delta goes with its base as
// with its target.
const migrationPayloads = `ALTER TABLE devices ADD COLUMN image TEXT NOT NULL DEFAULT '';
	ALTER TABLE devices ADD COLUMN caps TEXT NOT NULL DEFAULT ''; -- comma-separated
	ALTER TABLE progress ADD COLUMN encoding TEXT NOT NULL DEFAULT '';
	ALTER TABLE progress ADD COLUMN payload_size INTEGER NOT NULL DEFAULT 0;
	ALTER TABLE progress ADD COLUMN wire_bytes INTEGER NOT NULL DEFAULT 0;
	CREATE TABLE payloads (
		firmware_id TEXT NOT NULL REFERENCES firmware(id) ON DELETE CASCADE,
		encoding    TEXT NOT NULL,
		base_id     TEXT REFERENCES firmware(id) ON DELETE CASCADE,
		size        INTEGER NOT NULL DEFAULT 0,
		sha256      TEXT NOT NULL DEFAULT '',
		state       TEXT NOT NULL,
		error       TEXT NOT NULL DEFAULT '',
		path        TEXT NOT NULL DEFAULT '', -- relative to the data directory
		created_at  TEXT NOT NULL
	);
	CREATE UNIQUE INDEX payloads_key ON payloads(firmware_id, encoding, ifnull(base_id, ''));
	CREATE INDEX payloads_state ON payloads(state, created_at);
	CREATE INDEX payloads_base ON payloads(base_id);`

// payloadCols are the columns scanPayload reads, from payloads p left
// joined with the base firmware b.
const payloadCols = `p.firmware_id, p.encoding, ifnull(p.base_id, ''), ifnull(b.version, ''), ifnull(b.sha256, ''),
	p.size, p.sha256, p.state, p.error, p.path, p.created_at`

const payloadFrom = ` FROM payloads p LEFT JOIN firmware b ON b.id = p.base_id`

func scanPayload(sc interface{ Scan(...any) error }) (fleet.Payload, error) {
	var p fleet.Payload
	var created string
	if err := sc.Scan(&p.FirmwareID, &p.Encoding, &p.Base, &p.BaseVersion, &p.BaseSHA256,
		&p.Size, &p.SHA256, &p.State, &p.Error, &p.Path, &created); err != nil {
		return fleet.Payload{}, err
	}
	var err error
	if p.CreatedAt, err = parseTime(created); err != nil {
		return fleet.Payload{}, err
	}
	return p, nil
}

// nullable maps "" to NULL.
func nullable(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// AddPayloads records payloads to build, state pending, and returns how
// many were new: one already recorded (in any state) is left as it is.
func (s *Store) AddPayloads(ctx context.Context, ps []fleet.Payload) (int, error) {
	n := 0
	err := s.doSync(ctx, func() error {
		tx, err := s.writer.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		defer rollback(tx) //nolint:errcheck // no-op after Commit
		n = 0
		for _, p := range ps {
			res, err := tx.ExecContext(ctx, `INSERT INTO payloads (firmware_id, encoding, base_id, state, created_at)
				VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`,
				p.FirmwareID, p.Encoding, nullable(p.Base), fleet.PayloadPending, fmtTime(p.CreatedAt))
			if err != nil {
				return fmt.Errorf("add payload %s/%s: %w", p.FirmwareID, p.Encoding, err)
			}
			if c, _ := res.RowsAffected(); c > 0 {
				n++
			}
		}
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("commit: %w", err)
		}
		s.stats.transactions.Add(1)
		s.stats.rows.Add(int64(n))
		return nil
	})
	return n, err
}

// FinishPayload records the outcome of a build: p's State, Size, SHA256,
// Error and Path. It returns fleet.ErrFirmwareNotFound when the payload's
// row is gone (its firmware or base was deleted meanwhile): the caller
// removes the file it wrote.
func (s *Store) FinishPayload(ctx context.Context, p fleet.Payload) error {
	return s.doSync(ctx, func() error {
		res, err := s.writer.ExecContext(ctx, `UPDATE payloads SET state = ?, size = ?, sha256 = ?, error = ?, path = ?
			WHERE firmware_id = ? AND encoding = ? AND ifnull(base_id, '') = ?`,
			p.State, p.Size, p.SHA256, p.Error, p.Path, p.FirmwareID, p.Encoding, p.Base)
		if err != nil {
			return fmt.Errorf("finish payload %s/%s: %w", p.FirmwareID, p.Encoding, err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fleet.Errorf(fleet.ErrFirmwareNotFound, "payload %s/%s from %q", p.FirmwareID, p.Encoding, p.Base)
		}
		s.stats.transactions.Add(1)
		s.stats.rows.Add(1)
		return nil
	})
}

// Payloads returns a firmware's payloads, compressed first, then deltas
// from the newest base.
func (s *Store) Payloads(ctx context.Context, firmwareID string) ([]fleet.Payload, error) {
	db, err := s.db()
	if err != nil {
		return nil, err
	}
	rows, err := db.QueryContext(ctx, `SELECT `+payloadCols+payloadFrom+` WHERE p.firmware_id = ?
		ORDER BY p.base_id IS NOT NULL, b.created_at DESC, p.encoding`, firmwareID)
	if err != nil {
		return nil, fmt.Errorf("payloads: %w", err)
	}
	return collect(rows, scanPayload, "payloads")
}

// AllPayloads returns every payload by firmware ID, for firmware lists.
func (s *Store) AllPayloads(ctx context.Context) (map[string][]fleet.Payload, error) {
	db, err := s.db()
	if err != nil {
		return nil, err
	}
	rows, err := db.QueryContext(ctx, `SELECT `+payloadCols+payloadFrom+`
		ORDER BY p.firmware_id, p.base_id IS NOT NULL, b.created_at DESC, p.encoding`)
	if err != nil {
		return nil, fmt.Errorf("all payloads: %w", err)
	}
	ps, err := collect(rows, scanPayload, "all payloads")
	if err != nil {
		return nil, err
	}
	out := map[string][]fleet.Payload{}
	for _, p := range ps {
		out[p.FirmwareID] = append(out[p.FirmwareID], p)
	}
	return out, nil
}

// PendingPayloads returns up to limit payloads waiting to be built, oldest
// first, and how many wait in all.
func (s *Store) PendingPayloads(ctx context.Context, limit int) ([]fleet.Payload, int, error) {
	db, err := s.db()
	if err != nil {
		return nil, 0, err
	}
	var total int
	if err := db.QueryRowContext(ctx, `SELECT count(*) FROM payloads WHERE state = ?`, fleet.PayloadPending).Scan(&total); err != nil {
		return nil, 0, fmt.Errorf("count pending payloads: %w", err)
	}
	rows, err := db.QueryContext(ctx, `SELECT `+payloadCols+payloadFrom+` WHERE p.state = ?
		ORDER BY p.created_at, p.firmware_id, p.base_id IS NOT NULL LIMIT ?`, fleet.PayloadPending, limit)
	if err != nil {
		return nil, 0, fmt.Errorf("pending payloads: %w", err)
	}
	ps, err := collect(rows, scanPayload, "pending payloads")
	return ps, total, err
}

// PayloadPaths returns the files the payload rows name, relative to the
// data directory.
func (s *Store) PayloadPaths(ctx context.Context) (map[string]bool, error) {
	db, err := s.db()
	if err != nil {
		return nil, err
	}
	rows, err := db.QueryContext(ctx, `SELECT path FROM payloads WHERE path != ''`)
	if err != nil {
		return nil, fmt.Errorf("payload paths: %w", err)
	}
	paths, err := collect(rows, scanString, "payload paths")
	if err != nil {
		return nil, err
	}
	out := make(map[string]bool, len(paths))
	for _, p := range paths {
		out[p] = true
	}
	return out, nil
}

// FirmwareFamily returns the firmware with that name and model, newest
// first: the candidates for a delta's base. A firmware still being
// fetched has no image yet and is left out.
func (s *Store) FirmwareFamily(ctx context.Context, name, model string) ([]fleet.Firmware, error) {
	db, err := s.db()
	if err != nil {
		return nil, err
	}
	rows, err := db.QueryContext(ctx, `SELECT `+firmwareCols+` FROM firmware WHERE name = ? AND model = ?
		AND sha256 != '' ORDER BY created_at DESC, id`, name, model)
	if err != nil {
		return nil, fmt.Errorf("firmware family: %w", err)
	}
	return collect(rows, scanFirmware, "firmware family")
}

// payloadFilesOf returns the payload files of firmware id, as target or as
// base, in tx.
func payloadFilesOf(ctx context.Context, tx *sql.Tx, id string) ([]string, error) {
	rows, err := tx.QueryContext(ctx, `SELECT path FROM payloads WHERE (firmware_id = ? OR base_id = ?) AND path != ''`, id, id)
	if err != nil {
		return nil, err
	}
	return collect(rows, scanString, "payload files")
}

// scanString scans a row of one text column.
func scanString(sc interface{ Scan(...any) error }) (string, error) {
	var s string
	return s, sc.Scan(&s)
}

// removePayloadFiles removes payload files named relative to the data
// directory; one already gone is no error.
func (s *Store) removePayloadFiles(paths []string) error {
	var errs []error
	for _, p := range slices.Compact(slices.Sorted(slices.Values(paths))) {
		if err := os.Remove(filepath.Join(s.DataDir, p)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// OnFirmwareAdded sets fn to be called with each new firmware once its row
// committed, however it was added (upload, fetch): the payload builder
// starts its compressed copy and deltas. fn must not block for long; nil
// removes it.
func (s *Store) OnFirmwareAdded(fn func(fleet.Firmware)) {
	if fn == nil {
		s.firmwareAdded.Store(nil)
		return
	}
	s.firmwareAdded.Store(&fn)
}

// CountEncodings returns how many of an update's devices were sent each
// payload encoding in their current attempt (devices never offered are
// not counted).
func (s *Store) CountEncodings(ctx context.Context, updateID string) (map[string]int, error) {
	db, err := s.db()
	if err != nil {
		return nil, err
	}
	rows, err := db.QueryContext(ctx, `SELECT encoding, count(*) FROM progress WHERE update_id = ? AND encoding != '' GROUP BY encoding`, updateID)
	if err != nil {
		return nil, fmt.Errorf("count encodings: %w", err)
	}
	defer rows.Close()
	var out map[string]int
	for rows.Next() {
		var enc string
		var n int
		if err := rows.Scan(&enc, &n); err != nil {
			return nil, fmt.Errorf("count encodings: %w", err)
		}
		if out == nil {
			out = map[string]int{}
		}
		out[enc] = n
	}
	return out, rows.Err()
}
