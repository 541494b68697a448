package fleet

import "time"

// Role is what an MQTT account may do at the broker (docs/SECURITY.md).
type Role string

// Roles of MQTT accounts.
const (
	// RoleDevice publishes under flota/devices/{id}/up/ and reads
	// flota/devices/{id}/down, flota/events and flota/status.
	RoleDevice Role = "device"
	// RoleMonitor reads flota/events and flota/status, and nothing else.
	RoleMonitor Role = "monitor"
)

// CredentialStatus is the lifecycle of an MQTT account.
type CredentialStatus string

// Credential states: an enrolled device is pending until approved; only an
// active account may connect; a revoked one never again.
const (
	CredentialPending CredentialStatus = "pending"
	CredentialActive  CredentialStatus = "active"
	CredentialRevoked CredentialStatus = "revoked"
)

// Credential is one MQTT account: a device or a monitor. Device IDs and
// monitor names share one namespace, so that no account can take another's
// MQTT client ID. Hash is the encoded argon2id hash of the secret; the
// secret itself is never stored.
type Credential struct {
	ID        string           `json:"id"`
	Role      Role             `json:"role"`
	Status    CredentialStatus `json:"status"`
	Hash      string           `json:"-"`
	CreatedAt time.Time        `json:"created_at"`
	UpdatedAt time.Time        `json:"updated_at"`
}
