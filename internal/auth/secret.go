// Package auth keeps the secrets of MQTT accounts (devices and monitors):
// it generates them, hashes them with argon2id (golang.org/x/crypto), and
// authenticates broker connections against the store, with an in-memory
// cache of verified secrets so that reconnection storms cost a map lookup
// and a SHA-256 per connection instead of an argon2id run.
package auth

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/crypto/argon2"
)

// SecretBytes is the entropy of a generated secret: 128 bits.
const SecretBytes = 16

// Secret lengths accepted from a device that enrolls with a secret of its
// own: at least 128 bits of base64url.
const (
	MinSecretLen = 22
	MaxSecretLen = 128
)

// Argon2id parameters of new hashes. Secrets are random and at least 128
// bits, so the hash does not need to slow down a dictionary attack: it only
// has to keep a stolen database from giving the secrets away. One pass over
// 512 KiB costs 1 to 2 ms of one core (docs/BENCHMARKS.md), so 10,000 first
// connections cost 6 to 10 s on 2 cores; reconnections hit the cache. The parameters are
// part of each encoded hash, so changing them here affects new hashes only.
const (
	argonTime    = 1
	argonMemory  = 512 // KiB
	argonThreads = 1
	argonKeyLen  = 32
	argonSaltLen = 16
)

var b64 = base64.RawStdEncoding

// NewSecret returns a random secret of SecretBytes, URL-safe base64 without
// padding (22 characters).
func NewSecret() string {
	b := make([]byte, SecretBytes)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return base64.RawURLEncoding.EncodeToString(b)
}

// ValidSecret reports whether s may be a secret: MinSecretLen to
// MaxSecretLen characters of the base64url alphabet [A-Za-z0-9_-].
func ValidSecret(s string) bool {
	if len(s) < MinSecretLen || len(s) > MaxSecretLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// Hash returns the argon2id hash of secret in the PHC string format:
// $argon2id$v=19$m=512,t=1,p=1$<salt>$<key>.
func Hash(secret string) string {
	salt := make([]byte, argonSaltLen)
	_, _ = rand.Read(salt) // never fails (crypto/rand)
	key := argon2.IDKey([]byte(secret), salt, argonTime, argonMemory, argonThreads, argonKeyLen)
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s",
		argon2.Version, argonMemory, argonTime, argonThreads, b64.EncodeToString(salt), b64.EncodeToString(key))
}

// errBadHash: a stored hash that does not parse.
var errBadHash = errors.New("auth: malformed argon2id hash")

// Verify reports whether secret matches encoded, a hash made by Hash (with
// any parameters). It takes constant time for a given hash.
func Verify(secret, encoded string) (bool, error) {
	parts := strings.Split(encoded, "$")
	if len(parts) != 6 || parts[0] != "" || parts[1] != "argon2id" {
		return false, errBadHash
	}
	var v int
	if _, err := fmt.Sscanf(parts[2], "v=%d", &v); err != nil || v != argon2.Version {
		return false, errBadHash
	}
	var m, t uint32
	var p uint8
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &m, &t, &p); err != nil || m == 0 || t == 0 || p == 0 {
		return false, errBadHash
	}
	salt, err := b64.DecodeString(parts[4])
	if err != nil {
		return false, errBadHash
	}
	want, err := b64.DecodeString(parts[5])
	if err != nil || len(want) == 0 {
		return false, errBadHash
	}
	got := argon2.IDKey([]byte(secret), salt, t, m, p, uint32(len(want)))
	return subtle.ConstantTimeCompare(got, want) == 1, nil
}
