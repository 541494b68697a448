//go:build !unix

package broker

// fdLimit returns 0: the limit is not known here, so the connection cap
// is not derived from it.
func fdLimit() uint64 { return 0 }
