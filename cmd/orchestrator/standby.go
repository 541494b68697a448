package main

import (
	"flag"
	"fmt"
)

// A standby orchestrator (docs/DEPLOY.md, "Standby and failover"): the
// primary runs beside Litestream, which replicates its database, and
// copies every firmware image to a replica directory; the standby
// restores both and serves against the same external broker, where the
// newest claim fences the other (mqttclient, fence.go).

// standbyFlags declares serve's replication flags.
func standbyFlags(fs *flag.FlagSet, c *Config) {
	fs.BoolVar(&c.Litestream, "litestream", false, "Litestream replicates the database: leave WAL checkpoints to it (SQLite's automatic checkpoints off)")
	fs.StringVar(&c.FirmwareReplica, "firmware-replica", "", "directory that every firmware image is copied to before it is stored, and that missing images are fetched from at start")
}

// Fenced returns a channel closed when a newer orchestrator took over the
// external broker; nil (never ready) with the embedded broker.
func (m *Main) Fenced() <-chan struct{} {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.Client == nil {
		return nil
	}
	return m.Client.Fenced()
}

// closeFenced stops a fenced orchestrator: the engine's last writes go to
// this, stale, database only. It returns the fencing error.
func (m *Main) closeFenced() error {
	err := m.Client.FenceErr()
	m.Logger.Error("stopping: another orchestrator leads the broker; do not restart this one on this data directory", "err", err)
	if cerr := m.Close(); cerr != nil {
		m.Logger.Error("shutdown", "err", cerr)
	}
	return fmt.Errorf("serve: %w", err)
}
