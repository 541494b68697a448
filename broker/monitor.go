package broker

import (
	"errors"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"

	"github.com/flotaio/flota/internal/fleet"
)

// Monitors and bursts of events.
//
// The engine publishes events in bursts: the store commits them in batches
// of hundreds, and publishes each batch at once. A client's outbound queue
// is sized for a device's window (writesPending), and mochi drops a
// delivery that finds it full, even at QoS 1: a monitor that subscribed to
// flota/events/# at QoS 1 lost events of every large rollout. So a
// monitor's QoS 1 deliveries wait for room in its queue (and under the
// inflight limit) instead (third_party/mochi PATCHES.md), paced by the
// monitor's socket. The wait is bounded, so that a monitor that stops
// reading cannot stall the engine: at most MonitorStall at once, and a
// tenth of the time after that; a monitor that runs out of it is
// disconnected, counted (Stats.SlowMonitors) and logged, so that it knows
// it missed events and catches up from the event log (docs/PROTOCOL.md
// §14). Devices keep the drop: their chunks are acknowledged and resent by
// the protocol, and a chunk must never wait for a slow device.

// DefaultMonitorStall is Options.MonitorStall's default: long enough for a
// monitor on a loaded machine to take a burst of a few thousand events,
// short enough that one that stops reading delays the event stream once.
const DefaultMonitorStall = time.Second

// monitorQueue lets a monitor's QoS 1 deliveries wait for room; it runs at
// authentication, before the client has a session or subscriptions.
func (b *Broker) monitorQueue(cl *mqtt.Client, role fleet.Role) {
	if role == fleet.RoleMonitor && b.opts.MonitorStall > 0 {
		cl.State.QueueFullWait = b.opts.MonitorStall
	}
}

// slowMonitor counts and logs a monitor disconnected for waiting out its
// stall budget.
func (b *Broker) slowMonitor(cl *mqtt.Client) {
	if errors.Is(cl.StopCause(), mqtt.ErrQueueFullWait) {
		b.slowMonitors.Add(1)
		b.log.Warn("monitor disconnected: too slow for its QoS 1 events; it catches up from the event log",
			"client", cl.ID, "remote", cl.Net.Remote, "stall", b.opts.MonitorStall)
	}
}
