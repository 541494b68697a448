package delta

import (
	"encoding/binary"
	"fmt"
	"io"
)

// DefaultMaxDiffSize is DiffOptions.MaxSize when it is zero. At this size
// Diff's peak is about 8×64 MiB = 512 MiB beside the two images.
const DefaultMaxDiffSize = 64 << 20

// DiffOptions bound Diff.
type DiffOptions struct {
	// MaxSize is the largest base or target Diff accepts, in bytes
	// (DefaultMaxDiffSize if zero); over it Diff returns an error
	// wrapping ErrTooLarge before allocating anything. Beside the two
	// images its caller holds, Diff allocates a suffix array of the base
	// (4 bytes a byte) and, while the standard library builds it, a
	// second one, and about 1 MiB for the compressor: a peak of about
	// 8×len(base) (BenchmarkDiff measures 8.1 to 8.2 on 7 to 14 MB
	// images, 9.4 on 1 MiB).
	MaxSize int64
}

// maxOpHeader is the longest operation header: a 3-byte n<<1|kind (n is at
// most 64 Ki) and a 10-byte base offset.
const maxOpHeader = 3 + binary.MaxVarintLen64

// Diff writes to dst a "bsdiff" payload that turns base into target, and
// returns its size.
//
// It is Colin Percival's bsdiff search: for each position of the target the
// longest match in the base (binary search over the base's suffix array),
// accepted when it is more than 8 bytes better than carrying on with the
// previous alignment; the previous match is then extended forwards and the
// new one backwards as long as at least half the bytes agree, which is what
// absorbs the changed addresses scattered through recompiled code. Extended
// matches become ADD operations (the byte differences from the base, mostly
// zeros, which deflate well), the rest COPY operations; unlike bsdiff's
// relative seeks, every ADD names its absolute base offset, so that segments
// stand alone. A payload larger than Compress's is still returned: the
// caller compares.
//
// Diff runs on the calling goroutine alone (one core). It writes dst a
// segment at a time, so a caller that must stop it (a shutdown) makes dst's
// Write fail: Diff returns that error at the next segment, or once the
// suffix array is built (about a second for 10 MB).
func Diff(dst io.Writer, base, target []byte, opt DiffOptions) (int64, error) {
	maxSize := opt.MaxSize
	if maxSize <= 0 {
		maxSize = DefaultMaxDiffSize
	}
	if int64(len(base)) > maxSize || int64(len(target)) > maxSize {
		return 0, fmt.Errorf("%w: base of %d and target of %d bytes, at most %d each", ErrTooLarge, len(base), len(target), maxSize)
	}
	sw, err := newSegmentWriter(dst)
	if err != nil {
		return 0, err
	}
	ow := &opWriter{sw: sw, raw: make([]byte, 0, MaxSegmentOutput)}
	var sa []int32
	if len(base) > 0 {
		if sa, err = suffixArray(base); err != nil {
			return 0, err
		}
	}
	if err := bsdiff(ow, sa, base, target); err != nil {
		return sw.n, err
	}
	if err := ow.flush(); err != nil {
		return sw.n, err
	}
	return sw.n, nil
}

// bsdiff finds the approximate matches and hands them to ow.
func bsdiff(ow *opWriter, sa []int32, old, new []byte) error {
	oldsize, newsize := len(old), len(new)
	var scan, pos, n, lastscan, lastpos, lastoffset int
	for scan < newsize {
		oldscore := 0
		scan += n
		for scsc := scan; scan < newsize; scan++ {
			n, pos = search(sa, old, new[scan:])
			for ; scsc < scan+n; scsc++ {
				if scsc+lastoffset < oldsize && old[scsc+lastoffset] == new[scsc] {
					oldscore++
				}
			}
			if (n == oldscore && n != 0) || n > oldscore+8 {
				break
			}
			if scan+lastoffset < oldsize && old[scan+lastoffset] == new[scan] {
				oldscore--
			}
		}
		if n == oldscore && scan != newsize {
			continue
		}
		// Extend the previous match forwards...
		var lenf int
		for i, s, sf := 0, 0, 0; lastscan+i < scan && lastpos+i < oldsize; {
			if old[lastpos+i] == new[lastscan+i] {
				s++
			}
			i++
			if s*2-i > sf*2-lenf {
				sf, lenf = s, i
			}
		}
		// ...and the new one backwards...
		var lenb int
		if scan < newsize {
			for i, s, sb := 1, 0, 0; scan >= lastscan+i && pos >= i; i++ {
				if old[pos-i] == new[scan-i] {
					s++
				}
				if s*2-i > sb*2-lenb {
					sb, lenb = s, i
				}
			}
		}
		// ...and split their overlap where it fits best.
		if lastscan+lenf > scan-lenb {
			overlap := lastscan + lenf - (scan - lenb)
			s, ss, lens := 0, 0, 0
			for i := range overlap {
				if new[lastscan+lenf-overlap+i] == old[lastpos+lenf-overlap+i] {
					s++
				}
				if new[scan-lenb+i] == old[pos-lenb+i] {
					s--
				}
				if s > ss {
					ss, lens = s, i+1
				}
			}
			lenf += lens - overlap
			lenb -= lens
		}
		if err := ow.add(lastpos, old[lastpos:lastpos+lenf], new[lastscan:lastscan+lenf]); err != nil {
			return err
		}
		if err := ow.copy(new[lastscan+lenf : scan-lenb]); err != nil {
			return err
		}
		lastscan, lastpos, lastoffset = scan-lenb, pos-lenb, pos-scan
	}
	return nil
}

