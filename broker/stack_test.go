package broker

import (
	"os"
	"os/exec"
	"runtime/debug"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"
)

// stackChildEnv marks the child process of
// TestBroker_ClientPathsFitInSmallStacks.
const stackChildEnv = "FLOTA_BROKER_STACK_CHILD"

// A connection's goroutine runs every packet its client sends through
// mochi's call chain, whose frames hold 816-byte packets by value. When
// that chain needed 64 KiB (a first SUBSCRIBE to a filter four levels deep
// walked the retained messages with 5 KiB per level), every connecting
// device grew its stack four times and the collector shrank it again,
// at a cost in CPU and in memory counted against the soft limit.
//
// The test runs a broker in a child process whose goroutines may not grow
// their stacks beyond 16 KiB (32 KiB under the race detector, whose
// instrumentation makes frames larger): connect, SUBSCRIBE with a retained
// message to walk, publishes at QoS 0 and 1 to an inline subscriber, down
// publishes at both QoS, and a disconnect. A path that needs more crashes
// the child with "goroutine stack exceeds" and the stack that did.
func TestBroker_ClientPathsFitInSmallStacks(t *testing.T) {
	limit := 16 << 10
	if raceEnabled {
		limit = 32 << 10
	}
	if os.Getenv(stackChildEnv) == "" {
		cmd := exec.Command(os.Args[0], "-test.run=^TestBroker_ClientPathsFitInSmallStacks$", "-test.count=1", "-test.v")
		cmd.Env = append(os.Environ(), stackChildEnv+"="+strconv.Itoa(limit))
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "child with stacks limited to %d bytes:\n%s", limit, out)
		require.Contains(t, string(out), "--- PASS: TestBroker_ClientPathsFitInSmallStacks", "%s", out)
		return
	}

	b, _ := openBroker(t, Options{}, nil)
	var in inbox
	require.NoError(t, b.Subscribe("flota/devices/+/up/#", in.inline))
	c0 := dial(t, b, "dev-0")
	publish(t, c0, "flota/devices/dev-0/up/status", 1, true, `{"v":1,"online":true}`) // a retained message to walk

	debug.SetMaxStack(limit)
	c := dial(t, b, "dev-1")
	subscribe(t, c, "flota/devices/dev-1/down/#", 1, in.paho)
	subscribe(t, c, "flota/devices/+/up/#", 1, in.paho) // finds dev-0's retained status
	in.waitTopic(t, "flota/devices/dev-0/up/status")
	publish(t, c, "flota/devices/dev-1/up/status", 1, true, `{"v":1,"online":true}`)
	publish(t, c, "flota/devices/dev-1/up/hello", 1, false, `{"v":1}`)
	publish(t, c, "flota/devices/dev-1/up/ack", 0, false, `{"v":1}`)
	in.waitTopic(t, "flota/devices/dev-1/up/ack")
	require.NoError(t, b.Publish("flota/devices/dev-1/down/chunk", make([]byte, 16384), false, 0))
	require.NoError(t, b.Publish("flota/devices/dev-1/down/offer", make([]byte, 300), false, 1))
	in.waitTopic(t, "flota/devices/dev-1/down/offer")
	c.Disconnect(50)
}
