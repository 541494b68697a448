package mqtt

import (
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mochi-mqtt/server/v2/listeners"
)

// Most tests give a client one end of a net.Pipe and read the other. What
// the server queues for a client is written by a goroutine of its own,
// started on demand (flota patch), so a test that closed the pipe a fixed
// time after publishing could close it before that goroutine ran, on a
// loaded machine or under the race detector. These helpers wait for what
// such a goroutine does instead, with a deadline that only bounds a hang.

// waitLimit is how long a test waits for another goroutine's work.
const waitLimit = 10 * time.Second

// readPipe reads r until the other end of the pipe is closed and then sends
// all it read.
func readPipe(t *testing.T, r net.Conn) <-chan []byte {
	got := make(chan []byte, 1)
	go func() {
		buf, err := io.ReadAll(r)
		assert.NoError(t, err)
		got <- buf
	}()
	return got
}

// requireWritten waits until every packet queued for each client has been
// written. A write to a net.Pipe returns once the other end has read all of
// it, and the count of queued packets goes down only after the write, so
// from then on the pipe's reader holds all the server wrote for them, and a
// packet queued by mistake is seen, not cut off. A client with nothing
// queued passes at once: that nothing was written needs no wait, since the
// server writes to a client only from the goroutine that called it (which
// has returned) and from its queue.
func requireWritten(t *testing.T, cls ...*Client) {
	t.Helper()
	for _, cl := range cls {
		require.Eventually(t, func() bool { return atomic.LoadInt32(&cl.State.outboundQty) == 0 },
			waitLimit, time.Millisecond, "client %q: queued packets not written", cl.ID)
	}
}

// written runs do, which writes to cl, and returns all the server wrote to
// cl meanwhile and until cl's queue was written, reading r, the test's end
// of cl's pipe; then it closes w, cl's end.
func written(t *testing.T, cl *Client, r, w net.Conn, do func()) []byte {
	t.Helper()
	got := readPipe(t, r)
	do()
	requireWritten(t, cl)
	_ = w.Close()
	return <-got
}

// requireServing waits until l, a mock listener, serves: Server.Serve starts
// each listener in a goroutine of its own.
func requireServing(t *testing.T, l listeners.Listener) {
	t.Helper()
	require.Eventually(t, l.(*listeners.MockListener).IsServing, waitLimit, time.Millisecond, "listener %q not serving", l.ID())
}
