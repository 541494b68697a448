package rollout

import (
	"io"

	"github.com/flotaio/flota/agent/delta"
)

// codecCompress and codecDiff make the payloads (package agent/delta, which
// devices decode with): a Builder's defaults.
func codecCompress(dst io.Writer, image io.Reader) (int64, error) { return delta.Compress(dst, image) }

func codecDiff(maxSize int64) func(dst io.Writer, base, target []byte) (int64, error) {
	return func(dst io.Writer, base, target []byte) (int64, error) {
		return delta.Diff(dst, base, target, delta.DiffOptions{MaxSize: maxSize})
	}
}
