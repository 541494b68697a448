package delta

import (
	"errors"
	"fmt"
	"io"
	"iter"

	"github.com/klauspost/compress/flate"
)

// Operations in a bsdiff segment: a uvarint n<<1|kind, then for opAdd a
// uvarint base offset, then n bytes.
const (
	opCopy = 0 // n literal target bytes
	opAdd  = 1 // target[i] = base[o+i] + d[i], n bytes d
)

// opBuf is the size of the decoder's base and data buffers.
const opBuf = 1 << 10

// errStopped unwinds the decoding coroutine when the decoder is closed
// before the payload ended.
var errStopped = errors.New("delta: decoder closed")

// Decoder reconstructs a target image from a payload written to it in
// order, in pieces of any size. It writes the target to its output in
// order, as each piece allows, and reads the base (bsdiff) at random.
//
// The inflater pulls its input, while payload bytes are pushed by Write;
// the decoding loop runs as a coroutine (iter.Pull) that Write resumes
// with each piece and that yields when it has used it all. Only the caller's
// goroutine and that coroutine, never both at once, touch the decoder; a
// Decoder is for one goroutine at a time.
type Decoder struct {
	encoding string
	base     io.ReaderAt
	baseSize int64
	out      io.Writer

	expect int64 // target size the payload must produce, -1 if not set

	cp      Checkpoint // last segment boundary fully written
	payload int64      // payload bytes consumed by the decoding loop
	target  int64      // target bytes written to out

	in  []byte // the unread part of the piece Write is handing over
	eof bool   // Close: no more payload
	err error  // first error; sticky

	next func() (struct{}, bool)
	stop func()
	done bool // the decoding loop returned

	seg  segmentReader
	zr   io.ReadCloser
	obuf [opBuf]byte
	bbuf [opBuf]byte
}

// NewDecoder returns a decoder that reconstructs the target from a payload
// of the given encoding (Deflate or BSDiff), writing target bytes in order
// to out; base (baseSize bytes) is read at random, nil for Deflate. To
// resume, pass the Checkpoint a previous decoder reached, write the payload
// from from.Payload on, and make sure out continues after exactly
// from.Target bytes of target. Call Close in every case: it ends the
// decoding coroutine.
func NewDecoder(encoding string, base io.ReaderAt, baseSize int64, out io.Writer, from Checkpoint) (*Decoder, error) {
	switch encoding {
	case Deflate:
	case BSDiff:
		if base == nil && baseSize != 0 {
			return nil, fmt.Errorf("%w: bsdiff needs a base", ErrEncoding)
		}
	default:
		return nil, fmt.Errorf("%w: %q", ErrEncoding, encoding)
	}
	if baseSize < 0 || from.Payload < 0 || from.Target < 0 {
		return nil, fmt.Errorf("delta: negative size or checkpoint")
	}
	d := &Decoder{
		encoding: encoding,
		base:     base,
		baseSize: baseSize,
		out:      out,
		expect:   -1,
		cp:       from,
		payload:  from.Payload,
		target:   from.Target,
	}
	d.seg.d = d
	d.next, d.stop = iter.Pull(d.run)
	return d, nil
}

// ExpectTarget makes the decoder treat as corrupt a payload whose target
// is longer than size bytes, or (at Close) shorter. Call it before Write.
func (d *Decoder) ExpectTarget(size int64) {
	d.expect = size
}

// Write decodes payload bytes p, which follow the ones written before; it
// uses all of p unless it fails. The target bytes p completes are written
// to out before it returns, but for a few the inflater may hold until the
// next piece; Checkpoint counts only bytes written.
func (d *Decoder) Write(p []byte) (int, error) {
	if d.err != nil {
		return 0, d.err
	}
	if d.eof {
		return 0, errors.New("delta: write after close")
	}
	if len(p) == 0 {
		return 0, nil
	}
	if d.done {
		d.err = corrupt("data after the last segment")
		return 0, d.err
	}
	d.in = p
	d.resume()
	n := len(p) - len(d.in)
	d.in = nil
	if d.err != nil {
		return n, d.err
	}
	return n, nil
}

// resume runs the decoding loop until it wants more input or ends.
func (d *Decoder) resume() {
	if _, ok := d.next(); !ok {
		d.done = true
	}
}

// Checkpoint returns the last segment boundary whose target bytes have all
// been written to out: persist it (after making out durable) to resume.
// It moves when a segment ends, before the decoder writes any byte of the
// next one, so out's Write may call it to note the state of its output at
// exactly Checkpoint().Target bytes (a running hash, say).
func (d *Decoder) Checkpoint() Checkpoint {
	return d.cp
}

