package rollout

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"

	"github.com/flotaio/flota/internal/fleet"
)

// A firmware image is checked whenever a run opens it (a new update, a
// restart, a resume): its file must exist and hold the stored size and
// SHA-256. A missing, truncated or changed file (a disk fault, a restore
// that forgot the images, an edit by hand) refuses a new update, and
// pauses an update that uses it with reason firmware_damaged: nothing is
// sent until the file is restored and an operator resumes, which checks
// it again. Devices check the SHA-256 too, but an image known to be wrong
// would only cost every device a download and an attempt.
//
// An image read from its file during a run (larger than memBlobMax) is
// checked when the run opens it only: a file changed in place later is
// caught by the devices' own check (bad_digest).

// checkImage checks that f holds fw's image. With buf (fw.Size bytes), the
// image is read into it.
func checkImage(f *os.File, fw fleet.Firmware, buf []byte) error {
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if fi.Size() != fw.Size {
		return fleet.Errorf(fleet.ErrFirmwareDamaged, "firmware %s: file %s is %d bytes, the firmware %d", fw.ID, f.Name(), fi.Size(), fw.Size)
	}
	h := sha256.New()
	if buf != nil {
		if _, err := f.ReadAt(buf, 0); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		h.Write(buf)
	} else if _, err := io.Copy(h, io.NewSectionReader(f, 0, fw.Size)); err != nil {
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != fw.SHA256 {
		return fleet.Errorf(fleet.ErrFirmwareDamaged, "firmware %s: file %s has SHA-256 %s, the firmware %s", fw.ID, f.Name(), got, fw.SHA256)
	}
	return nil
}

// brokenBlob stands for the image of a run whose file failed its check:
// every read fails, so no chunk is sent.
type brokenBlob struct{ err error }

func (b brokenBlob) ReadAt([]byte, int64) (int, error) { return 0, b.err }
func (brokenBlob) Close() error                        { return nil }

// damagedRun pauses a restored run whose image failed its check; admit
// starts no device of it whatever its state (a scheduled update cannot be
// paused).
func (e *Engine) damagedRun(r *run) {
	e.Logger.Error("firmware image damaged: update paused until it is restored and resumed", "update", r.u.ID,
		"firmware", r.fw.ID, "err", r.blobErr)
	if r.u.State == fleet.UpdateRunning {
		e.setUpdateState(r, fleet.UpdatePaused, fleet.ReasonFirmwareDamaged)
	}
}

// reopenBlob checks a damaged run's image again, before a resume.
func (e *Engine) reopenBlob(r *run) error {
	if r.blobErr == nil {
		return nil
	}
	b, _, err := e.openBlob(contextBG, r.fw.ID)
	if err != nil {
		return err
	}
	r.closeBlob()
	r.blob, r.blobErr = b, nil
	return nil
}
