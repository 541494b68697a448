package fleet

import "time"

// Bounds of the API tokens kept in the database (docs/SECURITY.md): each
// one is a key to the whole API, so their number and names are small.
const (
	// MaxAPITokens bounds the tokens in the database; the token file's are
	// not counted.
	MaxAPITokens = 100
	// MaxAPITokenName bounds a token's name, which the audit log and every
	// refusal name.
	MaxAPITokenName = 64
)

// APIToken is an HTTP API token kept in the database. Hash is the hex
// SHA-256 of the token; the token itself is shown once, when it is made,
// and never stored. Role is "read" or "admin".
type APIToken struct {
	Name       string     `json:"name"`
	Role       string     `json:"role"`
	Hash       string     `json:"-"`
	CreatedAt  time.Time  `json:"created_at"`
	ExpiresAt  *time.Time `json:"expires_at,omitempty"`
	LastUsedAt *time.Time `json:"last_used_at,omitempty"`
}

// Expired reports whether t has expired at now.
func (t APIToken) Expired(now time.Time) bool {
	return t.ExpiresAt != nil && !now.Before(*t.ExpiresAt)
}