// search returns the longest prefix of new found in old, and where: a
// binary search of the suffix array. Unlike bsdiff's, it orders a suffix
// that is a proper prefix of new before new, as lexicographic order does,
// so it converges on the longest match rather than the shortest one (in a
// run of zeros, bsdiff's finds 2-byte matches); and it skips the bytes both
// bounds are known to share with new (Manber and Myers' accelerant), so a
// long match costs its length once rather than at every step.
func search(sa []int32, old, new []byte) (n, pos int) {
	if len(sa) == 0 || len(new) == 0 {
		return 0, 0
	}
	st, en := 0, len(sa)-1
	lcpSt := matchlen(old[sa[st]:], new)
	lcpEn := matchlen(old[sa[en]:], new)
	for en-st >= 2 {
		x := st + (en-st)/2
		o := old[sa[x]:]
		k := min(lcpSt, lcpEn)
		m := k + matchlen(o[k:], new[k:])
		switch {
		case m == len(new):
			return m, int(sa[x])
		case m == len(o) || o[m] < new[m]:
			st, lcpSt = x, m
		default:
			en, lcpEn = x, m
		}
	}
	if lcpSt > lcpEn {
		return lcpSt, int(sa[st])
	}
	return lcpEn, int(sa[en])
}

// matchlen is the length of the common prefix of a and b.
func matchlen(a, b []byte) int {
	n := min(len(a), len(b))
	i := 0
	for i+8 <= n && binary.LittleEndian.Uint64(a[i:]) == binary.LittleEndian.Uint64(b[i:]) {
		i += 8
	}
	for i < n && a[i] == b[i] {
		i++
	}
	return i
}

// opWriter packs operations into segments of at most MaxSegmentOutput
// bytes of operations (and so of target).
type opWriter struct {
	sw  *segmentWriter
	raw []byte // the current segment's operations
}

func (ow *opWriter) flush() error {
	if len(ow.raw) == 0 {
		return nil
	}
	err := ow.sw.segment(ow.raw)
	ow.raw = ow.raw[:0]
	return err
}

// room returns how many data bytes the next operation can carry in the
// current segment, flushing it if it is full.
func (ow *opWriter) room() (int, error) {
	free := MaxSegmentOutput - len(ow.raw) - maxOpHeader
	if free < 1 {
		if err := ow.flush(); err != nil {
			return 0, err
		}
		free = MaxSegmentOutput - maxOpHeader
	}
	return free, nil
}

// add writes ADD operations: target = base (old, from offset o) + diff.
func (ow *opWriter) add(o int, old, new []byte) error {
	for len(new) > 0 {
		free, err := ow.room()
		if err != nil {
			return err
		}
		k := min(free, len(new))
		ow.raw = binary.AppendUvarint(ow.raw, uint64(k)<<1|opAdd)
		ow.raw = binary.AppendUvarint(ow.raw, uint64(o))
		for i := range k {
			ow.raw = append(ow.raw, new[i]-old[i])
		}
		o += k
		old, new = old[k:], new[k:]
	}
	return nil
}

// copy writes COPY operations: target = lit.
func (ow *opWriter) copy(lit []byte) error {
	for len(lit) > 0 {
		free, err := ow.room()
		if err != nil {
			return err
		}
		k := min(free, len(lit))
		ow.raw = binary.AppendUvarint(ow.raw, uint64(k)<<1|opCopy)
		ow.raw = append(ow.raw, lit[:k]...)

		lit = lit[k:]
	}
	return nil
}
