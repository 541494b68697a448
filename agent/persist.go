package agent

import (
	"bytes"
	"crypto/sha256"
	"encoding"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/flotaio/flota/agent/delta"
	"github.com/flotaio/flota/internal/atomicfile"
	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
)

// Persistence: with Config.StateFile set, the agent keeps what a real
// device keeps in flash across a power cycle: the version it runs, the held
// transfer (update, handle, firmware, the offset it holds, its state and the
// running SHA-256 state of the bytes before that offset), the record of the
// last completed update, and its install counter.
//
// Rules:
//   - The agent never reports a state of its held transfer that its file is
//     behind: every state report is preceded by a synchronous save (write to
//     a temporary file, fsync, rename) unless the file holds it already;
//     the downloaded, verified, installing steps, which follow each other
//     at once, are saved once, at installing. After a crash of the process
//     the device is therefore never behind what the orchestrator heard. The
//     one state saved in the background besides checkpoints is the end of a
//     transfer after the reboot hello was acknowledged: if it is lost, the
//     device says that hello again.
//   - During a download the file is saved at checkpoints (CheckpointBytes or
//     CheckpointInterval since the last save), by a background writer, so the
//     data path does not wait for the disk. Each snapshot is taken on the
//     agent's loop, so its offset and hash state always belong together; the
//     writer only ever replaces the file with a newer snapshot. After a crash
//     the device resumes from the last checkpoint, which may be behind the
//     offset it had acknowledged: its offset is authoritative, and the
//     orchestrator sends again from there.
//   - On start a missing file is a fresh device; an unreadable or
//     inconsistent one is logged and ignored (fresh device). A transfer that
//     was downloaded, verified or installing continues after the first hello
//     (the install is simulated again); one that was rebooting boots into the
//     new version and says the reboot hello.

// Defaults of the download checkpoints.
const (
	DefaultCheckpointBytes    = 1 << 20
	DefaultCheckpointInterval = time.Second
)

// stateFileVersion is the format version of a state file.
const stateFileVersion = 1

// stateFile is the JSON form of the state file.
type stateFile struct {
	V       int    `json:"v"`
	ID      string `json:"id"`
	Version string `json:"version"` // version running
	// Image is the SHA-256 of the image running, when known.
	Image    string `json:"image,omitempty"`
	Installs int    `json:"installs"`
	// ImageSHA256 and UpdateTimeNs keep the last transfer's Stats.
	ImageSHA256  string         `json:"image_sha256,omitempty"`
	UpdateTimeNs int64          `json:"update_time_ns,omitempty"`
	Held         *heldRecord    `json:"held,omitempty"`
	Done         *completedFile `json:"done,omitempty"`
}

// heldRecord is a held transfer.
type heldRecord struct {
	Update   string                `json:"update"`
	Handle   uint32                `json:"handle"`
	Firmware protocol.FirmwareInfo `json:"firmware"`
	Offset   int64                 `json:"offset"`
	State    fleet.DeviceState     `json:"state"`
	// HashState is the marshalled SHA-256 of the bytes before Offset, while
	// the image is not verified yet (downloading, downloaded).
	HashState []byte    `json:"hash_state,omitempty"`
	OfferedAt time.Time `json:"offered_at"`
	// An encoded payload's (payload.go): Offset counts its bytes, and
	// while downloading it is the decoder checkpoint's, Target the image
	// bytes before that checkpoint, HashState their SHA-256 state.
	Encoding    string `json:"encoding,omitempty"`
	PayloadSize int64  `json:"payload_size,omitempty"`
	Base        string `json:"base,omitempty"`
	Target      int64  `json:"target,omitempty"`
}

// completedFile is the completed record.
type completedFile struct {
	Update   string `json:"update"`
	Handle   uint32 `json:"handle"`
	Size     int64  `json:"size"`
	Encoding string `json:"encoding,omitempty"`
	Version  string `json:"version"`
}

// snapshot is one encoded state, numbered in the order the loop took it.
type snapshot struct {
	seq  uint64
	data []byte
}

