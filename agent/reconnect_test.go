package agent

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

func TestReconnectJitter_PausesBoundedGrowingAndEndsWhenTheClientIsDiscarded(t *testing.T) {
	stale := false
	j := &reconnectJitter{base: 20 * time.Millisecond, stale: func() bool { return stale }}
	for i := 0; i < 3; i++ { // at most 20, 40, 80 ms
		t0 := time.Now()
		j.pause()
		assert.Less(t, time.Since(t0), 20*time.Millisecond<<i+time.Second, "pause %d", i)
	}
	assert.Equal(t, int32(3), j.attempts.Load())
	j.connected()
	assert.Zero(t, j.attempts.Load(), "a connection resets the backoff")

	// A pause of up to 30 s ends within its 100 ms poll once the client
	// is discarded.
	long := &reconnectJitter{base: time.Hour, stale: func() bool { return stale }}
	stale = true
	t0 := time.Now()
	long.pause()
	assert.Less(t, time.Since(t0), 5*time.Second)
}
