package auth

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
	"github.com/flotaio/flota/internal/sqlite"
)

func TestNewSecret_IsRandom128BitBase64URL(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		s := NewSecret()
		assert.Len(t, s, 22)
		assert.True(t, ValidSecret(s), s)
		assert.False(t, seen[s])
		seen[s] = true
	}
	assert.False(t, ValidSecret("short"))
	assert.False(t, ValidSecret(strings.Repeat("a", 21)+":"))
	assert.False(t, ValidSecret(strings.Repeat("a", MaxSecretLen+1)))
}

func TestHash_VerifiesOnlyItsSecret(t *testing.T) {
	h := Hash("correct-horse-battery-staple")
	assert.True(t, strings.HasPrefix(h, "$argon2id$v=19$m=512,t=1,p=1$"), h)
	assert.NotEqual(t, h, Hash("correct-horse-battery-staple"), "salted")
	ok, err := Verify("correct-horse-battery-staple", h)
	require.NoError(t, err)
	assert.True(t, ok)
	ok, err = Verify("correct-horse-battery-stapl", h)
	require.NoError(t, err)
	assert.False(t, ok)
	for _, bad := range []string{"", "$argon2i$v=19$m=512,t=1,p=1$c2FsdA$a2V5", "$argon2id$v=19$m=0,t=1,p=1$c2FsdA$a2V5",
		"$argon2id$v=19$m=512,t=1,p=1$!!$a2V5", "$argon2id$v=18$m=512,t=1,p=1$c2FsdA$a2V5"} {
		_, err := Verify("x", bad)
		assert.Error(t, err, bad)
	}
}

func openStore(t testing.TB) *sqlite.Store {
	t.Helper()
	st := sqlite.New(t.TempDir())
	require.NoError(t, st.Open())
	t.Cleanup(func() { _ = st.Close() })
	return st
}

func connect(id, password string) Connect {
	return Connect{ClientID: id, Username: id, Password: []byte(password)}
}

func TestAccounts_CachedSecretNeedsNoStore(t *testing.T) {
	st := openStore(t)
	a := &Accounts{Store: st}
	ctx := context.Background()
	issued, err := a.Add(ctx, fleet.RoleDevice, []string{"dev-1", "dev-2"})
	require.NoError(t, err)
	role, err := a.Authenticate(ctx, connect("dev-1", issued[0].Secret))
	require.NoError(t, err)
	assert.Equal(t, fleet.RoleDevice, role)
	assert.Equal(t, 1, a.Cached())

	require.NoError(t, st.Close())
	role, err = a.Authenticate(ctx, connect("dev-1", issued[0].Secret))
	require.NoError(t, err, "a cached secret is checked in memory")
	assert.Equal(t, fleet.RoleDevice, role)
	_, err = a.Authenticate(ctx, connect("dev-1", issued[1].Secret))
	assert.Error(t, err, "another secret is not the cached one")
	_, err = a.Authenticate(ctx, connect("dev-2", issued[1].Secret))
	assert.ErrorIs(t, err, fleet.ErrClosed, "an uncached account reads the store")
}

func TestAccounts_RefusalReasons(t *testing.T) {
	a := &Accounts{Store: openStore(t)}
	ctx := context.Background()
	issued, err := a.Add(ctx, fleet.RoleMonitor, []string{"ops"})
	require.NoError(t, err)
	secret := issued[0].Secret

	_, err = a.Authenticate(ctx, Connect{ClientID: "ops"})
	assert.ErrorIs(t, err, ErrNoCredentials)
	_, err = a.Authenticate(ctx, Connect{ClientID: "dev-9", Username: "ops", Password: []byte(secret)})
	assert.ErrorIs(t, err, ErrUsernameMismatch, "no account can use another client ID")
	_, err = a.Authenticate(ctx, connect("ops", secret+"x"))
	assert.ErrorIs(t, err, ErrBadSecret)
	_, err = a.Authenticate(ctx, connect("nobody", secret))
	assert.ErrorIs(t, err, ErrUnknownAccount)
	role, err := a.Authenticate(ctx, connect("ops", secret))
	require.NoError(t, err)
	assert.Equal(t, fleet.RoleMonitor, role)

	_, err = a.Add(ctx, fleet.RoleDevice, []string{"ops"})
	assert.ErrorIs(t, err, fleet.ErrCredentialExists, "devices and monitors share one namespace")
	_, err = a.Add(ctx, fleet.RoleDevice, []string{"inline"})
	assert.ErrorIs(t, err, fleet.ErrInvalidInput)

	require.NoError(t, a.Revoke(ctx, fleet.RoleMonitor, "ops"))
	assert.Zero(t, a.Cached(), "revocation forgets the cached secret")
	_, err = a.Authenticate(ctx, connect("ops", secret))
	assert.ErrorIs(t, err, ErrRevoked)
	assert.ErrorIs(t, a.Revoke(ctx, fleet.RoleDevice, "ops"), fleet.ErrCredentialNotFound, "a monitor is not revoked as a device")
}

