package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"github.com/flotaio/flota/internal/fleet"
)

// RegisterDevices registers devices an operator created accounts for, with
// a model and tags, before they ever connect: they are selectable by
// updates at once, and their last_seen stays empty (never seen) until their
// first hello. A device registered already keeps what it reported and only
// takes the new model and tags.
func (s *Store) RegisterDevices(ctx context.Context, ids []string, model string, tags map[string]string) error {
	js, err := marshalTags(tags)
	if err != nil {
		return err
	}
	now := fmtTime(time.Now())
	return s.doSync(ctx, func() error {
		tx, err := s.writer.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		defer rollback(tx) //nolint:errcheck // no-op after Commit
		st, err := tx.PrepareContext(ctx, `INSERT INTO devices (id, model, version, tags, first_seen, last_seen, online)
			VALUES (?, ?, '', ?, ?, '', 0)
			ON CONFLICT(id) DO UPDATE SET model = excluded.model, tags = excluded.tags`)
		if err != nil {
			return err
		}
		defer st.Close()
		for _, id := range ids {
			if _, err := st.ExecContext(ctx, id, model, js, now); err != nil {
				return fmt.Errorf("register device %s: %w", id, err)
			}
		}
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("commit: %w", err)
		}
		s.stats.transactions.Add(1)
		s.stats.rows.Add(int64(len(ids)))
		return nil
	})
}

// DeleteDevice removes a device and its MQTT account, so that its ID is
// free again. It is refused with fleet.ErrDeviceBusy while an active update
// may still change the device (a target not succeeded, rejected, skipped
// or cancelled). The device's progress rows and events stay: an update's
// history keeps every device it had.
func (s *Store) DeleteDevice(ctx context.Context, id string) error {
	return s.doSync(ctx, func() error {
		tx, err := s.writer.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		defer rollback(tx) //nolint:errcheck // no-op after Commit
		var one int
		devErr := tx.QueryRowContext(ctx, `SELECT 1 FROM devices WHERE id = ?`, id).Scan(&one)
		credErr := tx.QueryRowContext(ctx, `SELECT 1 FROM credentials WHERE id = ? AND role = ?`, id, string(fleet.RoleDevice)).Scan(&one)
		if errors.Is(devErr, sql.ErrNoRows) && errors.Is(credErr, sql.ErrNoRows) {
			return fleet.Errorf(fleet.ErrDeviceNotFound, "device %s", id)
		}
		for _, err := range []error{devErr, credErr} {
			if err != nil && !errors.Is(err, sql.ErrNoRows) {
				return err
			}
		}
		var upd, state string
		err = tx.QueryRowContext(ctx, `SELECT p.update_id, p.state FROM progress p JOIN updates u ON u.id = p.update_id
			WHERE p.device_id = ? AND u.state IN (?, ?, ?) AND p.state NOT IN (?, ?, ?, ?) LIMIT 1`,
			id, string(fleet.UpdateScheduled), string(fleet.UpdateRunning), string(fleet.UpdatePaused),
			string(fleet.StateSucceeded), string(fleet.StateRejected), string(fleet.StateSkipped), string(fleet.StateCancelled)).Scan(&upd, &state)
		switch {
		case err == nil:
			return fleet.Errorf(fleet.ErrDeviceBusy, "device %s is %s in update %s: cancel the update, or wait until it ends, then delete", id, state, upd)
		case !errors.Is(err, sql.ErrNoRows):
			return err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM devices WHERE id = ?`, id); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM credentials WHERE id = ? AND role = ?`, id, string(fleet.RoleDevice)); err != nil {
			return err
		}
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("commit: %w", err)
		}
		s.stats.transactions.Add(1)
		return nil
	})
}

// DeleteFirmware removes a firmware no update refers to, its payloads (as
// target and as base) with their files, and its image file unless another
// firmware has the same bytes. It is refused with
// fleet.ErrFirmwareInUse, naming an update, while any update (ended ones
// too: their history names it) refers to it.
func (s *Store) DeleteFirmware(ctx context.Context, id string) error {
	return s.doSync(ctx, func() error {
		tx, err := s.writer.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		defer rollback(tx) //nolint:errcheck // no-op after Commit
		fw, err := scanFirmware(tx.QueryRowContext(ctx, `SELECT `+firmwareCols+` FROM firmware WHERE id = ?`, id))
		if err != nil {
			return notFound(err, fleet.ErrFirmwareNotFound, id)
		}
		var n int
		var first string
		if err := tx.QueryRowContext(ctx, `SELECT count(*), COALESCE(min(id), '') FROM updates WHERE firmware_id = ?`, id).Scan(&n, &first); err != nil {
			return err
		}
		if n > 0 {
			return fleet.Errorf(fleet.ErrFirmwareInUse, "firmware %s is used by %d update(s), %s among them: it stays as long as an update refers to it", id, n, first)
		}
		payloads, err := payloadFilesOf(ctx, tx, id)
		if err != nil {
			return err
		}
		// Its payloads go with it, as target or as base (ON DELETE CASCADE).
		if _, err := tx.ExecContext(ctx, `DELETE FROM firmware WHERE id = ?`, id); err != nil {
			return err
		}
		var others int
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM firmware WHERE sha256 = ?`, fw.SHA256).Scan(&others); err != nil {
			return err
		}
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("commit: %w", err)
		}
		s.stats.transactions.Add(1)
		if err := s.removePayloadFiles(payloads); err != nil {
			return fmt.Errorf("firmware %s deleted, payload files stay: %w", id, err)
		}
		if others == 0 {
			if err := os.Remove(s.FirmwarePath(fw.SHA256)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("firmware %s deleted, its image file stays: %w", id, err)
			}
		}
		return nil
	})
}
