package httpapi

import (
	"fmt"
	"net/http"

	"github.com/flotaio/flota/internal/auth"
	"github.com/flotaio/flota/internal/fleet"
)

// accountRoutes are the routes that manage MQTT accounts: device
// credentials, enrollment approval, revocation and monitor accounts. They
// hand out and take away access to the broker: operator-only.
func (s *Server) accountRoutes() []route {
	return []route{
		{"POST", "/api/v1/devices", s.addDevice},
		{"POST", "/api/v1/devices/provision", s.provisionDevices},
		{"POST", "/api/v1/devices/{id}/approve", s.approveDevice},
		{"POST", "/api/v1/devices/{id}/revoke", s.revoke(fleet.RoleDevice)},
		{"DELETE", "/api/v1/devices/{id}", s.deleteDevice},
		{"POST", "/api/v1/monitors", s.addMonitor},
		{"POST", "/api/v1/monitors/{id}/revoke", s.revoke(fleet.RoleMonitor)},
		{"GET", "/api/v1/credentials", s.listCredentials},
	}
}

// AddDeviceRequest is the body of POST /api/v1/devices.
type AddDeviceRequest struct {
	ID    string            `json:"id"`
	Model string            `json:"model,omitempty"`
	Tags  map[string]string `json:"tags,omitempty"`
}

// ProvisionRequest is the body of POST /api/v1/devices/provision: Count
// devices named Prefix followed by a 5-digit number from 00001.
type ProvisionRequest struct {
	Prefix string            `json:"prefix"`
	Count  int               `json:"count"`
	Model  string            `json:"model,omitempty"`
	Tags   map[string]string `json:"tags,omitempty"`
}

// AddMonitorRequest is the body of POST /api/v1/monitors.
type AddMonitorRequest struct {
	Name string `json:"name"`
}

// CredentialList is the answer of provisioning: each new account with its
// secret, shown this once.
type CredentialList struct {
	Credentials []auth.Issued `json:"credentials"`
}

// AccountList is the answer of GET /api/v1/credentials (no secrets).
type AccountList struct {
	Accounts []fleet.Credential `json:"accounts"`
}

// ProvisionID returns the ID of the n-th provisioned device (from 1), the
// same IDs devicesim gives its devices.
func ProvisionID(prefix string, n int) string { return fmt.Sprintf("%s%05d", prefix, n) }

func (s *Server) accountsReady(w http.ResponseWriter, r *http.Request) bool {
	if s.Accounts == nil {
		writeJSON(w, http.StatusServiceUnavailable, Error{Code: CodeUnavailable,
			Message: "MQTT accounts are managed by the embedded broker; this server uses an external broker"})
		return false
	}
	return true
}

func (s *Server) addDevice(w http.ResponseWriter, r *http.Request) {
	var req AddDeviceRequest
	if err := s.decodeStrict(w, r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	s.issue(w, r, fleet.RoleDevice, []string{req.ID}, req.Model, req.Tags)
}

func (s *Server) provisionDevices(w http.ResponseWriter, r *http.Request) {
	var req ProvisionRequest
	if err := s.decodeStrict(w, r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	if req.Count < 1 || req.Count > auth.MaxProvision {
		s.writeError(w, r, fleet.Errorf(fleet.ErrInvalidInput, "count must be 1..%d, got %d", auth.MaxProvision, req.Count))
		return
	}
	ids := make([]string, req.Count)
	for i := range ids {
		ids[i] = ProvisionID(req.Prefix, i+1)
	}
	s.issue(w, r, fleet.RoleDevice, ids, req.Model, req.Tags)
}

func (s *Server) addMonitor(w http.ResponseWriter, r *http.Request) {
	var req AddMonitorRequest
	if err := s.decodeStrict(w, r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	s.issue(w, r, fleet.RoleMonitor, []string{req.Name}, "", nil)
}

// issue creates accounts and answers their secrets. Devices given a model or
// tags are registered with them at once, so that updates can select them
// before they connect; the others appear with their first hello.
func (s *Server) issue(w http.ResponseWriter, r *http.Request, role fleet.Role, ids []string, model string, tags map[string]string) {
	if !s.accountsReady(w, r) {
		return
	}
	issued, err := s.Accounts.Add(r.Context(), role, ids)
	if err != nil {
		s.writeError(w, r, fmt.Errorf("add %s accounts: %w", role, err))
		return
	}
	if role == fleet.RoleDevice && (model != "" || len(tags) > 0) {
		// Selectable once the answer arrives; never seen until they connect.
		if err := s.Store.RegisterDevices(r.Context(), ids, model, tags); err != nil {
			s.writeError(w, r, fmt.Errorf("register devices: %w", err))
			return
		}
	}
	s.logger().Info("mqtt accounts added", "role", role, "count", len(issued), "first", ids[0])
	writeJSON(w, http.StatusCreated, CredentialList{Credentials: issued})
}

func (s *Server) approveDevice(w http.ResponseWriter, r *http.Request) {
	if !s.accountsReady(w, r) {
		return
	}
	id := r.PathValue("id")
	if err := s.Accounts.Approve(r.Context(), id); err != nil {
		s.writeError(w, r, fmt.Errorf("approve %s: %w", id, err))
		return
	}
	s.logger().Info("device approved", "device", id, "by", requester(r))
	s.writeAccount(w, r, id)
}

func (s *Server) revoke(role fleet.Role) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !s.accountsReady(w, r) {
			return
		}
		id := r.PathValue("id")
		if err := s.Accounts.Revoke(r.Context(), role, id); err != nil {
			s.writeError(w, r, fmt.Errorf("revoke %s: %w", id, err))
			return
		}
		s.logger().Warn("mqtt account revoked", "role", role, "id", id, "by", requester(r))
		s.writeAccount(w, r, id)
	}
}

func (s *Server) writeAccount(w http.ResponseWriter, r *http.Request, id string) {
	c, err := s.Store.Credential(r.Context(), id)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, c)
}

func (s *Server) listCredentials(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	role, status := fleet.Role(q.Get("role")), fleet.CredentialStatus(q.Get("status"))
	switch role {
	case "", fleet.RoleDevice, fleet.RoleMonitor:
	default:
		s.writeError(w, r, fleet.Errorf(fleet.ErrInvalidInput, "role=%q: want device or monitor", role))
		return
	}
	switch status {
	case "", fleet.CredentialPending, fleet.CredentialActive, fleet.CredentialRevoked:
	default:
		s.writeError(w, r, fleet.Errorf(fleet.ErrInvalidInput, "status=%q: want pending, active or revoked", status))
		return
	}
	list, err := s.Store.ListCredentials(r.Context(), role, status)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, AccountList{Accounts: nonNil(list)})
}