func TestAccounts_AnonymousModeStillChecksGivenCredentials(t *testing.T) {
	a := &Accounts{Store: openStore(t), AllowAnonymous: true}
	ctx := context.Background()
	role, err := a.Authenticate(ctx, Connect{ClientID: "dev-1"})
	require.NoError(t, err)
	assert.Equal(t, fleet.RoleDevice, role)
	_, err = a.Authenticate(ctx, connect("dev-1", "not-the-secret-0123456789"))
	assert.ErrorIs(t, err, ErrUnknownAccount)

	_, err = a.Add(ctx, fleet.RoleDevice, []string{"dev-2"})
	require.NoError(t, err)
	_, err = a.Authenticate(ctx, Connect{ClientID: "dev-2"})
	assert.ErrorIs(t, err, ErrNoCredentials, "an account's ID is never anonymous")
}

func TestAccounts_EnrollmentPendingUntilApproved(t *testing.T) {
	a := &Accounts{Store: openStore(t), EnrollToken: "fleet-token-0123456789abcdef"}
	ctx := context.Background()
	secret := NewSecret()
	pw := protocol.EnrollPassword(a.EnrollToken, secret)

	_, err := a.Authenticate(ctx, connect("new-1", protocol.EnrollPassword("wrong", secret)))
	assert.ErrorIs(t, err, ErrBadEnrollToken)
	_, err = a.Authenticate(ctx, connect("new-1", protocol.EnrollPassword(a.EnrollToken, "weak")))
	assert.Error(t, err, "a weak device secret is refused")
	_, err = a.Authenticate(ctx, connect("new-1", pw))
	assert.ErrorIs(t, err, ErrPending)
	_, err = a.Authenticate(ctx, connect("new-1", pw))
	assert.ErrorIs(t, err, ErrPending)
	assert.ErrorIs(t, a.Approve(ctx, "nope"), fleet.ErrCredentialNotFound)

	require.NoError(t, a.Approve(ctx, "new-1"))
	assert.ErrorIs(t, a.Approve(ctx, "new-1"), fleet.ErrIllegalTransition, "only a pending device is approved")
	role, err := a.Authenticate(ctx, connect("new-1", pw))
	require.NoError(t, err)
	assert.Equal(t, fleet.RoleDevice, role)
	_, err = a.Authenticate(ctx, connect("new-1", protocol.EnrollPassword(a.EnrollToken, NewSecret())))
	assert.ErrorIs(t, err, ErrBadSecret, "the token cannot replace an enrolled device's secret")

	auto := &Accounts{Store: openStore(t), EnrollToken: "fleet-token-0123456789abcdef", AutoApprove: true}
	_, err = auto.Authenticate(ctx, connect("new-2", pw))
	assert.NoError(t, err)
}

func TestAccounts_RevokeDuringVerificationIsNotCached(t *testing.T) {
	a := &Accounts{Store: openStore(t)}
	ctx := context.Background()
	issued, err := a.Add(ctx, fleet.RoleDevice, []string{"dev-1"})
	require.NoError(t, err)
	// A verification that read the store before a revocation must not
	// cache its answer after it.
	a.init()
	gen := a.c.generation()
	require.NoError(t, a.Revoke(ctx, fleet.RoleDevice, "dev-1"))
	a.c.put("dev-1", issued[0].Secret, fleet.RoleDevice, gen)
	_, err = a.Authenticate(ctx, connect("dev-1", issued[0].Secret))
	assert.ErrorIs(t, err, ErrRevoked)
}

