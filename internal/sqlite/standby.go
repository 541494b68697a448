package sqlite

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// A standby orchestrator runs on a copy of this store (docs/DEPLOY.md,
// "Standby and failover"):
//
//   - Litestream replicates the database from its WAL. It must be the only
//     one to checkpoint the WAL: it holds a read transaction open so that
//     it sees every frame before SQLite copies them into the database, and
//     a checkpoint it did not run makes it start a new snapshot.
//     NoAutoCheckpoint turns the writer's automatic checkpoints off (the
//     read pool never writes, so never checkpoints).
//   - Litestream copies nothing but the database. Firmware images are
//     immutable and named by their SHA-256, so a plain directory is their
//     replica: with FirmwareReplica, AddFirmware writes each image there
//     before its row commits, so that a replicated row never names an image
//     the replica lacks; and Open copies from there every image the
//     database names that the data directory lacks (a standby restored
//     from the replicas), then reports the ones found nowhere.
//   - The claims table numbers the orchestrators that served the database
//     at an external broker (Claim); the broker fences all but the newest
//     (mqttclient).

// MissingFirmware is a firmware image the database names but that neither
// the data directory nor the firmware replica holds.
type MissingFirmware struct {
	SHA256     string   `json:"sha256"`
	Firmware   []string `json:"firmware"` // IDs of the firmware rows with that image
	Unfinished []string `json:"updates"`  // updates not yet ended that need it
}

// MissingFirmware returns the images found missing by Open.
func (s *Store) MissingFirmware() []MissingFirmware {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.missing
}

// syncFirmwareReplica makes the data directory and FirmwareReplica hold
// every image the database names, copying each from whichever has it, and
// records (and logs) the images neither has. It runs in Open, before the
// engine loads an update.
func (s *Store) syncFirmwareReplica(ctx context.Context) error {
	rows, err := s.writer.QueryContext(ctx, `SELECT f.sha256, f.id, COALESCE(GROUP_CONCAT(u.id), '')
		FROM firmware f LEFT JOIN updates u ON u.firmware_id = f.id
			AND u.state NOT IN ('completed', 'failed', 'cancelled')
		WHERE f.sha256 != '' -- a firmware still fetching has no image yet
		GROUP BY f.id ORDER BY f.sha256, f.id`)
	if err != nil {
		return fmt.Errorf("list firmware images: %w", err)
	}
	var missing []MissingFirmware
	var fetched int
	check := func(sum, id, updates string) error {
		if n := len(missing); n > 0 && missing[n-1].SHA256 == sum {
			missing[n-1].Firmware = append(missing[n-1].Firmware, id)
			missing[n-1].Unfinished = appendSplit(missing[n-1].Unfinished, updates)
			return nil
		}
		local := s.FirmwarePath(sum)
		_, lerr := os.Stat(local)
		if lerr != nil && !errors.Is(lerr, fs.ErrNotExist) {
			return lerr
		}
		if s.FirmwareReplica == "" {
			if lerr != nil {
				missing = append(missing, MissingFirmware{SHA256: sum, Firmware: []string{id}, Unfinished: appendSplit(nil, updates)})
			}
			return nil
		}
		remote := filepath.Join(s.FirmwareReplica, sum)
		_, rerr := os.Stat(remote)
		if rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
			return fmt.Errorf("firmware replica: %w", rerr)
		}
		switch {
		case lerr == nil && rerr == nil:
		case lerr == nil:
			return copyImage(local, remote, sum) // a replica added after the image
		case rerr == nil:
			fetched++
			return copyImage(remote, local, sum)
		default:
			missing = append(missing, MissingFirmware{SHA256: sum, Firmware: []string{id}, Unfinished: appendSplit(nil, updates)})
		}
		return nil
	}
	err = func() error {
		defer rows.Close()
		for rows.Next() {
			var sum, id, updates string
			if err := rows.Scan(&sum, &id, &updates); err != nil {
				return err
			}
			if err := check(sum, id, updates); err != nil {
				return fmt.Errorf("firmware %s: %w", id, err)
			}
		}
		return rows.Err()
	}()
	if err != nil {
		return err
	}
	if fetched > 0 {
		s.Logger.Info("firmware images fetched from the replica", "images", fetched, "replica", s.FirmwareReplica)
	}
	for _, m := range missing {
		s.Logger.Error("firmware image missing: updates that use it stay paused until it is copied to the firmware directory and they are resumed",
			"sha256", m.SHA256, "firmware", strings.Join(m.Firmware, ","), "updates", strings.Join(m.Unfinished, ","),
			"copy_to", s.FirmwarePath(m.SHA256), "replica", s.FirmwareReplica)
	}
	s.missing = missing
	return nil
}

func appendSplit(list []string, csv string) []string {
	if csv == "" {
		return list
	}
	return append(list, strings.Split(csv, ",")...)
}

// replicateFirmware writes the image at src, of SHA-256 sum, to
// FirmwareReplica under sum, if set
// and not there yet.
func (s *Store) replicateFirmware(src, sum string) error {
	if s.FirmwareReplica == "" {
		return nil
	}
	remote := filepath.Join(s.FirmwareReplica, sum)
	if _, err := os.Stat(remote); err == nil {
		return nil
	}
	if err := copyImage(src, remote, sum); err != nil {
		return fmt.Errorf("firmware replica: %w", err)
	}
	return nil
}

// copyImage copies the image src to dst through a synced temporary file
// renamed into place, and refuses a copy whose SHA-256 is not sum: a
// damaged image is never published under its name.
func copyImage(src, dst, sum string) (err error) {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	dir := filepath.Dir(dst)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	out, err := os.CreateTemp(dir, tempPrefix+"*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			out.Close() //nolint:errcheck // already failing
			os.Remove(out.Name())
		}
	}()
	h := sha256.New()
	if _, err = io.Copy(io.MultiWriter(out, h), in); err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sum {
		return fmt.Errorf("copy %s: its SHA-256 is %s, not %s", src, got, sum)
	}
	if err = out.Chmod(0o644); err != nil {
		return err
	}
	if err = out.Sync(); err != nil {
		return err
	}
	if err = out.Close(); err != nil {
		return err
	}
	if err = os.Rename(out.Name(), dst); err != nil {
		return err
	}
	return syncDir(dir)
}

// syncDir makes a rename in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	return errors.Join(d.Sync(), d.Close())
}

// Claim records a new start of an orchestrator instance on this database
// and returns its epoch: one more than the last one recorded. The row is
// committed before Claim returns, so that Litestream replicates it.
func (s *Store) Claim(ctx context.Context, instance string) (int64, error) {
	var epoch int64
	err := s.doSync(ctx, func() error {
		err := s.writer.QueryRowContext(ctx, `INSERT INTO claims (epoch, instance, claimed_at)
			SELECT COALESCE(MAX(epoch), 0) + 1, ?, ? FROM claims RETURNING epoch`,
			instance, fmtTime(time.Now())).Scan(&epoch)
		if err == nil {
			s.stats.transactions.Add(1)
			s.stats.rows.Add(1)
		}
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("claim: %w", err)
	}
	return epoch, nil
}
