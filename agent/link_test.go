package agent

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
)

// TestLinkDir_ArrivalTimes checks the link model on a fixed clock: each
// message occupies the link for its size over the rate after the previous
// one, then takes the latency to arrive.
func TestLinkDir_ArrivalTimes(t *testing.T) {
	d := linkDir[int]{rate: 1000, latency: 100 * time.Millisecond}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	d.push(t0, 500, 1)
	d.push(t0, 500, 2)
	d.push(t0.Add(3*time.Second), 250, 3) // the link was idle again
	defer d.reset()
	want := []time.Time{
		t0.Add(600 * time.Millisecond),
		t0.Add(1100 * time.Millisecond),
		t0.Add(3*time.Second + 350*time.Millisecond),
	}
	for i, q := range d.q {
		assert.Equal(t, want[i], q.at, "message %d", i+1)
	}
	assert.Empty(t, d.pop(t0.Add(599*time.Millisecond)))
	assert.Equal(t, []int{1, 2}, d.pop(t0.Add(1100*time.Millisecond)))
	assert.Equal(t, []int{3}, d.pop(t0.Add(time.Hour)))
	assert.Nil(t, d.timer, "no timer for an empty queue")
}

func TestTransmitTime(t *testing.T) {
	assert.Equal(t, time.Second, transmitTime(20000, 20000))
	assert.Equal(t, 50*time.Millisecond, transmitTime(1024, 20480))
	assert.Zero(t, transmitTime(1<<20, 0), "unlimited")
}

// TestAgent_BandwidthLimitsDownload pushes a whole image at once: the
// device cannot take it faster than its link. Only a lower bound is
// asserted, which a slow machine cannot break.
func TestAgent_BandwidthLimitsDownload(t *testing.T) {
	const rate = 8 * testChunk // bytes per second
	o := startOrch(t)
	startAgent(t, o, func(c *Config) { c.Bandwidth = rate })
	img := newImage(8 * testChunk)
	of := img.offer("u1", 3, "2.0.0", "m1")
	of.Window = 16
	o.offer("dev-1", of)
	o.expectReport(fleet.StateAccepted)

	start := time.Now()
	for off := 0; off < len(img.data); off += testChunk {
		o.chunk("dev-1", 3, img.data, off)
	}
	o.expectReport(fleet.StateDownloaded)
	elapsed := time.Since(start)
	assert.GreaterOrEqual(t, elapsed, transmitTime(len(img.data), rate),
		"%d bytes at %d B/s took %s", len(img.data), rate, elapsed)
}

// TestAgent_LatencyAddsToRoundTrip: an offer and the report it causes each
// take the one-way latency.
func TestAgent_LatencyAddsToRoundTrip(t *testing.T) {
	const latency = 150 * time.Millisecond
	o := startOrch(t)
	a := startAgent(t, o, func(c *Config) { c.Latency = latency })
	img := newImage(2 * testChunk)

	start := time.Now()
	o.offer("dev-1", img.offer("u1", 3, "2.0.0", "m1"))
	o.expectReport(fleet.StateAccepted)
	rtt := time.Since(start)
	assert.GreaterOrEqual(t, rtt, 2*latency, "round trip %s", rtt)

	// The rest of the update works through the delayed link.
	o.push("dev-1", 3, img.data, 0)
	o.expectInstallAndReboot("2.0.0")
	eventually(t, func() bool { return a.Stats().UpdateTime > 0 }, "update settled")
}

// driveWithReoffers pushes img like the orchestrator does: chunks from the
// acked offset, and after a hello mid-transfer a new offer with a new handle,
// then chunks from the offset the device reports. It returns the offsets
// the device resumed from.
func driveWithReoffers(t *testing.T, o *orch, img image) []int64 {
	t.Helper()
	handle := uint32(5)
	of := img.offer("u1", handle, "2.0.0", "m1")
	o.offer("dev-1", of)
	o.expectReport(fleet.StateAccepted)
	off := 0
	var resumed []int64
	for off < len(img.data) {
		o.chunk("dev-1", handle, img.data, off)
		select {
		case ack := <-o.ack:
			if ack.Handle == handle {
				off = int(ack.Offset)
			}
		case h := <-o.hello:
			assert.Equal(t, "1.0.0", h.Version)
			handle++
			of.Handle = handle
			o.offer("dev-1", of)
			r := o.expectReport(fleet.StateAccepted)
			off = int(r.Offset)
			resumed = append(resumed, r.Offset)
		case <-time.After(waitTimeout):
			t.Fatal("no ack or hello")
		}
	}
	o.expectInstallAndReboot("2.0.0")
	return resumed
}