// Close ends decoding. It returns an error wrapping ErrCorrupt if the
// payload ended mid-segment (or short of ExpectTarget), and the first error
// Write returned if there was one. After a dropped link the caller may
// ignore the error and resume from Checkpoint.
func (d *Decoder) Close() error {
	if !d.eof {
		d.eof = true
		if d.err == nil && !d.done {
			d.resume()
		}
		d.stop()
	}
	if d.err == nil && d.expect >= 0 && d.target != d.expect {
		d.err = corrupt(fmt.Sprintf("target of %d bytes, %d expected", d.target, d.expect))
	}
	return d.err
}

func corrupt(what string) error {
	return fmt.Errorf("%w: %s", ErrCorrupt, what)
}

// run is the decoding loop, run as a coroutine: it yields when it has used
// all the input Write handed over, and returns at the end of the payload or
// at the first error, which it leaves in d.err.
func (d *Decoder) run(yield func(struct{}) bool) {
	d.seg.yield = yield
	for {
		start := d.payload
		l, err := d.seg.uvarint()
		if err == io.EOF && d.payload == start {
			return // the payload ends at a segment boundary
		}
		if err != nil {
			d.fail(err, "segment length")
			return
		}
		if l == 0 || l > MaxSegmentInput {
			d.fail(corrupt(fmt.Sprintf("segment of %d bytes", l)), "")
			return
		}
		if err := d.segment(int(l)); err != nil {
			d.fail(err, "")
			return
		}
		d.cp = Checkpoint{Payload: d.payload, Target: d.target}
	}
}

// fail records err, turning a payload that ends early into corruption.
func (d *Decoder) fail(err error, what string) {
	switch {
	case errors.Is(err, errStopped):
		return
	case err == io.EOF || err == io.ErrUnexpectedEOF:
		err = corrupt("payload ends mid-segment")
	case what != "" && !errors.Is(err, ErrCorrupt):
		err = corrupt(what + ": " + err.Error())
	}
	d.err = err
}

// segment decodes one segment of l compressed bytes.
func (d *Decoder) segment(l int) error {
	d.seg.left = l
	if d.zr == nil {
		d.zr = flate.NewReader(&d.seg)
	} else if err := d.zr.(flate.Resetter).Reset(&d.seg, nil); err != nil {
		return err
	}
	in := inflated{r: d.zr, seg: &d.seg}
	var err error
	if d.encoding == Deflate {
		err = d.copyOut(&in, MaxSegmentOutput+1, true)
	} else {
		err = d.ops(&in)
	}
	if err != nil {
		return err
	}
	if in.n == 0 {
		return corrupt("empty segment")
	}
	if d.seg.left != 0 {
		return corrupt("data after the end of a segment's deflate stream")
	}
	return nil
}

// ops decodes the operations of a bsdiff segment.
func (d *Decoder) ops(in *inflated) error {
	for {
		h, err := in.uvarint()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return in.wrap(err, "operation")
		}
		kind, n := h&1, h>>1
		if n == 0 || n > MaxSegmentOutput {
			return corrupt(fmt.Sprintf("operation of %d bytes", n))
		}
		if kind == opCopy {
			if err := d.copyOut(in, int(n), false); err != nil {
				return err
			}
			continue
		}
		o, err := in.uvarint()
		if err != nil {
			return in.wrap(err, "base offset")
		}
		if o > uint64(d.baseSize) || n > uint64(d.baseSize)-o {
			return corrupt(fmt.Sprintf("base range %d+%d outside a base of %d bytes", o, n, d.baseSize))
		}
		if err := d.add(in, int64(o), int(n)); err != nil {
			return err
		}
	}
}

// copyOut writes n bytes of the inflated stream to out; with toEOF, up to
// n-1 bytes until the stream ends.
func (d *Decoder) copyOut(in *inflated, n int, toEOF bool) error {
	for n > 0 {
		k, err := in.Read(d.obuf[:min(n, len(d.obuf))])
		if k > 0 {
			if err := d.emit(d.obuf[:k]); err != nil {
				return err
			}
			n -= k
		}
		if err == io.EOF && (toEOF || n == 0) {
			return nil
		}
		if err != nil {
			what := "literal bytes"
			if toEOF {
				what = "segment content"
			}
			return in.wrap(err, what)
		}
	}
	if toEOF {
		return corrupt("segment inflates to more than 64 KiB")
	}
	return nil
}

