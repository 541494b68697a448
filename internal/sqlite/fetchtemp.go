package sqlite

import (
	"os"
	"path/filepath"
)

// CreateTempImage creates an empty file in the firmware directory for an
// image being downloaded; a file left there by a crash is removed at the
// next Open with the partial uploads.
func (s *Store) CreateTempImage() (*os.File, error) {
	return os.CreateTemp(filepath.Join(s.DataDir, FirmwareDir), tempPrefix+"fetch-*")
}
