package delta

import (
	"encoding/binary"
	"errors"
	"fmt"
	"index/suffixarray"
	"math"
)

// suffixArray returns the suffix array of data: the start offsets of its
// suffixes in lexicographic order.
//
// The standard library builds it (index/suffixarray, SA-IS, linear time,
// no memory beyond the array) but does not export it; it does serialize it
// with Index.Write, in a format documented only by its source and stable
// since Go 1: the data length as a 10-byte varint, the data, then chunks,
// each a 10-byte varint chunk size (counting those 10 bytes) followed by
// uvarint entries. saParser reads that stream into an []int32 without
// keeping the data. TestSuffixArray_MatchesNaiveSort checks the result, so a
// change of format fails the tests rather than the diffs. Peak memory is
// the library's array and ours: 8×len(data).
func suffixArray(data []byte) ([]int32, error) {
	if len(data) > math.MaxInt32 {
		return nil, fmt.Errorf("%w: %d bytes", ErrTooLarge, len(data))
	}
	p := &saParser{n: -1, sa: make([]int32, 0, len(data))}
	if err := suffixarray.New(data).Write(p); err != nil {
		return nil, fmt.Errorf("delta: suffix array: %w", err)
	}
	if p.n != int64(len(data)) || len(p.sa) != len(data) || p.state != saChunkSize || p.have != 0 {
		return nil, errors.New("delta: suffix array: unexpected serialization")
	}
	return p.sa, nil
}

// saParser states.
const (
	saLength    = iota // reading the 10-byte data length
	saData             // skipping the data
	saChunkSize        // reading a chunk's 10-byte size
	saEntries          // reading a chunk's uvarint entries
)

// saParser is an io.Writer that parses Index.Write's stream, split anyhow.
type saParser struct {
	state int
	n     int64                       // data length
	skip  int64                       // data bytes, then chunk bytes, still to come
	buf   [binary.MaxVarintLen64]byte // a fixed varint or an entry split between writes
	have  int                         // bytes in buf
	sa    []int32
}

func (p *saParser) Write(b []byte) (int, error) {
	total := len(b)
	for len(b) > 0 {
		switch p.state {
		case saLength, saChunkSize:
			k := copy(p.buf[p.have:], b)
			p.have += k
			b = b[k:]
			if p.have < len(p.buf) {
				continue
			}
			v, w := binary.Varint(p.buf[:])
			p.have = 0
			if w <= 0 || v < 0 {
				return 0, errors.New("bad varint")
			}
			if p.state == saLength {
				p.n, p.skip, p.state = v, v, saData
				if p.n > int64(cap(p.sa)) {
					return 0, errors.New("length differs from the data's")
				}
			} else {
				if v < int64(len(p.buf)) {
					return 0, errors.New("bad chunk size")
				}
				p.skip, p.state = v-int64(len(p.buf)), saEntries
			}
		case saData:
			k := min(int64(len(b)), p.skip)
			p.skip -= k
			b = b[k:]
			if p.skip == 0 {
				p.state = saChunkSize
			}
		case saEntries:
			for len(b) > 0 && p.skip > 0 {
				p.buf[p.have] = b[0]
				p.have++
				b = b[1:]
				p.skip--
				if p.buf[p.have-1] >= 0x80 {
					if p.have == len(p.buf) {
						return 0, errors.New("bad entry")
					}
					continue
				}
				v, w := binary.Uvarint(p.buf[:p.have])
				p.have = 0
				if w <= 0 || v >= uint64(p.n) || len(p.sa) == cap(p.sa) {
					return 0, errors.New("bad entry")
				}
				p.sa = append(p.sa, int32(v))
			}
			if p.skip == 0 {
				if p.have != 0 {
					return 0, errors.New("entry split across chunks")
				}
				p.state = saChunkSize
			}
		}
	}
	return total, nil
}
