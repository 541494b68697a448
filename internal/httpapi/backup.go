package httpapi

import (
	"archive/tar"
	"errors"
	"io"
	"net/http"
	"os"
	"time"
)

// backup answers POST /api/v1/backup with a tar archive of a consistent
// snapshot of the store: the database, the firmware images it refers to
// and the data directory's other files (sqlite.Store.Backup), which
// `orchestrator backup --out DIR` unpacks into a data directory that
// `serve --data DIR` starts on. The snapshot is written to a temporary
// directory of the system (not the data directory, which may be full),
// then removed. It needs an admin token: the archive holds everything.
func (s *Server) backup(w http.ResponseWriter, r *http.Request) {
	tmp, err := os.MkdirTemp("", "flota-backup-")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	defer os.RemoveAll(tmp)
	files, err := s.Store.Backup(r.Context(), tmp)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "application/x-tar")
	w.Header().Set("Content-Disposition", `attachment; filename="flota-backup.tar"`)
	tw := tar.NewWriter(w)
	for _, f := range files {
		if err := addToTar(tw, f.Name, f.Path); err != nil {
			// The status is sent: the archive ends short, without its
			// trailer, which the client refuses.
			s.logger().Error("backup: write archive", "file", f.Name, "err", err)
			return
		}
	}
	if err := tw.Close(); err != nil {
		s.logger().Error("backup: write archive", "err", err)
		return
	}
	s.logger().Info("backup sent", "files", len(files))
}

// addToTar writes the file at path into tw as name.
func addToTar(tw *tar.Writer, name, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return errors.New("not a regular file")
	}
	hdr := &tar.Header{Name: name, Mode: int64(fi.Mode().Perm()), Size: fi.Size(), ModTime: fi.ModTime().Truncate(time.Second),
		Typeflag: tar.TypeReg, Format: tar.FormatPAX}
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	_, err = io.CopyN(tw, f, fi.Size())
	return err
}
