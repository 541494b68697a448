package rollout

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/flotaio/flota/internal/atomicfile"
	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/sqlite"
)

// Defaults of a Builder.
const (
	// DefaultBuildQueue bounds the payloads waiting to be built.
	DefaultBuildQueue = 64
	// DefaultPredecessors is how many older versions of a new firmware
	// (same name and model) get a delta to it at once.
	DefaultPredecessors = 3
	// DefaultMaxDiffImage bounds the images a delta is computed for, base
	// and target: both are held in memory with the delta while it is
	// computed, beside the codec's suffix array of the base and its copy
	// (about 9 bytes a base byte): a peak near 11 times the image size.
	DefaultMaxDiffImage = 32 << 20
	// compressKeep: a compressed copy is kept only when it is smaller than
	// this fraction of the image; below it, the decoding is not worth it.
	compressKeep = 0.95
)

// Builder builds the payloads devices may be sent instead of an image, in
// the background, one at a time: a compressed copy of every new firmware,
// deltas to it from its stored predecessors, and deltas from the images the
// devices of a new update run. What waits to be built is the store's
// pending payload rows, so a restart goes on where it stopped; files are
// written whole, atomically, under DataDir/payloads, and only a payload
// smaller than what it replaces is kept (docs/ARCHITECTURE.md, Payloads).
//
// Create it with NewBuilder, start it with Open, stop it with Close.
type Builder struct {
	Store  *sqlite.Store
	Logger *slog.Logger
	// QueueSize bounds the payloads waiting to be built: a request past it
	// is refused (logged, counted in BuilderStats.Refused), and the
	// devices get the image whole or compressed.
	QueueSize int
	// Predecessors is how many older versions of a new firmware get a
	// delta to it.
	Predecessors int
	// MaxDiffImage: no delta is computed when the base or the target is
	// larger (memory bound); the payload fails, saying so.
	MaxDiffImage int64
	// RetryMin and RetryMax bound the wait before a build that failed on a
	// disk fault (full, read-only) is tried again.
	RetryMin, RetryMax time.Duration
	// OnChange is called after a payload of firmwareID was built, failed
	// or was skipped (Engine.PayloadsChanged). It must not block.
	OnChange func(firmwareID string)

	// compress and diff encode payloads (codec.go when nil); tests
	// replace them to fail.
	compress func(dst io.Writer, image io.Reader) (int64, error)
	diff     func(dst io.Writer, base, target []byte) (int64, error)

	wake   chan struct{} // capacity 1: a build may be waiting
	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once
	// mu serialises requests, so that two of them cannot both pass the
	// queue bound.
	mu sync.Mutex

	stats struct{ built, failed, skipped, refused, retries atomic.Int64 }
}

// BuilderStats are a Builder's counters since Open.
type BuilderStats struct {
	Built   int64 `json:"built"`   // payloads built and kept
	Failed  int64 `json:"failed"`  // builds that failed (devices get another payload)
	Skipped int64 `json:"skipped"` // payloads built but not kept: no smaller than what they would replace
	Refused int64 `json:"refused"` // payloads not queued: the queue was full
	Retries int64 `json:"retries"` // builds tried again after a disk fault
}

// NewBuilder returns a builder with the default settings.
func NewBuilder(store *sqlite.Store, logger *slog.Logger) *Builder {
	if logger == nil {
		logger = slog.Default()
	}
	return &Builder{
		Store: store, Logger: logger,
		QueueSize: DefaultBuildQueue, Predecessors: DefaultPredecessors, MaxDiffImage: DefaultMaxDiffImage,
		RetryMin: 100 * time.Millisecond, RetryMax: 10 * time.Second,
		compress: codecCompress,
	}
}

// Stats returns the builder's counters.
func (b *Builder) Stats() BuilderStats {
	return BuilderStats{Built: b.stats.built.Load(), Failed: b.stats.failed.Load(), Skipped: b.stats.skipped.Load(),
		Refused: b.stats.refused.Load(), Retries: b.stats.retries.Load()}
}

// Open builds again the payloads whose file is missing (a data directory
// restored from a backup, which holds the images only), removes payload
// files no row names (a crash between a file and its row, a firmware
// deleted while its payload was built), and starts the worker, which goes
// on with the builds left pending.
func (b *Builder) Open(ctx context.Context) error {
	if b.Store == nil {
		return errors.New("rollout: payload builder needs a store")
	}
	b.QueueSize = max(b.QueueSize, 1)
	b.RetryMin = max(b.RetryMin, time.Millisecond)
	b.RetryMax = max(b.RetryMax, b.RetryMin)
	if err := os.MkdirAll(filepath.Join(b.Store.DataDir, sqlite.PayloadDir), 0o755); err != nil {
		return fmt.Errorf("rollout: payload directory: %w", err)
	}
	if err := b.rebuildMissing(ctx); err != nil {
		return fmt.Errorf("rollout: payload files: %w", err)
	}
	if err := b.removeOrphans(ctx); err != nil {
		return fmt.Errorf("rollout: payload files: %w", err)
	}
	b.wake = make(chan struct{}, 1)
	ctx, cancel := context.WithCancel(context.Background())
	b.cancel = cancel
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		b.work(ctx)
	}()
	b.poke()
	return nil
}

