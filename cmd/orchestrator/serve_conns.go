package main

import (
	"flag"
	"fmt"
	"time"

	"github.com/flotaio/flota/broker"
)

// ConnLimits are the embedded broker's connection limits (broker.Options,
// docs/SECURITY.md "Limits against hostile clients"). Zero values take the
// broker's defaults; a negative one disables a limit.
type ConnLimits struct {
	ConnectTimeout          time.Duration
	MaxConnections          int
	MaxUnauthenticated      int
	MaxUnauthenticatedPerIP int
	MaxConnectSize          int
}

// connLimitFlags adds serve's flags for the broker's connection limits.
func connLimitFlags(fs *flag.FlagSet, c *ConnLimits) {
	fs.DurationVar(&c.ConnectTimeout, "mqtt-connect-timeout", broker.DefaultConnectTimeout, "close an MQTT connection that sends no complete CONNECT within this long (TLS handshake included; negative: no limit)")
	fs.IntVar(&c.MaxConnections, "mqtt-max-connections", 0, "most open MQTT connections; more are closed at once (0: the process's file limit minus an eighth of it, at least 128 kept; -1: no limit)")
	fs.IntVar(&c.MaxUnauthenticated, "mqtt-max-unauthenticated", broker.DefaultMaxUnauthenticated, "most MQTT connections that have not authenticated yet; more are closed at once (-1: no limit)")
	fs.IntVar(&c.MaxUnauthenticatedPerIP, "mqtt-max-unauthenticated-per-ip", broker.DefaultMaxUnauthenticatedPerIP, "most MQTT connections from one address (IPv6: one /64) whose CONNECT has not arrived yet (-1: no limit)")
	fs.IntVar(&c.MaxConnectSize, "mqtt-max-connect-size", broker.DefaultMaxConnectSize, "largest MQTT CONNECT in bytes (remaining length); larger ones are refused before they are read")
}

// apply sets the limits in opts.
func (c ConnLimits) apply(opts *broker.Options) error {
	if c.MaxConnectSize < 0 || c.MaxConnectSize > 1<<28 {
		return fmt.Errorf("--mqtt-max-connect-size %d: want 0 to %d", c.MaxConnectSize, 1<<28)
	}
	opts.ConnectTimeout = c.ConnectTimeout
	opts.MaxConnections = c.MaxConnections
	opts.MaxUnauthenticated = c.MaxUnauthenticated
	opts.MaxUnauthenticatedPerIP = c.MaxUnauthenticatedPerIP
	opts.MaxConnectSize = uint32(c.MaxConnectSize)
	return nil
}
