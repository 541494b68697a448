package agent

import (
	"time"
)

// Power cuts (Faults.RebootMidDownload): once per transfer, at a random
// offset, the device loses power. It loses what it held in RAM (the
// transfer, the running hash, whatever was on the link) and keeps what it
// had written to flash: with Config.StateFile, the state file as the last
// checkpoint left it (persist.go); without, only the version it runs. It
// boots again after RebootDelay, says hello with what it kept, and the
// orchestrator re-offers the update: the download resumes from the
// checkpoint's offset, or starts again from 0.
//
// The MQTT connection is closed by paho, which sends a DISCONNECT: the
// presence status stays as it was until the device is back online (the
// orchestrator's broker hooks see the connection end either way).

// powerState is what the agent remembers across a power cut for the fault
// injection itself (not device state). Owned by the loop goroutine.
type powerState struct {
	// cutUpdate is the update whose transfer had its power cut, so that
	// the transfer started again after it is not cut once more.
	cutUpdate string
	// cutOfferedAt is when that update was first offered: a transfer that
	// starts again from scratch keeps counting its time from there.
	cutOfferedAt time.Time
}

// rollPowerCut picks the offset at which t's power is cut, or -1.
func (a *Agent) rollPowerCut(t *transfer) int64 {
	p := a.cfg.Faults.RebootMidDownload
	if p <= 0 || t.size() == 0 || a.power.cutUpdate == t.update || a.rng.Float64() >= p {
		return -1
	}
	return a.rng.Int64N(t.size())
}

// powerCut loses the device's RAM state, closes the connection and
// schedules the boot after RebootDelay.
func (a *Agent) powerCut() {
	a.logger().Info("power cut", "offset", a.heldOffset())
	if t := a.held; t != nil {
		a.power.cutUpdate, a.power.cutOfferedAt = t.update, t.offeredAt
	}
	// Nothing more leaves the device: no offline status, no waiting for
	// the last report.
	a.online = false
	a.connTok = nil
	a.lastReport = nil
	a.action = actNone
	a.gen.Add(1)
	a.resetLink()
	for _, t := range []**time.Timer{&a.installTimer, &a.helloTimer, &a.reconnTimer} {
		if *t != nil {
			(*t).Stop()
			*t = nil
		}
	}
	if a.client != nil {
		a.client.Disconnect(0)
		a.client = nil
	}
	a.updateStats(func(s *Stats) { s.Connected = false; s.PowerCuts++ })
	a.loseRAM()
	a.reconnTimer = time.NewTimer(a.cfg.RebootDelay)
}

// loseRAM drops the held transfer and reloads what flash holds.
func (a *Agent) loseRAM() {
	a.setHeld(nil)
	a.pendingVersion, a.pendingImage = "", ""
	if a.persist == nil {
		return // only the running version survives
	}
	// The checkpoints already handed to the writer reach the file; then
	// the device starts from the file, as after a crash of the process.
	a.persist.wg.Wait()
	before := a.Stats().InstallsBefore
	a.persist = nil
	a.done = nil
	a.loadState()
	a.updateStats(func(s *Stats) { s.InstallsBefore = before })
}

// armPowerCut rolls t's power cut, and makes a transfer that starts again
// after one count its time from the first offer.
func (a *Agent) armPowerCut(t *transfer) {
	t.cutAt = a.rollPowerCut(t)
	if a.power.cutUpdate == t.update && !a.power.cutOfferedAt.IsZero() {
		t.offeredAt = a.power.cutOfferedAt
	}
	a.lastOffer = offerMark{update: t.update, at: t.offeredAt}
}
