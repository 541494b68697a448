package main

import (
	"net"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
)

func TestUpdateWatch_GivesUpAfterReconnectFor(t *testing.T) {
	// The server answers once, then goes away for good: watch says it
	// reconnects, then gives up once --reconnect-for has passed.
	fake := &fakeEngineAPI{summaries: []fleet.UpdateSummary{summary(fleet.UpdateRunning, map[fleet.DeviceState]int{fleet.StateQueued: 4})}}
	var ts *httptest.Server
	ts = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fake.ServeHTTP(w, r)
		go ts.Close() // after this answer, nothing listens
	}))
	t.Cleanup(ts.Close)
	r := runCLI(t, ts.URL, "update", "watch", "upd-1", "--interval", "1ms", "--reconnect-for", "600ms")
	assert.Equal(t, exitFail, r.code)
	assert.Contains(t, r.stderr, "lost the orchestrator")
	assert.Contains(t, r.stderr, "attempt 2", "it retries with a pause between attempts")
	assert.Contains(t, r.stderr, "gave up reconnecting after 600ms (--reconnect-for)")
}

func TestUpdateEventsFollow_UnreachableAtStartFailsAtOnce(t *testing.T) {
	// Retrying is for a server that went away, not for a wrong --server.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	r := runCLI(t, "http://"+addr, "update", "events", "upd-1", "--follow")
	assert.Equal(t, exitFail, r.code)
	assert.Contains(t, r.stderr, "cannot reach the orchestrator")
	assert.NotContains(t, r.stderr, "reconnecting")
}
