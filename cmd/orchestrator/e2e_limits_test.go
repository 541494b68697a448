package main

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
)

// limitsSummary is the part of devicesim's summary about device limits.
type limitsSummary struct {
	OversizedFrames int `json:"oversized_frames"`
	DevicesDetail   []struct {
		ID          string `json:"id"`
		MaxChunk    int    `json:"max_chunk"`
		ImageSHA256 string `json:"image_sha256"`
		Reason      string `json:"reason"`
	} `json:"devices_detail"`
}

func (sm *sim) limits(t *testing.T) limitsSummary {
	t.Helper()
	b, err := os.ReadFile(sm.summary)
	require.NoError(t, err)
	var ls limitsSummary
	require.NoError(t, json.Unmarshal(b, &ls))
	return ls
}

func TestE2E_DevicesThatState1KiBChunksUpdateFromA16KiBUpdate(t *testing.T) {
	s := startServer(t)
	// Every second device takes 1 KiB chunks, 4 at a time, and says so.
	mixed := startSim(t, s, "--devices", "8", "--id-prefix", "mixed-", "--model", "sim-a",
		"--max-chunk", "1024", "--max-window", "4", "--limited-every", "2")
	// A 1.0 agent with a 1 KiB buffer states nothing: it rejects the offer.
	quiet := startSim(t, s, "--devices", "1", "--id-prefix", "quiet-", "--model", "sim-a",
		"--max-chunk", "1024", "--quiet-limits")
	s.waitOnline(9)
	fw, digest := s.firmware(100*1024, "1.1.0")
	id := strings.TrimSpace(s.mustCLI("update", "create", "--firmware", fw, "--chunk-size", "16384"))
	s.cli("update", "watch", id, "--interval", "200ms")

	st := s.status(id)
	assert.Equal(t, 8, st.Counts[fleet.StateSucceeded])
	assert.Equal(t, 1, st.Counts[fleet.StateRejected])
	var rejected []fleet.Progress
	require.NoError(t, json.Unmarshal([]byte(s.mustCLI("update", "devices", id, "--state", "rejected", "--json")), &rejected))
	require.Len(t, rejected, 1)
	assert.Equal(t, "quiet-00001", rejected[0].DeviceID)
	assert.Equal(t, fleet.ReasonChunkTooLarge, rejected[0].Reason)

	assert.Equal(t, 8, mixed.stop(t).Updated)
	ls := mixed.limits(t)
	assert.Zero(t, ls.OversizedFrames, "no device was sent a frame over its limit")
	limited := 0
	for _, d := range ls.DevicesDetail {
		assert.Equal(t, digest, d.ImageSHA256, d.ID)
		if d.MaxChunk == 1024 {
			limited++
		}
	}
	assert.Equal(t, 4, limited)
	q := quiet.stop(t)
	assert.Equal(t, 0, q.Updated)
	assert.Equal(t, 1, q.Failed)
}

func TestE2E_SlowFlashDevicesPaceTheWindowWithMaxWindow(t *testing.T) {
	s := startServer(t)
	// 16 KiB written in 300 ms, blocking before each ack. With the update's
	// window of 32, the first ack would come after 16 writes (4.8 s), past
	// the 2 s ack timeout, and whole windows would be sent again (measured
	// 2.5 times the image's bytes). The devices state a window of 8: the
	// first ack comes after 4 writes (1.2 s).
	slow := startSim(t, s, "--devices", "4", "--id-prefix", "slow-", "--model", "sim-a",
		"--flash-rate", "54613", "--max-window", "8")
	s.waitOnline(4)
	fw, digest := s.firmware(512*1024, "1.1.0")
	start := time.Now()
	id := strings.TrimSpace(s.mustCLI("update", "create", "--firmware", fw, "--chunk-size", "16384", "--window", "32"))
	_, code := s.cli("update", "watch", id, "--interval", "200ms")
	require.Zero(t, code)
	st := s.status(id)
	assert.Equal(t, 4, st.Counts[fleet.StateSucceeded])
	t.Logf("4 devices, 512 KiB each at 54,613 B/s of flash: %s, %d bytes sent for %d acked, %d chunks resent",
		time.Since(start).Round(100*time.Millisecond), st.BytesSent, st.BytesAcked, st.Resends)
	assert.Less(t, st.BytesSent, st.BytesAcked*3/2, "the window paced the devices: no whole windows sent again")
	assert.Equal(t, 4, slow.stop(t).Updated)
	for _, d := range slow.limits(t).DevicesDetail {
		assert.Equal(t, digest, d.ImageSHA256, d.ID)
	}
}
