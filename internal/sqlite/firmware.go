package sqlite

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/flotaio/flota/internal/fleet"
)

// tempPrefix names partial uploads in the firmware directory; Open removes
// the ones a crash left behind.
const tempPrefix = ".upload-"

// AddFirmware stores the image read from r and a firmware row describing it.
// The image is streamed to a temporary file while its SHA-256 and size are
// computed, then renamed to DataDir/firmware/<sha256>; when an image with the
// same bytes is already stored the copy is dropped, so every image is stored
// once. meta's Name (default "firmware"), Version (required) and Model are
// kept, and so are its Signature and AllowDowngrade, unchecked; ID, Size,
// SHA256 and CreatedAt are set here.
func (s *Store) AddFirmware(ctx context.Context, meta fleet.Firmware, r io.Reader) (fleet.Firmware, error) {
	return s.AddFirmwareVerified(ctx, meta, r, nil)
}

// AddFirmwareVerified is AddFirmware that first calls verify, when not nil,
// with the firmware as it would be stored (Size and SHA256 of the bytes
// read): an error from verify keeps nothing, neither row nor image.
func (s *Store) AddFirmwareVerified(ctx context.Context, meta fleet.Firmware, r io.Reader, verify func(fleet.Firmware) error) (fleet.Firmware, error) {
	fw, _, err := s.AddFirmwareOnce(ctx, meta, r, verify)
	return fw, err
}

// AddFirmwareOnce is AddFirmwareVerified that stores the same image once
// per version and model: an upload whose bytes, version, model, signature
// and downgrade permission match a stored firmware returns that one, with
// created false (a script may upload again what it uploaded before). An
// unsigned upload of an image stored signed, same version and model, is
// refused with fleet.ErrFirmwareExists naming the signed one: an update
// could otherwise go out unsigned by mistake. A signed upload of an image
// stored unsigned is a new firmware.
func (s *Store) AddFirmwareOnce(ctx context.Context, meta fleet.Firmware, r io.Reader, verify func(fleet.Firmware) error) (fw fleet.Firmware, created bool, err error) {
	if strings.TrimSpace(meta.Version) == "" {
		return fleet.Firmware{}, false, fleet.Errorf(fleet.ErrInvalidInput, "firmware version is required")
	}
	if _, err := s.db(); err != nil {
		return fleet.Firmware{}, false, err
	}
	if meta.Name == "" {
		meta.Name = "firmware"
	}
	fw = fleet.Firmware{
		ID:             fleet.NewID("fw"),
		Name:           meta.Name,
		Version:        meta.Version,
		Model:          meta.Model,
		AllowDowngrade: meta.AllowDowngrade,
		Signature:      meta.Signature,
		CreatedAt:      time.Now().UTC(),
	}
	check := func(sum string, size int64) error {
		fw.SHA256, fw.Size = sum, size
		if verify == nil {
			return nil
		}
		return verify(fw)
	}
	tmp, err := s.storeBlob(ctx, r, check)
	if err != nil {
		return fleet.Firmware{}, false, fmt.Errorf("add firmware: %w", err)
	}
	// The image is moved into place on the writer, which also runs
	// DeleteFirmware: a delete of another firmware with these bytes either
	// removes the file before the move, or sees this row and keeps it.
	placed := false
	defer func() {
		if !placed {
			os.Remove(tmp)
		}
	}()
	if err := s.replicateFirmware(tmp, fw.SHA256); err != nil {
		return fleet.Firmware{}, false, fmt.Errorf("add firmware: %w", err)
	}
	if s.afterBlob != nil {
		s.afterBlob()
	}
	err = s.doSync(ctx, func() error {
		same, err := sameImage(ctx, s.writer, fw)
		if err != nil {
			return err
		}
		var reuse *fleet.Firmware
		for i, old := range same {
			if old.Signature == fw.Signature && old.AllowDowngrade == fw.AllowDowngrade {
				reuse = &same[i]
				break
			}
		}
		if reuse == nil {
			for _, old := range same {
				if old.Signature != "" && fw.Signature == "" {
					return fleet.Errorf(fleet.ErrFirmwareExists, "this image is stored signed as %s (version %s): use %s, or upload it with its signature", old.ID, old.Version, old.ID)
				}
			}
		}
		// Same bytes already stored: the move replaces them with themselves.
		if err := os.Rename(tmp, s.FirmwarePath(fw.SHA256)); err != nil {
			return err
		}
		placed = true
		if reuse != nil {
			fw = *reuse
			return nil
		}
		_, err = s.writer.ExecContext(ctx, sqlInsertFirmware, fw.ID, fw.Name, fw.Version, fw.Model,
			fw.Size, fw.SHA256, fmtTime(fw.CreatedAt), fw.Signature, fw.AllowDowngrade)
		if err == nil {
			created = true
			s.stats.transactions.Add(1)
			s.stats.rows.Add(1)
		}
		return err
	})
	if err != nil {
		return fleet.Firmware{}, false, fmt.Errorf("add firmware: %w", err)
	}
	if fn := s.firmwareAdded.Load(); fn != nil && created {
		(*fn)(fw)
	}
	return fw, created, nil
}

