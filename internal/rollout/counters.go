package rollout

import "github.com/flotaio/flota/internal/fleet"

// Transfer counters (docs/PROTOCOL.md §14.2).
//
// bytes_acked counts each byte of each device's payload once per attempt:
// a device's high-water mark (target.credited) says how much of its
// current attempt is counted, and only an offset past it adds to the
// counter, whether it comes from an ack, from the offset a device accepts
// a re-offer with (bytes it got before an ack was lost, or before a
// restart) or from a report that it holds the whole image (the bytes sent
// of them: a device cannot have what it was not sent). Re-offers,
// duplicate acks and resumes therefore count nothing twice, and nothing
// the device holds is left out. The counters are saved with the progress
// checkpoints; a crash loses what changed since the last one, and
// restoring brings bytes_acked back to at least what the stored offsets
// say the devices hold, and bytes_sent to at least bytes_acked, so that
// the devices' offsets on resume credit the rest.
//
// resends counts the chunks sent again within an attempt, whatever made
// the engine send them again: a gap, an ack timeout or a re-offer whose
// accept starts below what was sent before (target.sentMax).

// credit counts the bytes of t's current attempt up to offset in the
// run's bytes acked, each once.
func (r *run) credit(t *target, offset int64) {
	offset = min(offset, t.size())
	if offset > t.credited {
		r.bytesAcked += offset - t.credited
		t.credited = offset
		// Bytes a device accepts a re-offer with that this process did
		// not send were sent before a restart, whose count the crash
		// may have lost.
		r.bytesSent = max(r.bytesSent, r.bytesAcked)
	}
}

// restoredCredit is the part of its current attempt a stored device is
// known to hold: its stored offset, which every change of state saves (the
// image size from downloaded on).
func restoredCredit(p fleet.Progress, size int64) int64 {
	return min(p.Offset, size)
}

// restoreCounters brings the stored counters, saved at the last checkpoint,
// up to what the stored progress proves.
func (r *run) restoreCounters() {
	var held int64
	for _, t := range r.targets {
		held += t.credited
	}
	r.bytesAcked = max(r.bytesAcked, held)
	r.bytesSent = max(r.bytesSent, r.bytesAcked)
	r.rateBytes = r.bytesAcked
}
