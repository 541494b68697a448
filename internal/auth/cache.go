package auth

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"sync"

	"github.com/flotaio/flota/internal/fleet"
)

// cache remembers, per account, a keyed SHA-256 of the secret that last
// verified and the account's role, so that a reconnection costs one HMAC
// instead of an argon2id run and no database read. The key is random per
// process: the cache holds nothing that could be checked offline.
//
// Entries are removed when an account changes (revoke, approve); gen guards
// against a verification that read the store before the change and would
// cache the old answer after it.
type cache struct {
	key [32]byte

	mu  sync.RWMutex // guards m and gen
	m   map[string]cacheEntry
	gen uint64 // bumped by every forget
}

type cacheEntry struct {
	sum  [32]byte
	role fleet.Role
}

func newCache() *cache {
	c := &cache{m: make(map[string]cacheEntry)}
	_, _ = rand.Read(c.key[:]) // never fails (crypto/rand)
	return c
}

func (c *cache) sum(secret string) [32]byte {
	h := hmac.New(sha256.New, c.key[:])
	h.Write([]byte(secret))
	var s [32]byte
	h.Sum(s[:0])
	return s
}

// lookup returns the cached role of id if secret is the one that verified.
func (c *cache) lookup(id, secret string) (fleet.Role, bool) {
	c.mu.RLock()
	e, ok := c.m[id]
	c.mu.RUnlock()
	if !ok {
		return "", false
	}
	s := c.sum(secret)
	if !hmac.Equal(s[:], e.sum[:]) {
		return "", false
	}
	return e.role, true
}

// generation returns the value to pass to put after reading the store.
func (c *cache) generation() uint64 {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.gen
}

// put caches a verified secret unless an account changed since gen.
func (c *cache) put(id, secret string, role fleet.Role, gen uint64) {
	s := c.sum(secret)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen != gen {
		return
	}
	c.m[id] = cacheEntry{sum: s, role: role}
}

// forget removes id's entry.
func (c *cache) forget(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, id)
	c.gen++
}

func (c *cache) len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.m)
}
