package rollout

import "io"

// SetCodec replaces the builder's encoders, for tests that make a build
// fail or wait.
func (b *Builder) SetCodec(compress func(io.Writer, io.Reader) (int64, error), diff func(io.Writer, []byte, []byte) (int64, error)) {
	b.compress, b.diff = compress, diff
}
