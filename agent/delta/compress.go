package delta

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"

	"github.com/klauspost/compress/flate"
)

// compressLevel is the DEFLATE level of every segment. Payloads are made
// once per firmware (or pair of firmwares) and cached, and the device's
// inflate cost does not depend on the level, so the encoder spends the CPU.
//
// The DEFLATE implementation is github.com/klauspost/compress/flate, not
// compress/flate: at this level both make the same sizes (a 10.7 MB
// devicesim in 64 KiB segments: 5,807,412 against 5,814,028 bytes), but
// klauspost's inflater reuses its Huffman tables from block to block where
// compress/flate allocates new ones for every dynamic block (56 KB against
// 184 KB allocated to decode a 5 MB payload), which is what lets the
// decoder's heap stay bounded whatever the payload's length.
const compressLevel = flate.BestCompression

// segmentWriter deflates one segment at a time and frames it.
type segmentWriter struct {
	dst  io.Writer
	n    int64 // payload bytes written
	zw   *flate.Writer
	zbuf bytes.Buffer // the current segment, compressed
	hdr  [binary.MaxVarintLen64]byte
}

func newSegmentWriter(dst io.Writer) (*segmentWriter, error) {
	sw := &segmentWriter{dst: dst}
	zw, err := flate.NewWriter(&sw.zbuf, compressLevel)
	if err != nil {
		return nil, err
	}
	sw.zw = zw
	return sw, nil
}

// segment writes raw (1 to MaxSegmentOutput bytes) as one segment.
func (sw *segmentWriter) segment(raw []byte) error {
	if len(raw) == 0 || len(raw) > MaxSegmentOutput {
		return fmt.Errorf("delta: segment of %d bytes", len(raw))
	}
	sw.zbuf.Reset()
	sw.zw.Reset(&sw.zbuf)
	if _, err := sw.zw.Write(raw); err != nil {
		return err
	}
	if err := sw.zw.Close(); err != nil {
		return err
	}
	if sw.zbuf.Len() > MaxSegmentInput {
		return fmt.Errorf("delta: segment deflates to %d bytes", sw.zbuf.Len())
	}
	h := binary.PutUvarint(sw.hdr[:], uint64(sw.zbuf.Len()))
	if _, err := sw.dst.Write(sw.hdr[:h]); err != nil {
		return err
	}
	if _, err := sw.dst.Write(sw.zbuf.Bytes()); err != nil {
		return err
	}
	sw.n += int64(h + sw.zbuf.Len())
	return nil
}

// Compress writes image to dst as a "deflate" payload: 64 KiB of image per
// segment, each deflated on its own. It returns the payload's size.
func Compress(dst io.Writer, image io.Reader) (int64, error) {
	sw, err := newSegmentWriter(dst)
	if err != nil {
		return 0, err
	}
	buf := make([]byte, MaxSegmentOutput)
	for {
		n, err := io.ReadFull(image, buf)
		if n > 0 {
			if err := sw.segment(buf[:n]); err != nil {
				return sw.n, err
			}
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return sw.n, nil
		}
		if err != nil {
			return sw.n, err
		}
	}
}
