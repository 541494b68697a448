package rollout

import (
	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
)

// maxDeclines is how many hellos on the target version may answer a forced
// offer before the device counts as having declined the reinstall. The first
// may be a reconnect that crossed the offer: it is offered once more.
const maxDeclines = 2

// declinedReinstall handles the hello of an offered device that already
// runs the target version of a forced update and holds nothing of it. A
// device that follows docs/PROTOCOL.md §5.4 rule 2 answers such an offer
// with its hello instead of a report; offering again would only bring the
// same hello back, forever. After maxDeclines such hellos the device is
// skipped (already_current) and its slot goes to the next device. It
// reports whether the hello was used up.
func (e *Engine) declinedReinstall(t *target, h protocol.Hello) bool {
	r := t.r
	if !r.u.Policy.Force || t.p.State != fleet.StateOffered || t.cancelling != "" || h.Version != r.fw.Version {
		return false
	}
	t.declined++
	if t.declined < maxDeclines {
		return false // offered again by the caller
	}
	e.setState(t, fleet.StateSkipped, fleet.ReasonAlreadyCurrent)
	e.admit(r)
	return true
}
