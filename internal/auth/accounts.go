package auth

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"runtime"
	"sync"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
	"github.com/flotaio/flota/internal/sqlite"
)

// Reasons a connection is refused. They are logged by the broker; the client
// only sees CONNACK "not authorised".
var (
	ErrNoCredentials    = errors.New("no username or password")
	ErrUsernameMismatch = errors.New("username is not the client ID")
	ErrBadSecret        = errors.New("wrong secret")
	ErrUnknownAccount   = errors.New("unknown account")
	ErrBadEnrollToken   = errors.New("wrong enrollment token")
	ErrPending          = errors.New("account pending approval")
	ErrRevoked          = errors.New("account revoked")
)

// Connect is what a connecting MQTT client presents.
type Connect struct {
	ClientID string
	Username string
	Password []byte
	// CertVerified: the client presented a certificate that the broker
	// verified against the client CA and whose common name is ClientID.
	// It replaces the secret; the account must still exist and be active.
	CertVerified bool
}

// Accounts authenticates MQTT connections against the store's credentials
// and manages the accounts. Fill the exported fields before use.
type Accounts struct {
	Store *sqlite.Store
	// AllowAnonymous accepts a connection without username and password as
	// a device named by its client ID (development mode).
	AllowAnonymous bool
	// EnrollToken, when set, lets an unknown device enroll (see EnrollPrefix).
	EnrollToken string
	// AutoApprove makes an enrolled device active at once instead of pending.
	AutoApprove bool
	// Disconnect, when set, ends the MQTT connection of an account at once;
	// Revoke calls it.
	Disconnect func(id string)

	once  sync.Once
	c     *cache
	slots chan struct{} // bounds concurrent argon2id runs (memory and CPU)
}

func (a *Accounts) init() {
	a.once.Do(func() {
		a.c = newCache()
		a.slots = make(chan struct{}, runtime.GOMAXPROCS(0))
	})
}

// verify runs Verify with at most GOMAXPROCS runs at once, so that a
// connection storm queues instead of allocating argon2id memory per
// connection.
func (a *Accounts) verify(ctx context.Context, secret, hash string) (bool, error) {
	select {
	case a.slots <- struct{}{}:
	case <-ctx.Done():
		return false, ctx.Err()
	}
	defer func() { <-a.slots }()
	return Verify(secret, hash)
}

// Authenticate returns the role of a connecting client, or why it is
// refused.
func (a *Accounts) Authenticate(ctx context.Context, c Connect) (fleet.Role, error) {
	a.init()
	if c.Username == "" && len(c.Password) == 0 && !c.CertVerified {
		if !a.AllowAnonymous {
			return "", ErrNoCredentials
		}
		// Even in development mode, an ID that has an account needs its
		// credentials: no anonymous client takes over a real device.
		if _, err := a.Store.Credential(ctx, c.ClientID); !errors.Is(err, fleet.ErrCredentialNotFound) {
			if err != nil {
				return "", err
			}
			return "", ErrNoCredentials
		}
		return fleet.RoleDevice, nil
	}
	if c.Username != "" && c.Username != c.ClientID {
		return "", ErrUsernameMismatch
	}
	id := c.ClientID
	secret, token, enrolling := protocol.ParsePassword(string(c.Password))
	if !c.CertVerified {
		if role, ok := a.c.lookup(id, secret); ok {
			return role, nil
		}
	}
	gen := a.c.generation()
	cred, err := a.Store.Credential(ctx, id)
	if errors.Is(err, fleet.ErrCredentialNotFound) {
		if enrolling && !c.CertVerified {
			return a.enroll(ctx, id, secret, token)
		}
		return "", ErrUnknownAccount
	}
	if err != nil {
		return "", err
	}
	if !c.CertVerified {
		ok, err := a.verify(ctx, secret, cred.Hash)
		if err != nil {
			return "", err
		}
		if !ok {
			return "", ErrBadSecret
		}
	}
	switch cred.Status {
	case fleet.CredentialActive:
	case fleet.CredentialPending:
		return "", ErrPending
	default:
		return "", ErrRevoked
	}
	if a.c.generation() != gen {
		// An account was revoked or approved while this one was being
		// verified: read its status again rather than trust the old row.
		now, err := a.Store.Credential(ctx, id)
		if err != nil {
			return "", err
		}
		if now.Status != fleet.CredentialActive {
			return "", ErrRevoked
		}
	}
	if !c.CertVerified {
		a.c.put(id, secret, cred.Role, gen)
	}
	return cred.Role, nil
}

