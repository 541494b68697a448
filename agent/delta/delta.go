// Package delta encodes and decodes the payloads an update can carry instead
// of the plain image: the image compressed ("deflate") or the difference
// from an image the device already runs ("bsdiff").
//
// Both payloads are a sequence of independent segments, each a uvarint
// length and that many bytes of raw DEFLATE (RFC 1951) that inflate to at
// most 64 KiB. A deflate segment inflates to the next bytes of the image; a
// bsdiff segment to a run of operations that each name an absolute offset in
// the base image, so no segment needs anything from the one before it. That
// is what lets a device decode while the payload arrives, with random reads
// of the base and sequential writes of the target, and resume after a power
// cut at the last segment boundary it wrote (Decoder.Checkpoint). The byte
// layout is in docs/PROTOCOL.md; why these formats, in docs/ARCHITECTURE.md.
//
// Memory. Diff holds base, target and a suffix array of the base (see
// DiffOptions for the bound and the limit). A decoder needs the 32 KiB
// inflate window, the inflater's tables and a few small buffers: in C with
// a tinf/uzlib-class inflater, under 40 KiB (docs/PROTOCOL.md). This Go
// decoder allocates about 48 KiB when it starts and nothing per segment,
// whatever the payload's length, plus its coroutine's stack;
// TestDecoder_HeapStaysUnderBoundWhileDecodingMiBs asserts
// DecoderMemoryBound.
package delta

import (
	"errors"
)

// Encoding names, as in protocol.EncodingDeflate and protocol.EncodingBSDiff.
const (
	Deflate = "deflate"
	BSDiff  = "bsdiff"
)

// Limits of the payload format; a payload that breaks one is corrupt.
const (
	// MaxSegmentOutput is the most bytes a segment inflates to, and so
	// the most target bytes it produces: a decoder never holds more than
	// one segment's worth of progress that a power cut can lose.
	MaxSegmentOutput = 64 << 10
	// MaxSegmentInput is the most compressed bytes in one segment: the
	// longest a stored (incompressible) 64 KiB block can be, with margin.
	MaxSegmentInput = MaxSegmentOutput + 1024
)

// DecoderMemoryBound bounds the heap a Decoder allocates in its life,
// whatever the payload: klauspost's inflater (its 32 KiB window and Huffman
// tables, which it reuses from block to block, where compress/flate
// allocates new ones), two 1 KiB operation buffers and the coroutine.
const DecoderMemoryBound = 64 << 10

var (
	// ErrCorrupt is wrapped by every error a decoder returns for a payload
	// that is not well formed: a bad varint, a segment over its limits, a
	// base offset out of range, an inflate error, a payload that ends
	// mid-segment or a target longer than expected. Nothing decoded from
	// such a payload may be installed.
	ErrCorrupt = errors.New("corrupt payload")
	// ErrTooLarge is wrapped by Diff's error when an input is over
	// DiffOptions.MaxSize.
	ErrTooLarge = errors.New("image too large to diff")
	// ErrEncoding is returned by NewDecoder for an encoding it does not
	// know, or bsdiff without a base.
	ErrEncoding = errors.New("unknown payload encoding")
)

// Checkpoint is a segment boundary of a payload: where decoding can restart
// once the target holds exactly its first Target bytes.
type Checkpoint struct {
	Payload int64 // payload offset of the next segment: where a resume restarts
	Target  int64 // target bytes produced before it
}