// persister writes an agent's state file.
type persister struct {
	path      string
	log       *slog.Logger
	ckptBytes int64
	ckptEvery time.Duration

	// Owned by the agent's loop goroutine.
	last     []byte    // the newest snapshot handed to the writer
	ckptAt   int64     // held offset in last
	ckptTime time.Time // when last was taken
	resume   bool      // a loaded transfer continues after the first hello

	mu      sync.Mutex // guards seq, pending and writing
	seq     uint64     // number of the newest snapshot
	pending *snapshot  // newest checkpoint not yet taken by the writer
	writing bool       // the background writer goroutine runs

	fileMu  sync.Mutex // serialises writes of the file; guards written
	written uint64     // seq of the snapshot in the file

	wg sync.WaitGroup // the background writer goroutine, while it runs
}

func newPersister(cfg Config, log *slog.Logger) *persister {
	p := &persister{path: cfg.StateFile, log: log, ckptBytes: cfg.CheckpointBytes, ckptEvery: cfg.CheckpointInterval}
	if p.ckptBytes <= 0 {
		p.ckptBytes = DefaultCheckpointBytes
	}
	if p.ckptEvery <= 0 {
		p.ckptEvery = DefaultCheckpointInterval
	}
	return p
}

// loadState creates the persister and restores the state file, if any. It
// runs before the loop starts (or in tests that drive the agent offline).
func (a *Agent) loadState() {
	if a.cfg.StateFile == "" || a.persist != nil {
		return
	}
	p := newPersister(a.cfg, a.logger())
	a.persist = p
	p.ckptTime = time.Now()
	b, err := os.ReadFile(p.path)
	if errors.Is(err, fs.ErrNotExist) {
		return // a fresh device
	}
	if err == nil {
		err = a.restore(b)
	}
	if err != nil {
		a.logger().Warn("state file ignored, starting fresh", "file", p.path, "err", err)
		return
	}
	p.last = b
	p.ckptAt = a.heldOffset()
	a.logger().Info("state restored", "version", a.version, "held", a.heldHello())
}

// restore applies an encoded state file, or changes nothing and returns
// why it cannot.
func (a *Agent) restore(b []byte) error {
	var sf stateFile
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&sf); err != nil {
		return fmt.Errorf("decode: %w", err)
	}
	if sf.V != stateFileVersion {
		return fmt.Errorf("format version %d, want %d", sf.V, stateFileVersion)
	}
	if sf.ID != a.cfg.ID {
		return fmt.Errorf("file of device %q", sf.ID)
	}
	if sf.Version == "" || sf.Installs < 0 {
		return errors.New("no version or negative installs")
	}
	t, err := heldFromFile(sf.Held)
	if err != nil {
		return err
	}
	var done *completed
	if d := sf.Done; d != nil {
		if d.Update == "" || d.Version == "" || d.Size < 0 {
			return errors.New("incomplete completed record")
		}
		done = &completed{update: d.Update, handle: d.Handle, size: d.Size, encoding: d.Encoding, version: d.Version}
	}

	if a.cfg.Device == nil {
		a.version = sf.Version // a Device's version is what it runs: Config.Version
		if sf.Image != "" {
			a.image = sf.Image
		}
	}
	a.done = done
	a.setHeld(t)
	if t != nil {
		switch t.state {
		case fleet.StateRebooting:
			// Boots into it when it connects.
			a.pendingVersion, a.pendingImage = t.fw.Version, strings.ToLower(t.fw.SHA256)
		case fleet.StateDownloaded, fleet.StateVerified, fleet.StateInstalling:
			a.persist.resume = true
		case fleet.StateDownloading:
			a.persist.resume = t.expected == t.size()
		}
	}
	a.updateStats(func(s *Stats) {
		s.Version = a.version
		s.Updated = a.version != a.cfg.Version
		s.Installs = sf.Installs
		s.InstallsBefore = sf.Installs
		s.ImageSHA256 = sf.ImageSHA256
		s.UpdateTime = time.Duration(sf.UpdateTimeNs)
		s.Image = a.image
		if t != nil {
			s.State, s.Encoding = t.state, t.encoding()
		}
	})
	return nil
}

