package httpapi

import (
	"errors"
	"net/http"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
)

// Error is the body of every error response. Code is stable: clients branch
// on it; Message is for people.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Error codes that do not come from a fleet sentinel.
const (
	CodeNotFound      = "not_found"
	CodeTooLarge      = "too_large"
	CodeInternal      = "internal"
	CodeUnavailable   = "unavailable"
	CodeInvalidInput  = "invalid_input"
	CodeInvalidPolicy = "invalid_policy"
)

// sentinels maps each fleet sentinel to its status and stable code, in the
// order they are tested.
var sentinels = []struct {
	err    error
	status int
	code   string
}{
	{fleet.ErrUpdateNotFound, http.StatusNotFound, "update_not_found"},
	{fleet.ErrFirmwareNotFound, http.StatusNotFound, "firmware_not_found"},
	{fleet.ErrDeviceNotFound, http.StatusNotFound, "device_not_found"},
	{fleet.ErrInvalidPolicy, http.StatusBadRequest, CodeInvalidPolicy},
	{fleet.ErrNoTargets, http.StatusBadRequest, "no_targets"},
	{fleet.ErrInvalidInput, http.StatusBadRequest, CodeInvalidInput},
	{fleet.ErrUpdateFinished, http.StatusConflict, "update_finished"},
	{fleet.ErrDeviceBusy, http.StatusConflict, "device_busy"},
	{fleet.ErrIllegalTransition, http.StatusConflict, "illegal_transition"},
	{fleet.ErrCredentialNotFound, http.StatusNotFound, "credential_not_found"},
	{fleet.ErrCredentialExists, http.StatusConflict, "credential_exists"},
	{fleet.ErrClosed, http.StatusServiceUnavailable, CodeUnavailable},
	{protocol.ErrBadSignature, http.StatusBadRequest, "bad_signature"},
	{protocol.ErrNoSignature, http.StatusBadRequest, "unsigned_firmware"},
}

// errorStatus returns the status and body for err. Unknown errors become a
// 500 whose message does not leak internals.
func errorStatus(err error) (int, Error) {
	var tooLarge *http.MaxBytesError
	if errors.As(err, &tooLarge) {
		return http.StatusRequestEntityTooLarge, Error{Code: CodeTooLarge, Message: err.Error()}
	}
	for _, s := range sentinels {
		if errors.Is(err, s.err) {
			return s.status, Error{Code: s.code, Message: err.Error()}
		}
	}
	return http.StatusInternalServerError, Error{Code: CodeInternal, Message: "internal error"}
}

// writeError writes err as JSON; a 500 is logged with the request.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	status, body := errorStatus(err)
	if status == http.StatusInternalServerError {
		s.logger().Error("http request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	writeJSON(w, status, body)
}
