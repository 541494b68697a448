package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/flotaio/flota/agent"
	"github.com/flotaio/flota/internal/atomicfile"
	"github.com/flotaio/flota/internal/logsafe"
)

// Files of the state directory, besides the image (--image-name).
const (
	stateFileName      = "state.json"      // the agent's state (agent.Config.StateFile)
	confirmPendingName = "confirm.pending" // the version waiting for `flota-agent confirm`
	confirmedName      = "confirm.ok"      // written by `flota-agent confirm`
)

// maxHookOutput bounds what is kept of a hook's output for the log.
const maxHookOutput = 2048

// maxVersionLen is the protocol's bound of a version string (§5.1).
const maxVersionLen = 64

// confirmPoll is how often Booted looks for `flota-agent confirm`'s file.
const confirmPoll = 200 * time.Millisecond

// device is the agent.Device of a Linux system: the image goes to a file of
// the state directory, and shell commands install, reboot, check, confirm
// and roll back (docs/AGENT.md).
type device struct {
	cfg *config
	log *slog.Logger

	// Owned by the agent's loop goroutine (WriteImage, SyncImage, Discard).
	img       *os.File
	imgUpdate string
	imgEnd    int64 // offset after the last write; -1: unknown (just opened)
}

func (d *device) path(name string) string { return filepath.Join(d.cfg.stateDir, name) }

// WriteImage writes p at off; a write below the end of the file drops
// the rest (a resume from an older checkpoint, or a new download).
func (d *device) WriteImage(update string, off int64, p []byte) error {
	if d.img == nil || d.imgUpdate != update {
		d.closeImage()
		f, err := os.OpenFile(d.path(d.cfg.imageName), os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return err
		}
		d.img, d.imgUpdate, d.imgEnd = f, update, -1
	}
	if off != d.imgEnd {
		if err := d.img.Truncate(off); err != nil {
			return err
		}
	}
	if _, err := d.img.WriteAt(p, off); err != nil {
		return err
	}
	d.imgEnd = off + int64(len(p))
	return nil
}

// SyncImage fsyncs the image file.
func (d *device) SyncImage() error {
	if d.img == nil {
		return nil
	}
	return d.img.Sync()
}

func (d *device) closeImage() {
	if d.img != nil {
		if err := d.img.Close(); err != nil {
			d.log.Warn("close image", "err", err)
		}
		d.img = nil
	}
}

// Discard removes the image file.
func (d *device) Discard(update string) {
	d.closeImage()
	if err := os.Remove(d.path(d.cfg.imageName)); err != nil && !errors.Is(err, os.ErrNotExist) {
		d.log.Warn("remove image", "err", err)
	}
}

// Install checks the image file against the offer once more (the disk may
// have changed it since the agent hashed the chunks) and runs the install
// command with its path.
func (d *device) Install(ctx context.Context, update string, fw agent.Firmware) error {
	path := d.path(d.cfg.imageName)
	if fw.Size == 0 {
		if err := os.WriteFile(path, nil, 0o600); err != nil {
			return err
		}
	}
	if err := checkImage(path, fw); err != nil {
		return err
	}
	// A confirmation left from an earlier update must not confirm this one.
	d.removeConfirmFiles()
	env := []string{"FLOTA_UPDATE=" + update, "FLOTA_VERSION=" + fw.Version, "FLOTA_SHA256=" + fw.SHA256, "FLOTA_IMAGE=" + path}
	return d.hook(ctx, "install", d.cfg.installCmd, d.cfg.installTimeout, env, path)
}

// checkImage compares the file's size and SHA-256 with fw.
func checkImage(path string, fw agent.Firmware) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return err
	}
	if n != fw.Size || !strings.EqualFold(hex.EncodeToString(h.Sum(nil)), fw.SHA256) {
		return fmt.Errorf("image file %s does not match the offer (%d bytes, want %d)", path, n, fw.Size)
	}
	return nil
}

// Reboot runs the reboot command; without one the new version runs as
// soon as it is installed.
func (d *device) Reboot(ctx context.Context) error {
	if d.cfg.rebootCmd == "" {
		return agent.ErrNoReboot
	}
	return d.hook(ctx, "reboot", d.cfg.rebootCmd, d.cfg.hookTimeout, nil)
}

// Booted decides what runs after the reboot into target: the version
// source says whether the new image booted; if so, the health command,
// the operator's `flota-agent confirm` and the confirm command must all
// pass, or the rollback command runs.
func (d *device) Booted(ctx context.Context, target string) string {
	v, err := d.version(ctx)
	if err != nil {
		d.log.Error("running version unknown", "err", err)
		return v
	}
	if v != target {
		d.log.Warn("the new version did not boot", "running", v, "target", target)
		return v
	}
	env := []string{"FLOTA_VERSION=" + target}
	if d.cfg.healthCmd != "" {
		if err := d.hook(ctx, "health", d.cfg.healthCmd, d.cfg.hookTimeout, env); err != nil {
			return d.rollback(ctx, target, "health check failed")
		}
	}
	if d.cfg.requireConfirm {
		if err := d.waitConfirm(ctx, target); err != nil {
			return d.rollback(ctx, target, err.Error())
		}
	}
	if d.cfg.confirmCmd != "" {
		if err := d.hook(ctx, "confirm", d.cfg.confirmCmd, d.cfg.hookTimeout, env); err != nil {
			return d.rollback(ctx, target, "confirm command failed")
		}
	}
	d.log.Info("new version confirmed", "version", target)
	return target
}