// add writes n bytes of base from offset o plus the inflated differences.
func (d *Decoder) add(in *inflated, o int64, n int) error {
	for n > 0 {
		k := min(n, len(d.obuf))
		if _, err := io.ReadFull(in, d.obuf[:k]); err != nil {
			return in.wrap(err, "add bytes")
		}
		if m, err := d.base.ReadAt(d.bbuf[:k], o); m < k {
			if err == nil {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("delta: read base at %d: %w", o, err)
		}
		for i := range k {
			d.obuf[i] += d.bbuf[i]
		}
		if err := d.emit(d.obuf[:k]); err != nil {
			return err
		}
		o += int64(k)
		n -= k
	}
	return nil
}

// emit writes target bytes to out.
func (d *Decoder) emit(p []byte) error {
	if d.expect >= 0 && int64(len(p)) > d.expect-d.target {
		return corrupt(fmt.Sprintf("target longer than %d bytes", d.expect))
	}
	if _, err := d.out.Write(p); err != nil {
		return fmt.Errorf("delta: write target: %w", err)
	}
	d.target += int64(len(p))
	return nil
}

// segmentReader hands the inflater the compressed bytes of the current
// segment (left of them), and the decoding loop the segment headers,
// yielding to Write for more.
type segmentReader struct {
	d     *Decoder
	yield func(struct{}) bool
	left  int // bytes of the current segment not yet read
}

// more waits for input: false at the end of the payload.
func (s *segmentReader) more() (bool, error) {
	for len(s.d.in) == 0 {
		if s.d.eof {
			return false, nil
		}
		if !s.yield(struct{}{}) {
			return false, errStopped
		}
	}
	return true, nil
}

// byte reads the next payload byte, whatever segment it belongs to.
func (s *segmentReader) byte() (byte, error) {
	ok, err := s.more()
	if err != nil {
		return 0, err
	}
	if !ok {
		return 0, io.EOF
	}
	c := s.d.in[0]
	s.d.in = s.d.in[1:]
	s.d.payload++
	return c, nil
}

// uvarint reads a segment header.
func (s *segmentReader) uvarint() (uint64, error) {
	var x uint64
	for i := 0; ; i++ {
		c, err := s.byte()
		if err != nil {
			if i > 0 && err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return 0, err
		}
		if i == 9 && c > 1 {
			return 0, corrupt("segment length overflows")
		}
		x |= uint64(c&0x7f) << (7 * i)
		if c < 0x80 {
			return x, nil
		}
	}
}

// ReadByte gives the inflater the segment's next byte; io.EOF at its end
// (the inflater turns that into an error if its stream is not complete).
func (s *segmentReader) ReadByte() (byte, error) {
	if s.left == 0 {
		return 0, io.EOF
	}
	c, err := s.byte()
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		return 0, err
	}
	s.left--
	return c, nil
}

// Read is ReadByte for the inflater's io.Reader side; it never reads past
// the segment.
func (s *segmentReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if s.left == 0 {
		return 0, io.EOF
	}
	ok, err := s.more()
	if err != nil {
		return 0, err
	}
	if !ok {
		return 0, io.ErrUnexpectedEOF
	}
	n := copy(p, s.d.in[:min(len(s.d.in), s.left)])
	s.d.in = s.d.in[n:]
	s.d.payload += int64(n)
	s.left -= n
	return n, nil
}

// inflated is the inflated stream of one segment, counted against
// MaxSegmentOutput.
type inflated struct {
	r   io.Reader
	seg *segmentReader
	n   int // bytes inflated so far
	one [1]byte
}

func (in *inflated) Read(p []byte) (int, error) {
	if len(p) > MaxSegmentOutput+1-in.n {
		p = p[:MaxSegmentOutput+1-in.n]
	}
	if len(p) == 0 {
		return 0, corrupt("segment inflates to more than 64 KiB")
	}
	n, err := in.r.Read(p)
	in.n += n
	if in.n > MaxSegmentOutput {
		return n, corrupt("segment inflates to more than 64 KiB")
	}
	return n, err
}

// uvarint reads an operation's varint: io.EOF only before its first byte.
func (in *inflated) uvarint() (uint64, error) {
	var x uint64
	for i := 0; ; i++ {
		if _, err := io.ReadFull(in, in.one[:]); err != nil {
			if i > 0 && err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return 0, err
		}
		c := in.one[0]
		if i == 9 && c > 1 {
			return 0, corrupt("varint overflows")
		}
		x |= uint64(c&0x7f) << (7 * i)
		if c < 0x80 {
			return x, nil
		}
	}
}

// wrap turns an error from the inflated stream into corruption, except a
// stop of the coroutine.
func (in *inflated) wrap(err error, what string) error {
	if errors.Is(err, errStopped) || errors.Is(err, ErrCorrupt) {
		return err
	}
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return corrupt(what + " cut short")
	}
	return corrupt(what + ": " + err.Error())
}
