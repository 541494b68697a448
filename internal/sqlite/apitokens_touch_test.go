package sqlite

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
)

// A use of a revoked token recorded late must not show as a use of the new
// token made under its name.
func TestStore_TouchOfARevokedTokenDoesNotMarkItsSuccessor(t *testing.T) {
	s := newTestStore(t, "")
	ctx := context.Background()
	old := fleet.APIToken{Name: "ci", Role: "admin", Hash: "aa", CreatedAt: time.Now().UTC()}
	require.NoError(t, s.AddAPIToken(ctx, old))
	_, err := s.DeleteAPIToken(ctx, "ci")
	require.NoError(t, err)
	require.NoError(t, s.AddAPIToken(ctx, fleet.APIToken{Name: "ci", Role: "read", Hash: "bb", CreatedAt: time.Now().UTC()}))

	require.NoError(t, s.TouchAPIToken(ctx, old, time.Now()))
	list, err := s.ListAPITokens(ctx)
	require.NoError(t, err)
	require.Len(t, list, 1)
	assert.Nil(t, list[0].LastUsedAt, "the new token was never used")
}
