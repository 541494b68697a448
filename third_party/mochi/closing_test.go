package mqtt

import (
	"net"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/mochi-mqtt/server/v2/listeners"
)

// Connections accepted while the server closes are either counted before
// Close waits for its clients or refused; with -race, an Add racing the
// Wait (which attachClient did, flota patch) is reported here.
func TestServerCloseWhileAccepting(t *testing.T) {
	for i := 0; i < 30; i++ {
		s := newServer()
		tcp := listeners.NewTCP(listeners.Config{ID: "t", Address: "127.0.0.1:0"})
		require.NoError(t, s.AddListener(tcp))
		require.NoError(t, s.Serve())
		addr := tcp.Address()

		var wg sync.WaitGroup
		for j := 0; j < 4; j++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for k := 0; k < 20; k++ {
					c, err := net.Dial("tcp", addr)
					if err != nil {
						return // the listener has closed
					}
					_ = c.Close()
				}
			}()
		}
		require.NoError(t, s.Close())
		wg.Wait()
	}
}
