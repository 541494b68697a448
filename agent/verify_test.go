package agent

import (
	"crypto/ed25519"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
)

// signedOffer is im's offer signed with key.
func signedOffer(t *testing.T, key ed25519.PrivateKey, im image, update, version string, allowDowngrade bool) protocol.Offer {
	t.Helper()
	of := im.offer(update, 1, version, "m1")
	of.Firmware.AllowDowngrade = allowDowngrade
	sig, err := protocol.SignFirmware(key, of.Firmware)
	require.NoError(t, err)
	of.Firmware.Signature = sig
	return of
}

func newKey(t *testing.T) (ed25519.PublicKey, ed25519.PrivateKey) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(nil)
	require.NoError(t, err)
	return pub, priv
}

// installOK runs a transfer the agent accepted to its reboot into version.
func installOK(t *testing.T, o *orch, a *Agent, im image, handle uint32, version string) {
	t.Helper()
	r := o.expectReport(fleet.StateAccepted)
	require.Equal(t, int64(0), r.Offset)
	o.push("dev-1", handle, im.data, 0)
	for _, st := range []fleet.DeviceState{fleet.StateDownloaded, fleet.StateVerified, fleet.StateInstalling, fleet.StateRebooting} {
		o.expectReport(st)
	}
	h := recv(t, o.hello, "hello after reboot")
	require.Equal(t, version, h.Version)
	eventually(t, func() bool { return a.Stats().Version == version }, "running "+version)
}

// refused checks that the agent answered the last offer with state and
// reason and kept running what it ran.
func refused(t *testing.T, o *orch, a *Agent, state fleet.DeviceState, reason fleet.Reason, version string, installs int) {
	t.Helper()
	r := o.expectReport(state)
	assert.Equal(t, reason, r.Reason)
	eventually(t, func() bool { return a.Stats().LastReason == reason }, "reason in stats")
	s := a.Stats()
	assert.True(t, s.Failed)
	assert.False(t, s.Holding, "nothing held")
	assert.Equal(t, version, s.Version)
	assert.Equal(t, installs, s.Installs)
	assert.Zero(t, s.BytesReceived, "nothing downloaded")
}

func TestAgent_SignedOfferInstalls(t *testing.T) {
	pub, priv := newKey(t)
	o := startOrch(t)
	a := startAgent(t, o, func(c *Config) { c.PublicKey = pub })
	img := newImage(3*testChunk + 10)
	o.offer("dev-1", signedOffer(t, priv, img, "u1", "2.0.0", false))
	installOK(t, o, a, img, 1, "2.0.0")
	assert.Equal(t, 1, a.Stats().Installs)
}

func TestAgent_BadSignatureFails(t *testing.T) {
	pub, priv := newKey(t)
	_, otherPriv := newKey(t)
	img := newImage(2 * testChunk)
	cases := map[string]func(t *testing.T) protocol.Offer{
		"unsigned": func(*testing.T) protocol.Offer { return img.offer("u1", 1, "2.0.0", "m1") },
		"other key": func(t *testing.T) protocol.Offer {
			return signedOffer(t, otherPriv, img, "u1", "2.0.0", false)
		},
		"garbage signature": func(t *testing.T) protocol.Offer {
			of := signedOffer(t, priv, img, "u1", "2.0.0", false)
			of.Firmware.Signature = "not-base64"
			return of
		},
		"version changed after signing": func(t *testing.T) protocol.Offer {
			of := signedOffer(t, priv, img, "u1", "2.0.0", false)
			of.Firmware.Version = "9.0.0"
			return of
		},
		"digest changed after signing": func(t *testing.T) protocol.Offer {
			of := signedOffer(t, priv, newImage(5), "u1", "2.0.0", false)
			of.Firmware.Size, of.Firmware.SHA256 = int64(len(img.data)), img.sha
			return of
		},
		"downgrade permission added after signing": func(t *testing.T) protocol.Offer {
			of := signedOffer(t, priv, img, "u1", "0.9.0", false)
			of.Firmware.AllowDowngrade = true
			return of
		},
	}
	for name, mk := range cases {
		t.Run(name, func(t *testing.T) {
			o := startOrch(t)
			a := startAgent(t, o, func(c *Config) { c.PublicKey = pub })
			o.offer("dev-1", mk(t))
			refused(t, o, a, fleet.StateFailed, fleet.ReasonBadSignature, "1.0.0", 0)

			// The device still installs a good offer afterwards.
			o.offer("dev-1", signedOffer(t, priv, img, "u2", "2.0.0", false))
			installOK(t, o, a, img, 1, "2.0.0")
		})
	}
}

func TestAgent_TamperedImageFailsBadDigest(t *testing.T) {
	// A validly signed offer whose bytes were changed on the way: the
	// digest check stops it before the install.
	pub, priv := newKey(t)
	o := startOrch(t)
	a := startAgent(t, o, func(c *Config) { c.PublicKey = pub })
	img := newImage(3 * testChunk)
	o.offer("dev-1", signedOffer(t, priv, img, "u1", "2.0.0", false))
	o.expectReport(fleet.StateAccepted)
	tampered := append([]byte(nil), img.data...)
	tampered[testChunk+5] ^= 0xff
	o.push("dev-1", 1, tampered, 0)
	o.expectReport(fleet.StateDownloaded)
	r := o.expectReport(fleet.StateFailed)
	assert.Equal(t, fleet.ReasonBadDigest, r.Reason)
	eventually(t, func() bool { return a.Stats().Failed }, "failed in stats")
	s := a.Stats()
	assert.Equal(t, 0, s.Installs)
	assert.Equal(t, "1.0.0", s.Version)
	assert.False(t, s.Holding)
}

func TestAgent_DowngradeRefusedUnlessSigned(t *testing.T) {
	pub, priv := newKey(t)
	o := startOrch(t)
	a := startAgent(t, o, func(c *Config) { c.PublicKey = pub; c.Version = "2.0.0" })
	old := newImage(2*testChunk + 1)

	o.offer("dev-1", signedOffer(t, priv, old, "u1", "1.9.0", false))
	refused(t, o, a, fleet.StateRejected, fleet.ReasonDowngradeRefused, "2.0.0", 0)

	// A version that is not semantic cannot be ordered: refused as well.
	o.offer("dev-1", signedOffer(t, priv, old, "u2", "nightly", false))
	refused(t, o, a, fleet.StateRejected, fleet.ReasonDowngradeRefused, "2.0.0", 0)

	// Signed as allowed, the same image installs.
	o.offer("dev-1", signedOffer(t, priv, old, "u3", "1.9.0", true))
	installOK(t, o, a, old, 1, "1.9.0")
	assert.Equal(t, 1, a.Stats().Installs)
}

func TestAgent_WithoutKeyAcceptsUnsignedAndDowngrades(t *testing.T) {
	// A development device (no public key) checks only the digest.
	o := startOrch(t)
	a := startAgent(t, o, func(c *Config) { c.Version = "2.0.0" })
	img := newImage(testChunk)
	o.offer("dev-1", img.offer("u1", 1, "1.0.0", "m1"))
	installOK(t, o, a, img, 1, "1.0.0")
}
