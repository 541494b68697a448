package rollout

// DupAckThreshold is how many duplicate acks of one offset make the engine
// conclude that a chunk was lost and go back, as TCP's fast retransmit
// counts three (RFC 5681). One duplicate ack proves nothing: a chunk the
// broker or the link delivered twice draws one from a device that acks
// every chunk, and going back on it resent the whole window for every
// duplicated chunk. A real gap draws one duplicate ack per chunk sent after
// it; a window too small to draw three is recovered by the resend timeout.
const DupAckThreshold = 3

// dupAcks counts the duplicate acks of one offset of one offer.
type dupAcks struct {
	handle uint32
	offset int64
	n      int
}

// gapSignalled counts a duplicate ack of t's acknowledged offset and
// reports whether it is the one that reaches DupAckThreshold.
func (e *Engine) gapSignalled(t *target) bool {
	d := &t.dups
	if d.handle != t.handle || d.offset != t.acked {
		*d = dupAcks{handle: t.handle, offset: t.acked}
	}
	d.n++
	return d.n == DupAckThreshold
}