// heldFromFile checks a held record and rebuilds the transfer.
func heldFromFile(h *heldRecord) (*transfer, error) {
	if h == nil {
		return nil, nil
	}
	fw := h.Firmware
	if h.Update == "" || fw.Size < 0 || fw.Size > math.MaxUint32 || h.Offset < 0 {
		return nil, fmt.Errorf("held transfer out of range: update %q offset %d size %d", h.Update, h.Offset, fw.Size)
	}
	t := &transfer{update: h.Update, handle: h.Handle, fw: fw, expected: h.Offset, state: h.State,
		ackEvery: 1, faultAt: -1, cutAt: -1, offeredAt: h.OfferedAt}
	if err := encodedFromFile(t, h); err != nil {
		return nil, err
	}
	size := t.size()
	if h.Offset > size {
		return nil, fmt.Errorf("held transfer out of range: update %q offset %d size %d", h.Update, h.Offset, size)
	}
	switch h.State {
	case fleet.StateDownloading, fleet.StateDownloaded:
		if h.State == fleet.StateDownloaded && h.Offset != size {
			return nil, fmt.Errorf("downloaded at offset %d of %d", h.Offset, size)
		}
		hs := sha256.New()
		if err := hs.(encoding.BinaryUnmarshaler).UnmarshalBinary(h.HashState); err != nil {
			return nil, fmt.Errorf("hash state: %w", err)
		}
		t.hash = hs
	case fleet.StateVerified, fleet.StateInstalling, fleet.StateRebooting:
		if h.Offset != size {
			return nil, fmt.Errorf("%s at offset %d of %d", h.State, h.Offset, size)
		}
	default:
		return nil, fmt.Errorf("held transfer in state %q", h.State)
	}
	return t, nil
}

// encodeState takes a snapshot of what the device holds. It runs on the loop.
func (a *Agent) encodeState() ([]byte, error) {
	s := a.Stats()
	sf := stateFile{V: stateFileVersion, ID: a.cfg.ID, Version: a.version, Installs: s.Installs,
		ImageSHA256: s.ImageSHA256, UpdateTimeNs: int64(s.UpdateTime)}
	if a.cfg.Device == nil {
		sf.Image = a.image // a Device's is read from it at start
	}
	if t := a.held; t != nil {
		h := &heldRecord{Update: t.update, Handle: t.handle, Firmware: t.fw, Offset: t.expected,
			State: t.state, OfferedAt: t.offeredAt}
		if t.enc != nil {
			encodedToFile(t, h)
		} else if t.hash != nil {
			m, ok := t.hash.(encoding.BinaryMarshaler)
			if !ok {
				return nil, errors.New("hash cannot be saved")
			}
			var err error
			if h.HashState, err = m.MarshalBinary(); err != nil {
				return nil, fmt.Errorf("save hash state: %w", err)
			}
		}
		sf.Held = h
	}
	if d := a.done; d != nil {
		sf.Done = &completedFile{Update: d.update, Handle: d.handle, Size: d.size, Encoding: d.encoding, Version: d.version}
	}
	return json.Marshal(sf)
}

// saveState saves the current state unless it is the one saved last: at
// once (sync) or by the background writer.
func (a *Agent) saveState(sync bool) {
	p := a.persist
	if p == nil {
		return
	}
	b, err := a.encodeState()
	if err != nil {
		a.logger().Warn("state not saved", "err", err)
		return
	}
	if bytes.Equal(b, p.last) {
		return
	}
	p.last, p.ckptAt, p.ckptTime = b, a.heldOffset(), time.Now()
	if sync {
		p.writeNow(b)
	} else {
		p.writeLater(b)
	}
}

// checkpoint saves a download in progress in the background when enough
// bytes or time passed since the last save. The last chunk is not
// checkpointed: the downloaded state is saved right after it.
func (a *Agent) checkpoint(t *transfer) {
	p := a.persist
	if p == nil || t.expected >= t.size() {
		return
	}
	if t.expected-p.ckptAt < p.ckptBytes && time.Since(p.ckptTime) < p.ckptEvery {
		return
	}
	if !a.syncImage() {
		return
	}
	a.saveState(false)
}

