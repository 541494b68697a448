package main

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/flotaio/flota/internal/sqlite"
)

var backupSpec = &spec{name: "backup", args: "--out DIR [--server URL] [--token T]",
	summary: "write a consistent snapshot of the database, firmware images and token file to DIR while serving; restore with serve --data DIR",
	example: "orchestrator backup --out /srv/backups/flota-$(date +%F)"}

func init() {
	i := len(commands) - 2 // before completion and version
	commands = append(commands[:i], append([]*spec{backupSpec}, commands[i:]...)...)
}

// backup asks the server for a snapshot (POST /api/v1/backup) and unpacks
// it into a new directory, checking every file: the archive's trailer, each
// image's SHA-256 against its name, the database's integrity. A backup that
// fails a check is removed, never left looking whole.
func (c *cli) backup(ctx context.Context, args []string) (err error) {
	fs, sp := c.newFlags("backup")
	server := c.serverFlag(fs)
	out := fs.String("out", "", "directory to create with the backup (must not exist, or be empty)")
	if _, err := c.parse(fs, sp, args); err != nil {
		return err
	}
	if *out == "" {
		return &usageError{msg: "--out is required", spec: sp}
	}
	if entries, err := os.ReadDir(*out); err == nil && len(entries) > 0 {
		return fmt.Errorf("backup: %s is not empty", *out)
	}
	if err := os.MkdirAll(filepath.Join(*out, sqlite.FirmwareDir), 0o700); err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	defer func() {
		if err != nil {
			os.RemoveAll(*out)
		}
	}()
	cl := c.client(*server)
	req, err := cl.newRequest(ctx, http.MethodPost, "/api/v1/backup", nil)
	if err != nil {
		return err
	}
	var files, images int
	var bytes int64
	err = cl.stream(req, func(body io.Reader) error {
		tr := tar.NewReader(body)
		for {
			hdr, err := tr.Next()
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				return fmt.Errorf("backup: archive: %w", err)
			}
			if hdr.Typeflag != tar.TypeReg || !sqlite.ValidBackupName(hdr.Name) {
				return fmt.Errorf("backup: archive: unexpected entry %q: %w", hdr.Name, sqlite.ErrNotABackup)
			}
			n, err := writeBackupFile(filepath.Join(*out, filepath.FromSlash(hdr.Name)), hdr.Name, tr)
			if err != nil {
				return err
			}
			files++
			bytes += n
			if strings.HasPrefix(hdr.Name, sqlite.FirmwareDir+"/") {
				images++
			}
		}
	})
	if err != nil {
		return err
	}
	if err := checkBackupDB(filepath.Join(*out, sqlite.DBFile)); err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "backup written to %s: database, %s, %s, %s; restore with: orchestrator serve --data %s\n",
		*out, plural(images, "firmware image"), plural(files, "file"), humanBytes(bytes), *out)
	return nil
}

// writeBackupFile writes r to path and syncs it; an image's SHA-256 must
// match its name.
func writeBackupFile(path, name string, r io.Reader) (int64, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return 0, fmt.Errorf("backup: %w", err)
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), r)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return n, fmt.Errorf("backup: write %s: %w", name, err)
	}
	if sum, ok := strings.CutPrefix(name, sqlite.FirmwareDir+"/"); ok && hex.EncodeToString(h.Sum(nil)) != sum {
		return n, fmt.Errorf("backup: image %s does not match its SHA-256: %w", name, sqlite.ErrNotABackup)
	}
	return n, nil
}

// checkBackupDB runs PRAGMA integrity_check on the backup's database.
func checkBackupDB(path string) error {
	if _, err := os.Stat(path); err != nil {
		return fmt.Errorf("backup: no database in the archive: %w", err)
	}
	db, err := sql.Open("sqlite3", "file:"+path+"?mode=ro")
	if err != nil {
		return err
	}
	defer db.Close()
	var res string
	if err := db.QueryRow(`PRAGMA integrity_check`).Scan(&res); err != nil {
		return fmt.Errorf("backup: check database: %w", err)
	}
	if res != "ok" {
		return fmt.Errorf("backup: database fails its integrity check: %s", res)
	}
	return nil
}

// plural returns "1 thing" or "n things".
func plural(n int, thing string) string {
	if n == 1 {
		return "1 " + thing
	}
	return fmt.Sprintf("%d %ss", n, thing)
}