// Close stops the worker; a build in progress is abandoned and stays
// pending for the next start. It is idempotent.
func (b *Builder) Close() error {
	b.once.Do(func() {
		if b.cancel != nil {
			b.cancel()
			b.wg.Wait()
		}
	})
	return nil
}

func (b *Builder) poke() {
	if b.wake == nil {
		return
	}
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// rebuildMissing puts back to pending the ready payloads whose file is
// missing or of another size than recorded.
func (b *Builder) rebuildMissing(ctx context.Context) error {
	all, err := b.Store.AllPayloads(ctx)
	if err != nil {
		return err
	}
	for _, ps := range all {
		for _, p := range ps {
			if p.State != fleet.PayloadReady {
				continue
			}
			if fi, err := os.Stat(filepath.Join(b.Store.DataDir, p.Path)); err == nil && fi.Size() == p.Size {
				continue
			}
			b.Logger.Warn("payload file missing: built again", "firmware", p.FirmwareID, "encoding", p.Encoding, "file", p.Path)
			p.State, p.Size, p.SHA256, p.Path, p.Error = fleet.PayloadPending, 0, "", "", ""
			if err := b.Store.FinishPayload(ctx, p); err != nil {
				return err
			}
		}
	}
	return nil
}

// removeOrphans removes the payload directory's files that no payload row
// names, and temporary files.
func (b *Builder) removeOrphans(ctx context.Context) error {
	known, err := b.Store.PayloadPaths(ctx)
	if err != nil {
		return err
	}
	dir := filepath.Join(b.Store.DataDir, sqlite.PayloadDir)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		rel := filepath.ToSlash(filepath.Join(sqlite.PayloadDir, e.Name()))
		if e.IsDir() || known[rel] {
			continue
		}
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		b.Logger.Info("removed orphan payload file", "file", rel)
	}
	return nil
}

// FirmwareAdded queues the payloads of a new firmware: its compressed
// copy, and deltas to it from its Predecessors newest older versions of
// the same name and model. It is the store's OnFirmwareAdded hook.
func (b *Builder) FirmwareAdded(fw fleet.Firmware) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	family, err := b.Store.FirmwareFamily(ctx, fw.Name, fw.Model)
	if err != nil {
		b.Logger.Error("payloads of a new firmware", "firmware", fw.ID, "err", err)
		return
	}
	if err := b.Want(ctx, fw, predecessors(family, fw, b.Predecessors)); err != nil {
		b.Logger.Error("payloads of a new firmware", "firmware", fw.ID, "err", err)
	}
}

// predecessors returns up to n firmware of family older than fw by
// version, newest first, one per image.
func predecessors(family []fleet.Firmware, fw fleet.Firmware, n int) []fleet.Firmware {
	var older []fleet.Firmware
	for _, f := range family {
		if f.SHA256 == fw.SHA256 {
			continue
		}
		if c, ok := fleet.CompareVersions(f.Version, fw.Version); ok && c < 0 {
			older = append(older, f)
		}
	}
	slices.SortStableFunc(older, func(a, b fleet.Firmware) int {
		c, _ := fleet.CompareVersions(b.Version, a.Version)
		return c
	})
	var out []fleet.Firmware
	seen := map[string]bool{}
	for _, f := range older {
		if len(out) == n {
			break
		}
		if !seen[f.SHA256] {
			seen[f.SHA256] = true
			out = append(out, f)
		}
	}
	return out
}

