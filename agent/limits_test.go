package agent

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
)

func TestAgent_StatesItsLimitsAndRejectsOffersOverThem(t *testing.T) {
	o := startOrch(t)
	a, h := startAgentHello(t, o, func(c *Config) {
		c.MaxChunk, c.MaxWindow, c.Caps = testChunk, 2, []string{"ota-dual-bank"}
	})
	assert.Equal(t, testChunk, h.MaxChunk)
	assert.Equal(t, 2, h.MaxWindow)
	assert.Equal(t, []string{"ota-dual-bank", protocol.EncodingDeflate}, h.Caps, "its own caps, and deflate: every agent inflates")
	img := newImage(3 * testChunk)

	big := img.offer("u1", 1, "2.0.0", "m1")
	big.ChunkSize = 2 * testChunk
	o.offer("dev-1", big)
	r := o.expectReport(fleet.StateRejected)
	assert.Equal(t, fleet.ReasonChunkTooLarge, r.Reason)

	wide := img.offer("u2", 2, "2.0.0", "m1")
	wide.Window = 4
	o.offer("dev-1", wide)
	r = o.expectReport(fleet.StateRejected)
	assert.Equal(t, fleet.ReasonChunkTooLarge, r.Reason)

	// Within the limits it downloads; a frame over max_chunk is dropped
	// unacknowledged, as a device whose buffer cannot hold it would.
	o.offer("dev-1", img.offer("u3", 3, "2.0.0", "m1"))
	o.expectReport(fleet.StateAccepted)
	o.send("dev-1", protocol.KindChunk, protocol.AppendFrame(nil, protocol.Frame{Handle: 3, Payload: img.data[:2*testChunk]}))
	o.chunk("dev-1", 3, img.data, 0)
	o.expectAck(3, testChunk) // a taken oversized frame would have acked 2048 first
	eventually(t, func() bool { return a.Stats().OversizedFrames == 1 }, "oversized frame counted")
	o.push("dev-1", 3, img.data, testChunk)
	o.expectReport(fleet.StateDownloaded)
}

func TestAgent_QuietLimitsAreEnforcedButNotStated(t *testing.T) {
	o := startOrch(t)
	_, h := startAgentHello(t, o, func(c *Config) { c.MaxChunk, c.QuietLimits = testChunk, true })
	assert.Zero(t, h.MaxChunk, "a 1.0 agent states nothing")
	img := newImage(3 * testChunk)
	of := img.offer("u1", 1, "2.0.0", "m1")
	of.ChunkSize = 16 * testChunk
	o.offer("dev-1", of)
	r := o.expectReport(fleet.StateRejected)
	require.Equal(t, fleet.ReasonChunkTooLarge, r.Reason)
}
