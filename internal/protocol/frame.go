package protocol

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// HeaderSize is the size of the chunk frame header in bytes.
const HeaderSize = 20

// MaxChunkPayload bounds a frame's payload (64 KiB).
const MaxChunkPayload = 64 * 1024

// Frame flags.
const (
	FlagLast = 1 << 0 // the chunk ends the image
)

// Frame errors.
var (
	ErrShortFrame  = errors.New("frame shorter than its header")
	ErrFrameVer    = errors.New("unsupported frame version")
	ErrFrameLength = errors.New("frame length does not match payload")
	ErrFrameCRC    = errors.New("frame CRC32C mismatch")
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// CRC32C returns the CRC-32C (Castagnoli) of b, as the frame carries it.
func CRC32C(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// Frame is one firmware chunk. Layout (big-endian):
//
//	0      1 byte   version (1)
//	1      1 byte   flags (bit 0: last chunk)
//	2      2 bytes  reserved, zero
//	4      4 bytes  handle of the transfer
//	8      4 bytes  offset of the first payload byte in the image
//	12     4 bytes  payload length
//	16     4 bytes  CRC-32C of the payload
//	20     ...      payload
type Frame struct {
	Flags   byte
	Handle  uint32
	Offset  uint32
	Payload []byte
}

// Last reports whether the chunk ends the image.
func (f Frame) Last() bool { return f.Flags&FlagLast != 0 }

// AppendFrame appends the encoded frame to dst.
func AppendFrame(dst []byte, f Frame) []byte {
	var h [HeaderSize]byte
	h[0] = Version
	h[1] = f.Flags
	binary.BigEndian.PutUint32(h[4:], f.Handle)
	binary.BigEndian.PutUint32(h[8:], f.Offset)
	binary.BigEndian.PutUint32(h[12:], uint32(len(f.Payload)))
	binary.BigEndian.PutUint32(h[16:], CRC32C(f.Payload))
	dst = append(dst, h[:]...)
	return append(dst, f.Payload...)
}

// PutFrameHeader writes the header for payload into b[:HeaderSize]; the
// caller has placed payload at b[HeaderSize:]. It lets the orchestrator read
// the image straight into the message buffer.
func PutFrameHeader(b []byte, flags byte, handle, offset uint32) {
	payload := b[HeaderSize:]
	b[0] = Version
	b[1] = flags
	b[2], b[3] = 0, 0
	binary.BigEndian.PutUint32(b[4:], handle)
	binary.BigEndian.PutUint32(b[8:], offset)
	binary.BigEndian.PutUint32(b[12:], uint32(len(payload)))
	binary.BigEndian.PutUint32(b[16:], CRC32C(payload))
}

// DecodeFrame parses and checks a chunk frame. The payload aliases b.
func DecodeFrame(b []byte) (Frame, error) {
	if len(b) < HeaderSize {
		return Frame{}, ErrShortFrame
	}
	if b[0] != Version {
		return Frame{}, fmt.Errorf("%w: %d", ErrFrameVer, b[0])
	}
	n := binary.BigEndian.Uint32(b[12:])
	if n > MaxChunkPayload || int(n) != len(b)-HeaderSize {
		return Frame{}, fmt.Errorf("%w: header says %d, frame holds %d", ErrFrameLength, n, len(b)-HeaderSize)
	}
	f := Frame{
		Flags:   b[1],
		Handle:  binary.BigEndian.Uint32(b[4:]),
		Offset:  binary.BigEndian.Uint32(b[8:]),
		Payload: b[HeaderSize:],
	}
	if CRC32C(f.Payload) != binary.BigEndian.Uint32(b[16:]) {
		return Frame{}, ErrFrameCRC
	}
	return f, nil
}
