package sqlite

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/flotaio/flota/internal/fleet"
)

// An update may be created on a firmware the orchestrator is still
// fetching. updates.firmware_id must name a firmware row, so the fetch's
// firmware gets one at once, pending: fetch names the job, size is 0 and
// sha256 ''. FillPendingFirmware completes it in place when the fetch
// ends well, so that the update keeps the same firmware ID. A fetch that
// fails leaves the row pending, referred to by the updates that ended on
// it (DeletePendingFirmware removes it when none does). Pending rows are
// not listed, backed up or looked for on disk: they have no image.

// AddPendingFirmware stores a firmware row for the image fetch job fetchID
// will bring, with meta's name, version, model, signature and downgrade
// permission.
func (s *Store) AddPendingFirmware(ctx context.Context, meta fleet.Firmware, fetchID string) (fleet.Firmware, error) {
	if strings.TrimSpace(meta.Version) == "" || fetchID == "" {
		return fleet.Firmware{}, fleet.Errorf(fleet.ErrInvalidInput, "a pending firmware needs a version and a fetch")
	}
	fw := fleet.Firmware{ID: fleet.NewID("fw"), Name: cmp.Or(meta.Name, "firmware"), Version: meta.Version, Model: meta.Model,
		AllowDowngrade: meta.AllowDowngrade, Signature: meta.Signature, CreatedAt: time.Now().UTC(), Fetch: fetchID}
	err := s.doSync(ctx, func() error {
		_, err := s.writer.ExecContext(ctx, `INSERT INTO firmware (id, name, version, model, size, sha256, created_at, signature, allow_downgrade, fetch)
			VALUES (?, ?, ?, ?, 0, '', ?, ?, ?, ?)`, fw.ID, fw.Name, fw.Version, fw.Model, fmtTime(fw.CreatedAt), fw.Signature, fw.AllowDowngrade, fetchID)
		if err == nil {
			s.stats.transactions.Add(1)
			s.stats.rows.Add(1)
		}
		return err
	})
	if err != nil {
		return fleet.Firmware{}, fmt.Errorf("add pending firmware: %w", err)
	}
	return fw, nil
}

// FillPendingFirmware stores the image read from r as the pending firmware
// id, as AddFirmwareVerified stores an upload (verify sees the firmware
// with its size and SHA-256 first), and returns it complete.
func (s *Store) FillPendingFirmware(ctx context.Context, id string, r io.Reader, verify func(fleet.Firmware) error) (fleet.Firmware, error) {
	meta, err := s.Firmware(ctx, id)
	if err != nil {
		return fleet.Firmware{}, err
	}
	fw, _, err := s.addFirmware(ctx, meta, r, verify, id)
	return fw, err
}

// DeletePendingFirmware removes the pending firmware id unless an update
// refers to it.
func (s *Store) DeletePendingFirmware(ctx context.Context, id string) error {
	return s.doSync(ctx, func() error {
		_, err := s.writer.ExecContext(ctx, `DELETE FROM firmware WHERE id = ? AND fetch != ''
			AND NOT EXISTS (SELECT 1 FROM updates WHERE firmware_id = ?)`, id, id)
		return err
	})
}