// sameImage returns the stored firmware with fw's bytes, version and model.
func sameImage(ctx context.Context, db *sql.DB, fw fleet.Firmware) ([]fleet.Firmware, error) {
	rows, err := db.QueryContext(ctx, `SELECT `+firmwareCols+` FROM firmware WHERE sha256 = ? AND version = ? AND model = ? ORDER BY created_at, id`,
		fw.SHA256, fw.Version, fw.Model)
	if err != nil {
		return nil, err
	}
	return collect(rows, scanFirmware, "same image")
}

// storeBlob copies r into a synced temporary file of the firmware
// directory and returns its path, after check accepted the hex digest and
// the size. The caller moves it to its SHA-256's name or removes it.
func (s *Store) storeBlob(ctx context.Context, r io.Reader, check func(sum string, size int64) error) (_ string, err error) {
	f, err := os.CreateTemp(filepath.Join(s.DataDir, FirmwareDir), tempPrefix+"*")
	if err != nil {
		return "", err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close() //nolint:errcheck // already failing
			os.Remove(tmp)
		}
	}()
	h := sha256.New()
	size, err := io.Copy(io.MultiWriter(f, h), ctxReader{ctx: ctx, r: r})
	if err != nil {
		return "", fmt.Errorf("copy image: %w", err)
	}
	if err = f.Chmod(0o644); err != nil {
		return "", err
	}
	if err = f.Sync(); err != nil {
		return "", err
	}
	if err = f.Close(); err != nil {
		return "", err
	}
	if err = check(hex.EncodeToString(h.Sum(nil)), size); err != nil {
		return "", err
	}
	return tmp, nil
}

// removeStaleUploads deletes partial uploads left by a crash.
func (s *Store) removeStaleUploads() error {
	dir := filepath.Join(s.DataDir, FirmwareDir)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), tempPrefix) {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
	return nil
}

// ctxReader stops a copy when ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

const firmwareCols = `id, name, version, model, size, sha256, created_at, signature, allow_downgrade`

func scanFirmware(sc interface{ Scan(...any) error }) (fleet.Firmware, error) {
	var fw fleet.Firmware
	var created string
	if err := sc.Scan(&fw.ID, &fw.Name, &fw.Version, &fw.Model, &fw.Size, &fw.SHA256, &created, &fw.Signature, &fw.AllowDowngrade); err != nil {
		return fleet.Firmware{}, err
	}
	var err error
	if fw.CreatedAt, err = parseTime(created); err != nil {
		return fleet.Firmware{}, err
	}
	return fw, nil
}

// Firmware returns the firmware with that ID, or fleet.ErrFirmwareNotFound.
func (s *Store) Firmware(ctx context.Context, id string) (fleet.Firmware, error) {
	db, err := s.db()
	if err != nil {
		return fleet.Firmware{}, err
	}
	fw, err := scanFirmware(db.QueryRowContext(ctx, `SELECT `+firmwareCols+` FROM firmware WHERE id = ?`, id))
	if err != nil {
		return fleet.Firmware{}, fmt.Errorf("firmware %s: %w", id, notFound(err, fleet.ErrFirmwareNotFound, id))
	}
	return fw, nil
}

// ListFirmware returns every firmware, newest first.
func (s *Store) ListFirmware(ctx context.Context) ([]fleet.Firmware, error) {
	db, err := s.db()
	if err != nil {
		return nil, err
	}
	rows, err := db.QueryContext(ctx, `SELECT `+firmwareCols+` FROM firmware ORDER BY created_at DESC, id`)
	if err != nil {
		return nil, fmt.Errorf("list firmware: %w", err)
	}
	return collect(rows, scanFirmware, "list firmware")
}

// OpenFirmware opens the image of the firmware with that ID for reading (the
// caller closes it), or returns fleet.ErrFirmwareNotFound. When the image's
// file cannot be opened, it returns the firmware with the error.
func (s *Store) OpenFirmware(ctx context.Context, id string) (*os.File, fleet.Firmware, error) {
	fw, err := s.Firmware(ctx, id)
	if err != nil {
		return nil, fleet.Firmware{}, err
	}
	f, err := os.Open(s.FirmwarePath(fw.SHA256))
	if err != nil {
		return nil, fw, fmt.Errorf("open firmware %s image: %w", id, err)
	}
	return f, fw, nil
}

// collect scans every row with scan and closes rows.
func collect[T any](rows *sql.Rows, scan func(interface{ Scan(...any) error }) (T, error), what string) ([]T, error) {
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return out, nil
}