// expectInstallAndReboot expects the reports from downloaded to rebooting
// and the hello on version after the reboot.
func (o *orch) expectInstallAndReboot(version string) {
	o.t.Helper()
	for _, st := range []fleet.DeviceState{fleet.StateDownloaded, fleet.StateVerified, fleet.StateInstalling, fleet.StateRebooting} {
		o.expectReport(st)
	}
	h := recv(o.t, o.hello, "hello after reboot")
	assert.Equal(o.t, version, h.Version)
}

// TestAgent_RebootMidDownload: the device loses power once mid-transfer;
// with a state file it resumes from its last checkpoint, without one from
// scratch, and either way ends on the new version with one install.
func TestAgent_RebootMidDownload(t *testing.T) {
	for _, persistent := range []bool{true, false} {
		name := map[bool]string{true: "resumes from checkpoint", false: "starts again without state"}[persistent]
		t.Run(name, func(t *testing.T) {
			o := startOrch(t)
			img := newImage(16 * testChunk)
			a := startAgent(t, o, func(c *Config) {
				c.Faults.RebootMidDownload = 1
				c.Seed = 3
				if persistent {
					c.StateFile = filepath.Join(t.TempDir(), "dev-1.json")
					c.CheckpointBytes = 2 * testChunk
					c.CheckpointInterval = time.Hour
				}
			})
			resumed := driveWithReoffers(t, o, img)
			require.Len(t, resumed, 1, "one power cut per transfer")
			if persistent {
				assert.Positive(t, resumed[0], "resumed from a checkpoint")
				assert.Zero(t, resumed[0]%(2*testChunk), "checkpoint offsets are multiples of CheckpointBytes")
			} else {
				assert.Zero(t, resumed[0])
			}
			eventually(t, func() bool { return a.Stats().UpdateTime > 0 }, "update settled")
			s := a.Stats()
			assert.Equal(t, 1, s.PowerCuts)
			assert.Equal(t, 1, s.Installs)
			assert.Equal(t, img.sha, s.ImageSHA256)
			assert.Equal(t, "2.0.0", s.Version)
			assert.Equal(t, s.UpdateTime, s.EndTime)
		})
	}
}

// TestAgent_FailureRecordsEndTime: a failed transfer has an end time, for
// the summary's per-device times.
func TestAgent_FailureRecordsEndTime(t *testing.T) {
	a, _ := newOfflineAgent(Config{ID: "dev-1", Model: "m", Version: "1", Seed: 1, Faults: Faults{FailInstall: 1}})
	img := newImage(testChunk)
	a.handleDown(protocol.KindOffer, offerMsg(img, "u1", 1))
	sendChunks(a, img, 1, 0, len(img.data))
	s := a.Stats()
	assert.True(t, s.Failed)
	assert.Equal(t, fleet.ReasonInstallFailed, s.LastReason)
	assert.Positive(t, s.EndTime)
}

// TestAgent_DisconnectFaultOnDelayedLink: an injected disconnect waits for
// the last report still on the uplink, and the transfer resumes from the
// offset the device held.
func TestAgent_DisconnectFaultOnDelayedLink(t *testing.T) {
	o := startOrch(t)
	img := newImage(16 * testChunk)
	a := startAgent(t, o, func(c *Config) {
		c.Faults.Disconnect = 1
		c.Latency = 5 * time.Millisecond
		c.Bandwidth = 1 << 20
	})
	resumed := driveWithReoffers(t, o, img)
	require.Len(t, resumed, 1, "one disconnect per transfer")
	assert.Positive(t, resumed[0], "the device kept its bytes")
	eventually(t, func() bool { return a.Stats().UpdateTime > 0 }, "update settled")
	assert.Equal(t, 1, a.Stats().Installs)
	assert.Zero(t, a.Stats().PowerCuts)
}
