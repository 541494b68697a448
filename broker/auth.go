package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/flotaio/flota/internal/auth"
	"github.com/flotaio/flota/internal/fleet"
)

// Defaults of the per-client-ID rate limit of publishes (Options.RateLimit).
// A device at full speed sends one cumulative ack per half window, far below
// this even for one device taking the broker's whole chunk rate (about
// 25,000 chunks/s, so at most 6,250 acks/s at window 8).
const (
	DefaultRateLimit = 10000 // messages per second, sustained
	DefaultRateBurst = 10000 // messages in a burst
)

// authTimeout bounds one connection's authentication (a store read and,
// when the secret is not cached, an argon2id run queued behind others).
const authTimeout = 30 * time.Second

// clientState is what the broker knows about one connection: its role,
// resolved once at connect so that the ACL check is a map read, and its
// client ID's limits (identity.go), set when its session is established
// and used by the connection's own goroutine only.
type clientState struct {
	role fleet.Role
	id   *identity
	subs subscribeState // limits.go
}

// states maps *mqtt.Client to *clientState.
type states struct{ m sync.Map }

func (s *states) get(cl *mqtt.Client) *clientState {
	v, ok := s.m.Load(cl)
	if !ok {
		return nil
	}
	return v.(*clientState)
}

func (s *states) set(cl *mqtt.Client, st *clientState) { s.m.Store(cl, st) }
func (s *states) drop(cl *mqtt.Client)                 { s.m.Delete(cl) }

// authenticate resolves the role of a connecting client, or refuses it. On a
// TLS listener with a client CA, a verified certificate must name the
// client ID in its common name, and then stands for the secret.
func (b *Broker) authenticate(cl *mqtt.Client, pk packets.Packet) (fleet.Role, error) {
	if !fleet.ValidDeviceID(cl.ID) {
		return "", errors.New("invalid client ID")
	}
	c := auth.Connect{ClientID: cl.ID, Username: string(pk.Connect.Username), Password: pk.Connect.Password}
	if tc, ok := cl.Net.Conn.(*tls.Conn); ok {
		cs := tc.ConnectionState()
		if len(cs.VerifiedChains) > 0 {
			if cn := cs.VerifiedChains[0][0].Subject.CommonName; cn != cl.ID {
				return "", fmt.Errorf("certificate common name %q is not the client ID", cn)
			}
			c.CertVerified = true
		}
	}
	if b.opts.Authenticate == nil {
		return fleet.RoleDevice, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), authTimeout)
	defer cancel()
	role, err := b.opts.Authenticate(ctx, c)
	if err != nil {
		return "", err
	}
	if role == fleet.RoleMonitor && pk.Connect.WillFlag {
		return "", errors.New("a monitor may not set a will")
	}
	return role, nil
}

// Disconnect ends the connection of clientID at once, if it has one (a
// revoked account). It reports whether there was one.
func (b *Broker) Disconnect(clientID string) bool {
	b.mu.Lock()
	cl := b.conns[clientID]
	b.mu.Unlock()
	if cl == nil {
		return false
	}
	b.log.Info("disconnecting client", "client", clientID, "remote", cl.Net.Remote)
	if cl.Properties.ProtocolVersion >= 5 {
		_ = b.srv.DisconnectClient(cl, packets.ErrNotAuthorized) // returns the code it closed with
		return true
	}
	// MQTT 3.1.1 has no DISCONNECT from the server: close the connection.
	cl.Stop(packets.ErrNotAuthorized)
	return true
}
