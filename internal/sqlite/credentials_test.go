package sqlite

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
)

func TestCredentials_AddAllOrNoneAndChangeStatus(t *testing.T) {
	s := newTestStore(t, t.TempDir())
	ctx := context.Background()
	dev := fleet.Credential{ID: "dev-1", Role: fleet.RoleDevice, Status: fleet.CredentialActive, Hash: "h1"}
	mon := fleet.Credential{ID: "ops", Role: fleet.RoleMonitor, Status: fleet.CredentialActive, Hash: "h2"}
	require.NoError(t, s.AddCredentials(ctx, []fleet.Credential{dev, mon}))

	dup := fleet.Credential{ID: "dev-2", Role: fleet.RoleDevice, Status: fleet.CredentialActive, Hash: "h3"}
	err := s.AddCredentials(ctx, []fleet.Credential{dup, {ID: "ops", Role: fleet.RoleDevice, Status: fleet.CredentialActive}})
	require.ErrorIs(t, err, fleet.ErrCredentialExists)
	_, err = s.Credential(ctx, "dev-2")
	require.ErrorIs(t, err, fleet.ErrCredentialNotFound, "a failed batch adds nothing")

	got, err := s.Credential(ctx, "dev-1")
	require.NoError(t, err)
	assert.Equal(t, "h1", got.Hash)
	assert.Equal(t, fleet.RoleDevice, got.Role)
	assert.False(t, got.CreatedAt.IsZero())

	_, err = s.SetCredentialStatus(ctx, "dev-1", fleet.CredentialActive, fleet.CredentialPending)
	require.ErrorIs(t, err, fleet.ErrIllegalTransition)
	before, err := s.SetCredentialStatus(ctx, "dev-1", fleet.CredentialRevoked)
	require.NoError(t, err)
	assert.Equal(t, fleet.CredentialActive, before.Status)
	_, err = s.SetCredentialStatus(ctx, "nope", fleet.CredentialRevoked)
	require.ErrorIs(t, err, fleet.ErrCredentialNotFound)

	list, err := s.ListCredentials(ctx, fleet.RoleDevice, "")
	require.NoError(t, err)
	require.Len(t, list, 1)
	assert.Equal(t, fleet.CredentialRevoked, list[0].Status)
	list, err = s.ListCredentials(ctx, "", fleet.CredentialActive)
	require.NoError(t, err)
	require.Len(t, list, 1)
	assert.Equal(t, "ops", list[0].ID)
}