func TestAccounts_ConcurrentConnectionsOfManyDevices(t *testing.T) {
	a := &Accounts{Store: openStore(t)}
	ctx := context.Background()
	ids := make([]string, 50)
	for i := range ids {
		ids[i] = "dev-" + string(rune('a'+i%26)) + string(rune('a'+i/26))
	}
	issued, err := a.Add(ctx, fleet.RoleDevice, ids)
	require.NoError(t, err)
	var wg sync.WaitGroup
	for range 3 {
		for _, is := range issued {
			wg.Go(func() {
				_, err := a.Authenticate(ctx, connect(is.ID, is.Secret))
				assert.NoError(t, err)
			})
		}
	}
	wg.Wait()
	assert.Equal(t, len(ids), a.Cached())
}

// BenchmarkAuthenticate compares a first connection (argon2id verification
// and a store read) with a reconnection whose secret is cached.
func BenchmarkAuthenticate(b *testing.B) {
	a := &Accounts{Store: openStore(b)}
	ctx := context.Background()
	issued, err := a.Add(ctx, fleet.RoleDevice, []string{"dev-1"})
	require.NoError(b, err)
	c := connect("dev-1", issued[0].Secret)
	b.Run("cold", func(b *testing.B) {
		for b.Loop() {
			a.c.forget("dev-1")
			if _, err := a.Authenticate(ctx, c); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("cached", func(b *testing.B) {
		for b.Loop() {
			if _, err := a.Authenticate(ctx, c); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkHash is the cost of hashing one secret (provisioning, enrollment).
func BenchmarkHash(b *testing.B) {
	s := NewSecret()
	for b.Loop() {
		Hash(s)
	}
}

func TestAccounts_RevokedMonitorNameCanBeGivenAgainWithANewSecret(t *testing.T) {
	a := &Accounts{Store: openStore(t)}
	ctx := context.Background()
	first, err := a.Add(ctx, fleet.RoleMonitor, []string{"ops"})
	require.NoError(t, err)
	_, err = a.Authenticate(ctx, connect("ops", first[0].Secret))
	require.NoError(t, err) // cached now
	_, err = a.Add(ctx, fleet.RoleMonitor, []string{"ops"})
	assert.ErrorIs(t, err, fleet.ErrCredentialExists, "an active account is not replaced")

	require.NoError(t, a.Revoke(ctx, fleet.RoleMonitor, "ops"))
	second, err := a.Add(ctx, fleet.RoleMonitor, []string{"ops"})
	require.NoError(t, err, "a revoked name is free again")
	role, err := a.Authenticate(ctx, connect("ops", second[0].Secret))
	require.NoError(t, err)
	assert.Equal(t, fleet.RoleMonitor, role)
	_, err = a.Authenticate(ctx, connect("ops", first[0].Secret))
	assert.ErrorIs(t, err, ErrBadSecret, "the revoked secret stays refused")

	// A device's revocation is permanent, and no role takes another's name.
	_, err = a.Add(ctx, fleet.RoleDevice, []string{"dev-1"})
	require.NoError(t, err)
	require.NoError(t, a.Revoke(ctx, fleet.RoleDevice, "dev-1"))
	for _, role := range []fleet.Role{fleet.RoleDevice, fleet.RoleMonitor} {
		_, err = a.Add(ctx, role, []string{"dev-1"})
		assert.ErrorIs(t, err, fleet.ErrCredentialExists, role)
	}
	require.NoError(t, a.Revoke(ctx, fleet.RoleMonitor, "ops"))
	_, err = a.Add(ctx, fleet.RoleDevice, []string{"ops"})
	assert.ErrorIs(t, err, fleet.ErrCredentialExists, "a revoked monitor's name is not a device's")
}
