package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"time"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
)

// Device is the hardware side of an agent on a real device: where the image
// goes, how it is installed, how the device reboots and what it runs after.
// With Config.Device nil the agent simulates all of it (devicesim).
//
// The agent calls every method from its one loop goroutine, except Install,
// which runs on a goroutine of its own (the agent stays connected and
// answers offers while an install takes minutes); so an implementation
// needs no lock unless Install shares state with the others.
type Device interface {
	// WriteImage stores p at offset off of the image of update. Writes come
	// in order, without gaps; a write at an offset below what is stored (a
	// resume from a checkpoint after a crash, or 0 for a new download) drops
	// what follows it. An error ends the transfer failed, storage_error.
	WriteImage(update string, off int64, p []byte) error
	// SyncImage makes the bytes written so far durable. The agent calls it
	// before a checkpoint records their offset in the state file, so that a
	// power cut never leaves a state file ahead of the image.
	SyncImage() error
	// Install installs the complete image, whose size and SHA-256 the agent
	// verified. ctx ends when the agent closes; the install is then run
	// again after the next start (docs/PROTOCOL.md §9.1). An error is
	// reported failed, install_failed: the old version keeps running.
	Install(ctx context.Context, update string, fw Firmware) error
	// Reboot reboots the device into the installed image, after the
	// rebooting report. Nil: the reboot is under way, and the agent waits
	// Config.RebootWait for the end of its process before it says hello
	// again (Booted then decides what runs). ErrNoReboot: the new version
	// runs without a reboot. Another error is logged and the agent goes on
	// as after ErrNoReboot.
	Reboot(ctx context.Context) error
	// Booted is called once the device came back from the reboot into
	// target (after a restart of the program, or at once after
	// ErrNoReboot). It checks the health of what runs, confirms it (or
	// rolls it back) and returns the version that runs now: target after a
	// confirmed boot, the old version after a rollback. The agent says it
	// in its hello, which is what the orchestrator records as the outcome
	// (docs/PROTOCOL.md §10). It may take minutes; ctx ends when the agent
	// closes.
	Booted(ctx context.Context, target string) string
	// Discard removes the image of update: the transfer ended (cancelled,
	// failed, or the device rebooted into it).
	Discard(update string)
}

// Firmware describes the image of an offer, as the agent checked it.
type Firmware struct {
	Version string // the version the image runs, said in the hello after the reboot
	Model   string // the hardware model it is for ("": any)
	Size    int64  // bytes
	// SHA256 is the hex SHA-256 of the image.
	SHA256 string
}

// ErrNoReboot is what Device.Reboot returns when the installed version runs
// without a reboot (an application rather than a system image).
var ErrNoReboot = errors.New("agent: no reboot needed")

// DefaultRebootWait is how long an agent with a Device waits, after
// Device.Reboot returned, for the reboot to end its process. Past it the
// device did not reboot: the agent says hello with what runs (the old
// version: the orchestrator records boot_failed).
const DefaultRebootWait = 5 * time.Minute

// errInjectedInstall is the failure of a simulated install (Faults.FailInstall).
var errInjectedInstall = errors.New("injected install failure")

// deviceRun is what an agent with a Device needs besides devicesim's
// simulated one, allocated only then so that a simulated agent stays as
// small as it was. Owned by the loop goroutine.
type deviceRun struct {
	ctx        context.Context    // the loop's context: ends at Close (passed to Device calls)
	installing bool               // an install runs
	installed  chan installResult // its result
}

// installedC is the channel of install results; nil (never ready) without
// a Device.
func (r *deviceRun) installedC() <-chan installResult {
	if r == nil {
		return nil
	}
	return r.installed
}

// installResult is the end of an install run by a Device.
type installResult struct {
	update string
	err    error
}

// writeImage hands a chunk to the device, if any; false: the transfer
// ended with a storage error.
func (a *Agent) writeImage(t *transfer, off int64, p []byte) bool {
	d := a.cfg.Device
	if d == nil {
		return true
	}
	if err := d.WriteImage(t.update, off, p); err != nil {
		a.logger().Warn("image write failed", "update", t.update, "offset", off, "err", err)
		a.setHeld(nil)
		a.report(protocol.Report{Update: t.update, Handle: t.handle, State: fleet.StateFailed, Reason: fleet.ReasonStorageError})
		return false
	}
	return true
}

// syncImage makes the device's image durable before the state file says
// it holds it; false: not durable, do not checkpoint.
func (a *Agent) syncImage() bool {
	d := a.cfg.Device
	if d == nil {
		return true
	}
	if err := d.SyncImage(); err != nil {
		a.logger().Warn("image sync failed", "err", err)
		return false
	}
	return true
}

// startInstall runs Device.Install on its own goroutine; the loop learns
// the result from a.installed.
func (a *Agent) startInstall() {
	t := a.held
	r := a.dev
	if t == nil || r.installing {
		return
	}
	r.installing = true
	fw := Firmware{Version: t.fw.Version, Model: t.fw.Model, Size: t.fw.Size, SHA256: t.fw.SHA256}
	update, ctx, d := t.update, r.ctx, a.cfg.Device
	a.logger().Info("installing", "update", update, "version", fw.Version)
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		r.installed <- installResult{update, d.Install(ctx, update, fw)}
	}()
}

// deviceReboot asks the device to reboot, after the rebooting report.
func (a *Agent) deviceReboot() {
	a.waitReport()
	a.disconnect()
	err := a.cfg.Device.Reboot(a.dev.ctx)
	switch {
	case err == nil:
		a.logger().Info("waiting for the reboot", "up_to", a.cfg.RebootWait)
		a.reconnTimer = time.NewTimer(a.cfg.RebootWait)
		return
	case errors.Is(err, ErrNoReboot):
	case a.dev.ctx.Err() != nil:
		return // the reboot stopped the agent while its command ran
	default:
		a.logger().Warn("reboot failed", "err", err)
	}
	a.reconnTimer = time.NewTimer(0)
}

// hashRunningImage states the SHA-256 of a BaseImage Device's running
// image when Config.Image does not: read once, at start.
func (a *Agent) hashRunningImage() {
	b, ok := a.cfg.Device.(BaseImage)
	if !ok || a.image != "" {
		return
	}
	r, n, err := b.RunningImage()
	if err == nil {
		h := sha256.New()
		if _, err = io.Copy(h, io.NewSectionReader(r, 0, n)); err == nil {
			a.image = hex.EncodeToString(h.Sum(nil))
			img := a.image
			a.updateStats(func(s *Stats) { s.Image = img })
			return
		}
	}
	a.logger().Warn("running image not read: no delta can be applied", "err", err)
}