// waitConfirm waits for `flota-agent confirm` of target.
func (d *device) waitConfirm(ctx context.Context, target string) error {
	if err := atomicfile.Write(d.path(confirmPendingName), []byte(target+"\n"), 0o600); err != nil {
		return fmt.Errorf("confirmation not requested: %w", err)
	}
	defer d.removeConfirmFiles()
	d.log.Info("waiting for flota-agent confirm", "version", target, "up_to", d.cfg.confirmTimeout)
	deadline := time.NewTimer(d.cfg.confirmTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(confirmPoll)
	defer tick.Stop()
	for {
		if b, err := readBounded(d.path(confirmedName), maxVersionLen+1); err == nil && strings.TrimSpace(string(b)) == target {
			return nil
		}
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-deadline.C:
			return fmt.Errorf("not confirmed within %s", d.cfg.confirmTimeout)
		case <-tick.C:
		}
	}
}

func (d *device) removeConfirmFiles() {
	for _, n := range []string{confirmPendingName, confirmedName} {
		if err := os.Remove(d.path(n)); err != nil && !errors.Is(err, os.ErrNotExist) {
			d.log.Warn("remove confirmation file", "err", err)
		}
	}
}

// rollback runs the rollback command and returns the version that runs
// after it. A rollback command that reboots (rauc status mark-bad, then a
// reboot) ends the process: the next start says what runs. One that
// returns while the version source still says target is given the reboot
// wait to take effect.
func (d *device) rollback(ctx context.Context, target, why string) string {
	d.log.Warn("rolling back", "version", target, "why", why)
	if d.cfg.rollbackCmd == "" {
		d.log.Error("no --rollback-command: the unconfirmed version keeps running")
		return target
	}
	if err := d.hook(ctx, "rollback", d.cfg.rollbackCmd, d.cfg.hookTimeout, []string{"FLOTA_VERSION=" + target}); err != nil {
		d.log.Error("rollback command failed", "err", err)
	}
	v, err := d.version(ctx)
	if err == nil && v == target {
		select {
		case <-ctx.Done():
		case <-time.After(d.cfg.rebootWait):
		}
		v, err = d.version(ctx)
	}
	if err != nil {
		d.log.Error("running version unknown after the rollback", "err", err)
	}
	return v
}

// version reads the running version from its source.
func (d *device) version(ctx context.Context) (string, error) {
	var raw []byte
	var err error
	switch {
	case d.cfg.versionFile != "":
		raw, err = readBounded(d.cfg.versionFile, 4096)
	case d.cfg.versionCmd != "":
		raw, err = d.output(ctx, d.cfg.versionCmd)
	default:
		return d.cfg.version, nil
	}
	if err != nil {
		return "", fmt.Errorf("version: %w", err)
	}
	line, _, _ := bytes.Cut(raw, []byte("\n"))
	v := strings.TrimSpace(string(line))
	if v == "" || len(v) > maxVersionLen || strings.ContainsFunc(v, func(r rune) bool { return r < 0x20 || r > 0x7e }) {
		return "", fmt.Errorf("version %q: want 1 to %d bytes of printable ASCII", logsafe.Clean(v, maxVersionLen), maxVersionLen)
	}
	return v, nil
}

// hookCmd makes the shell command of a hook: command, then args as its own
// arguments, in its own process group so that a timeout kills all of it.
func (d *device) hookCmd(ctx context.Context, command string, env []string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "/bin/sh", append([]string{"-c", command + ` "$@"`, "flota-agent"}, args...)...)
	cmd.Env = append(append(os.Environ(), "FLOTA_AGENT_PID="+strconv.Itoa(os.Getpid()), "FLOTA_STATE_DIR="+d.cfg.stateDir), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// hook runs a hook command with a timeout and logs how it ended with the
// start of its output.
func (d *device) hook(ctx context.Context, name, command string, timeout time.Duration, env []string, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	out := &headBuffer{max: maxHookOutput}
	cmd := d.hookCmd(ctx, command, env, args...)
	cmd.Stdout, cmd.Stderr = out, out
	start := time.Now()
	err := cmd.Run()
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		err = fmt.Errorf("%s command: killed after %s", name, timeout)
	case ctx.Err() != nil:
		err = fmt.Errorf("%s command: interrupted: %w", name, context.Cause(ctx))
	case err != nil:
		err = fmt.Errorf("%s command: %w", name, err)
	}
	lvl := slog.LevelInfo
	if err != nil {
		lvl = slog.LevelWarn
	}
	d.log.Log(ctx, lvl, "hook ran", "hook", name, "took", time.Since(start).Round(time.Millisecond), "err", err,
		"output", logsafe.Clean(out.String(), maxHookOutput))
	return err
}

// output runs a command and returns its standard output (bounded).
func (d *device) output(ctx context.Context, command string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, d.cfg.hookTimeout)
	defer cancel()
	out := &headBuffer{max: 4096}
	cmd := d.hookCmd(ctx, command, nil)
	cmd.Stdout = out
	if err := cmd.Run(); err != nil {
		return nil, err
	}
	return out.b.Bytes(), nil
}

// headBuffer keeps the first max bytes written to it and counts the rest.
type headBuffer struct {
	max     int
	b       bytes.Buffer
	dropped int
}

func (h *headBuffer) Write(p []byte) (int, error) {
	n := len(p)
	if room := h.max - h.b.Len(); room < len(p) {
		h.dropped += len(p) - max(room, 0)
		p = p[:max(room, 0)]
	}
	h.b.Write(p)
	return n, nil
}

func (h *headBuffer) String() string {
	s := strings.TrimSpace(h.b.String())
	if h.dropped > 0 {
		s += fmt.Sprintf(" [+%d bytes]", h.dropped)
	}
	return s
}