// resumeHeld continues, after the first hello, a transfer loaded from the
// state file that had passed the download: verify, install (again, as a
// device does after losing power mid-install) and reboot.
func (a *Agent) resumeHeld() {
	p := a.persist
	if p == nil || !p.resume {
		return
	}
	p.resume = false
	t := a.held
	if t == nil {
		return
	}
	switch t.state {
	case fleet.StateDownloading, fleet.StateDownloaded:
		if t.expected == t.size() {
			a.complete()
		}
	case fleet.StateVerified:
		t.state = fleet.StateInstalling
		a.report(protocol.Report{Update: t.update, Handle: t.handle, State: fleet.StateInstalling, Offset: t.expected})
		a.action = actInstall
	case fleet.StateInstalling:
		a.action = actInstall
	}
}

// closeState saves the final state and waits for the background writer.
func (a *Agent) closeState() {
	if a.persist == nil {
		return
	}
	a.saveState(true)
	a.persist.wg.Wait()
}

// writeNow writes b as the newest snapshot and returns when it is durable
// (or failed, which is logged).
func (p *persister) writeNow(b []byte) {
	p.mu.Lock()
	p.seq++
	seq := p.seq
	p.pending = nil // older than b
	p.mu.Unlock()
	p.write(snapshot{seq, b})
}

// writeLater hands b to the background writer, replacing a snapshot it did
// not take yet.
func (p *persister) writeLater(b []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.seq++
	p.pending = &snapshot{p.seq, b}
	if !p.writing {
		p.writing = true
		p.wg.Add(1)
		go p.writer()
	}
}

// writer is the background writer: it writes the pending snapshot until
// there is none, then ends.
func (p *persister) writer() {
	defer p.wg.Done()
	for {
		p.mu.Lock()
		s := p.pending
		p.pending = nil
		if s == nil {
			p.writing = false
			p.mu.Unlock()
			return
		}
		p.mu.Unlock()
		p.write(*s)
	}
}

// write replaces the file with s unless the file holds a newer snapshot.
func (p *persister) write(s snapshot) {
	p.fileMu.Lock()
	defer p.fileMu.Unlock()
	if s.seq <= p.written {
		return
	}
	if err := atomicfile.Write(p.path, s.data, 0o644); err != nil {
		p.log.Warn("state file not written", "file", p.path, "err", err)
		return
	}
	p.written = s.seq
}

// encodedToFile saves an encoded transfer: while downloading, its last
// decoder checkpoint and the hash state at it, not the running ones.
func encodedToFile(t *transfer, h *heldRecord) {
	e := t.enc
	h.Encoding, h.PayloadSize, h.Base = e.encoding, e.size, e.base
	if t.state == fleet.StateDownloading {
		h.Offset, h.Target, h.HashState = e.ckpt.Payload, e.ckpt.Target, e.ckptHash
		return
	}
	h.Target = t.fw.Size
}

// encodedFromFile rebuilds the encoded side of a held record, if it has one.
func encodedFromFile(t *transfer, h *heldRecord) error {
	switch h.Encoding {
	case "":
		return nil
	case protocol.EncodingDeflate, protocol.EncodingBSDiff:
	default:
		return fmt.Errorf("held transfer of encoding %q", h.Encoding)
	}
	if h.PayloadSize <= 0 || h.PayloadSize > math.MaxUint32 || h.Target < 0 || h.Target > t.fw.Size ||
		(h.Encoding == protocol.EncodingBSDiff) != protocol.ValidSHA256(h.Base) {
		return fmt.Errorf("held %s payload out of range: size %d target %d", h.Encoding, h.PayloadSize, h.Target)
	}
	t.enc = &encoded{encoding: h.Encoding, size: h.PayloadSize, base: h.Base,
		ckpt: delta.Checkpoint{Payload: h.Offset, Target: h.Target}, ckptHash: h.HashState, target: h.Target}
	return nil
}