// enroll registers an unknown device that presented the fleet token.
func (a *Accounts) enroll(ctx context.Context, id, secret, token string) (fleet.Role, error) {
	if a.EnrollToken == "" || subtle.ConstantTimeCompare([]byte(token), []byte(a.EnrollToken)) != 1 {
		return "", ErrBadEnrollToken
	}
	if !ValidSecret(secret) {
		return "", fmt.Errorf("enrollment secret must be %d to %d base64url characters", MinSecretLen, MaxSecretLen)
	}
	status := fleet.CredentialPending
	if a.AutoApprove {
		status = fleet.CredentialActive
	}
	cred := fleet.Credential{ID: id, Role: fleet.RoleDevice, Status: status, Hash: a.hash(ctx, secret)}
	if err := a.Store.AddCredentials(ctx, []fleet.Credential{cred}); err != nil {
		return "", err // a concurrent enrollment of the same ID won
	}
	if status == fleet.CredentialPending {
		return "", ErrPending
	}
	return fleet.RoleDevice, nil
}

// hash runs Hash under the same bound as verify.
func (a *Accounts) hash(ctx context.Context, secret string) string {
	select {
	case a.slots <- struct{}{}:
		defer func() { <-a.slots }()
	case <-ctx.Done():
	}
	return Hash(secret)
}

// Issued is a new account and its secret, shown once.
type Issued struct {
	ID     string `json:"id"`
	Secret string `json:"secret"`
}

// Add creates active accounts of role for ids, with new secrets, all or
// none. Secrets are hashed on every core.
func (a *Accounts) Add(ctx context.Context, role fleet.Role, ids []string) ([]Issued, error) {
	a.init()
	if len(ids) == 0 || len(ids) > MaxProvision {
		return nil, fleet.Errorf(fleet.ErrInvalidInput, "want 1 to %d accounts, got %d", MaxProvision, len(ids))
	}
	out := make([]Issued, len(ids))
	creds := make([]fleet.Credential, len(ids))
	for i, id := range ids {
		if err := fleet.CheckDeviceID(id); err != nil {
			return nil, err
		}
		out[i] = Issued{ID: id, Secret: NewSecret()}
		creds[i] = fleet.Credential{ID: id, Role: role, Status: fleet.CredentialActive}
	}
	var wg sync.WaitGroup
	workers := runtime.GOMAXPROCS(0)
	for w := range workers {
		wg.Go(func() {
			for i := w; i < len(ids); i += workers {
				creds[i].Hash = Hash(out[i].Secret)
			}
		})
	}
	wg.Wait()
	err := a.Store.AddCredentials(ctx, creds)
	for _, id := range ids {
		a.c.forget(id) // a revoked account given again: its old entry goes
	}
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Approve makes a pending device active.
func (a *Accounts) Approve(ctx context.Context, id string) error {
	a.init()
	_, err := a.Store.SetCredentialStatus(ctx, id, fleet.CredentialActive, fleet.CredentialPending)
	a.c.forget(id)
	return err
}

// MaxProvision is the most accounts one call to Add creates.
const MaxProvision = 99999

// Revoke refuses account id, which must have role, from now on and ends its
// connection at once.
func (a *Accounts) Revoke(ctx context.Context, role fleet.Role, id string) error {
	a.init()
	cred, err := a.Store.Credential(ctx, id)
	if err != nil {
		return err
	}
	if cred.Role != role {
		return fleet.Errorf(fleet.ErrCredentialNotFound, "%s is not a %s", id, role)
	}
	_, err = a.Store.SetCredentialStatus(ctx, id, fleet.CredentialRevoked)
	a.c.forget(id) // after the store: a verification in flight cannot re-cache it
	if err != nil {
		return err
	}
	if a.Disconnect != nil {
		a.Disconnect(id)
	}
	return nil
}

// Forget drops what is cached of account id and ends its connection: for
// an account the store no longer holds (a deleted device).
func (a *Accounts) Forget(id string) {
	a.init()
	a.c.forget(id)
	if a.Disconnect != nil {
		a.Disconnect(id)
	}
}

// Cached returns the number of accounts whose secret is cached.
func (a *Accounts) Cached() int {
	a.init()
	return a.c.len()
}