// Want queues fw's compressed copy and deltas to it from bases, those not
// recorded yet, within the queue bound; the rest are refused (counted).
func (b *Builder) Want(ctx context.Context, fw fleet.Firmware, bases []fleet.Firmware) error {
	now := time.Now().UTC()
	want := []fleet.Payload{{FirmwareID: fw.ID, Encoding: fleet.EncodingDeflate, CreatedAt: now}}
	for _, base := range bases {
		if base.ID != fw.ID && base.SHA256 != fw.SHA256 {
			want = append(want, fleet.Payload{FirmwareID: fw.ID, Encoding: fleet.EncodingDelta, Base: base.ID, CreatedAt: now})
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	have, err := b.Store.Payloads(ctx, fw.ID)
	if err != nil {
		return err
	}
	want = slices.DeleteFunc(want, func(p fleet.Payload) bool {
		return slices.ContainsFunc(have, func(h fleet.Payload) bool { return h.Encoding == p.Encoding && h.Base == p.Base })
	})
	if len(want) == 0 {
		return nil
	}
	_, pending, err := b.Store.PendingPayloads(ctx, 0)
	if err != nil {
		return err
	}
	if room := max(b.QueueSize-pending, 0); len(want) > room {
		b.stats.refused.Add(int64(len(want) - room))
		b.Logger.Warn("payload build queue full: payloads not built, devices get the image whole or compressed",
			"firmware", fw.ID, "refused", len(want)-room, "queue", b.QueueSize)
		want = want[:room]
	}
	if len(want) == 0 {
		return nil
	}
	if _, err := b.Store.AddPayloads(ctx, want); err != nil {
		return err
	}
	b.poke()
	return nil
}

// work builds the pending payloads, oldest first, one at a time.
func (b *Builder) work(ctx context.Context) {
	wait := b.RetryMin
	for {
		select {
		case <-ctx.Done():
			return
		case <-b.wake:
		}
		for ctx.Err() == nil {
			ps, _, err := b.Store.PendingPayloads(ctx, 1)
			if err != nil || len(ps) == 0 {
				if err != nil && ctx.Err() == nil {
					b.Logger.Error("read pending payloads", "err", err)
				}
				break
			}
			err = b.build(ctx, ps[0])
			if err == nil {
				wait = b.RetryMin
				continue
			}
			if ctx.Err() != nil {
				return
			}
			// A disk fault (or the store's): the payload stays pending and
			// is tried again, as the store retries its writes.
			b.stats.retries.Add(1)
			b.Logger.Warn("payload build held by a disk fault, retrying", "firmware", ps[0].FirmwareID,
				"encoding", ps[0].Encoding, "retry_in", wait, "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
			wait = min(2*wait, b.RetryMax)
		}
	}
}

// diskFault reports whether err is a fault of the disk, which retrying may
// outlive, rather than of the build.
func diskFault(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EROFS) || errors.Is(err, syscall.EIO) ||
		errors.Is(err, syscall.EDQUOT) || errors.Is(err, fleet.ErrStoreUnavailable)
}

// build builds p and records the outcome. It returns an error, p staying
// pending, for a disk fault or when the outcome cannot be recorded; any
// other failure is recorded as the payload's.
func (b *Builder) build(ctx context.Context, p fleet.Payload) error {
	start := time.Now()
	p.State, p.Error, p.Path, p.Size, p.SHA256 = "", "", "", 0, ""
	data, err := b.encode(ctx, &p)
	switch {
	case err != nil && (diskFault(err) || ctx.Err() != nil):
		return err
	case err != nil:
		p.State, p.Error = fleet.PayloadFailed, truncate(err.Error(), 300)
	case p.State == "":
		p.Path = payloadPath(p)
		if err := atomicfile.Write(filepath.Join(b.Store.DataDir, p.Path), data, 0o644); err != nil {
			if diskFault(err) {
				return err
			}
			p.State, p.Error, p.Path = fleet.PayloadFailed, truncate(err.Error(), 300), ""
			break
		}
		sum := sha256.Sum256(data)
		p.State, p.Size, p.SHA256 = fleet.PayloadReady, int64(len(data)), hex.EncodeToString(sum[:])
	}
	err = b.Store.FinishPayload(ctx, p)
	if errors.Is(err, fleet.ErrFirmwareNotFound) {
		// The firmware or its base was deleted meanwhile.
		if p.Path != "" {
			os.Remove(filepath.Join(b.Store.DataDir, p.Path)) //nolint:errcheck // an orphan is removed at the next start
		}
		return nil
	}
	if err != nil {
		// Still pending: built again after the backoff.
		if p.Path != "" {
			os.Remove(filepath.Join(b.Store.DataDir, p.Path)) //nolint:errcheck // rewritten at the retry
		}
		return err
	}
	switch p.State {
	case fleet.PayloadReady:
		b.stats.built.Add(1)
	case fleet.PayloadSkipped:
		b.stats.skipped.Add(1)
	default:
		b.stats.failed.Add(1)
	}
	b.Logger.Info("payload built", "firmware", p.FirmwareID, "encoding", p.Encoding, "base", p.Base, "state", p.State,
		"size", p.Size, "error", p.Error, "seconds", time.Since(start).Seconds())
	if b.OnChange != nil {
		b.OnChange(p.FirmwareID)
	}
	return nil
}

// payloadPath is where p's file goes, relative to the data directory.
func payloadPath(p fleet.Payload) string {
	name := p.FirmwareID + "." + p.Encoding
	if p.Base != "" {
		name += "." + p.Base
	}
	return sqlite.PayloadDir + "/" + name
}

// encode returns p's payload, or sets p.State to skipped (with p.Error
// saying why) when it would not be smaller than what it replaces.
func (b *Builder) encode(ctx context.Context, p *fleet.Payload) ([]byte, error) {
	fw, err := b.Store.Firmware(ctx, p.FirmwareID)
	if err != nil {
		return nil, err
	}
	var out bytes.Buffer
	buf := ctxWriter{ctx: ctx, w: &out} // Close stops a build at its next write
	switch p.Encoding {
	case fleet.EncodingDeflate:
		if b.compress == nil {
			return nil, errors.New("no compression codec")
		}
		f, err := os.Open(b.Store.FirmwarePath(fw.SHA256))
		if err != nil {
			return nil, err
		}
		defer f.Close()
		if _, err := b.compress(buf, io.LimitReader(f, fw.Size)); err != nil {
			return nil, fmt.Errorf("compress: %w", err)
		}
		if float64(out.Len()) >= compressKeep*float64(fw.Size) {
			p.State, p.Error = fleet.PayloadSkipped, fmt.Sprintf("compressed to %d of %d bytes: not kept", out.Len(), fw.Size)
			return nil, nil
		}
	case fleet.EncodingDelta:
		diff := b.diff
		if diff == nil {
			diff = codecDiff(b.MaxDiffImage)
		}
		base, err := b.Store.Firmware(ctx, p.Base)
		if err != nil {
			return nil, err
		}
		if fw.Size > b.MaxDiffImage || base.Size > b.MaxDiffImage {
			return nil, fmt.Errorf("image over %d bytes: no delta", b.MaxDiffImage)
		}
		target, err := b.readImage(fw)
		if err != nil {
			return nil, err
		}
		old, err := b.readImage(base)
		if err != nil {
			return nil, err
		}
		if _, err := diff(buf, old, target); err != nil {
			return nil, fmt.Errorf("diff: %w", err)
		}
		// Kept only when smaller than what the device would get instead.
		limit, instead := fw.Size, "the image"
		if ps, err := b.Store.Payloads(ctx, fw.ID); err == nil {
			for _, c := range ps {
				if c.Encoding == fleet.EncodingDeflate && c.State == fleet.PayloadReady {
					limit, instead = c.Size, "the compressed image"
				}
			}
		}
		if int64(out.Len()) >= limit {
			p.State, p.Error = fleet.PayloadSkipped, fmt.Sprintf("delta of %d bytes, %s %d: not kept", out.Len(), instead, limit)
			return nil, nil
		}
	default:
		return nil, fmt.Errorf("unknown encoding %q", p.Encoding)
	}
	return out.Bytes(), nil
}

// ctxWriter fails its writes once ctx ends: the codec stops at a failing
// write, so that Close need not wait out a long diff.
type ctxWriter struct {
	ctx context.Context
	w   io.Writer
}

func (c ctxWriter) Write(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.w.Write(p)
}

// readImage reads fw's image, checked as a run checks it (checkImage):
// a file of another size is refused before it is read.
func (b *Builder) readImage(fw fleet.Firmware) ([]byte, error) {
	f, err := os.Open(b.Store.FirmwarePath(fw.SHA256))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data := make([]byte, fw.Size)
	if err := checkImage(f, fw, data); err != nil {
		return nil, err
	}
	return data, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "")
}

// openBuilder starts the engine's builder, if it has one: it builds the
// payloads of every new firmware, and tells the engine when one is done.
func (e *Engine) openBuilder(ctx context.Context) error {
	b := e.Builder
	if b == nil {
		return nil
	}
	if b.OnChange == nil {
		b.OnChange = e.PayloadsChanged
	}
	if err := b.Open(ctx); err != nil {
		return err
	}
	e.Store.OnFirmwareAdded(b.FirmwareAdded)
	return nil
}

// closeBuilder stops the engine's builder, if it has one.
func (e *Engine) closeBuilder() {
	if e.Builder == nil {
		return
	}
	e.Store.OnFirmwareAdded(nil)
	e.Builder.Close() //nolint:errcheck // it returns nil
}

// withBuilder returns s with b's counters, if there is a builder.
func (s Stats) withBuilder(b *Builder) Stats {
	if b == nil {
		return s
	}
	p := b.Stats()
	s.PayloadsBuilt, s.PayloadsFailed, s.PayloadsSkipped, s.PayloadsRefused, s.PayloadRetries = p.Built, p.Failed, p.Skipped, p.Refused, p.Retries
	return s
}
