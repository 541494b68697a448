package httpapi

import (
	"errors"
	"net/http"
	"strings"

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
	// CodeMethodNotAllowed: the path exists, not with this method (405).
	CodeMethodNotAllowed = "method_not_allowed"
	// CodeStoreUnavailable: the store cannot write now (full disk,
	// read-only file system); a change is refused until it can (503).
	CodeStoreUnavailable = "store_unavailable"
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
	{fleet.ErrSelectorTooLarge, http.StatusBadRequest, "selector_too_large"},
	{fleet.ErrUpdateFinished, http.StatusConflict, "update_finished"},
	{fleet.ErrDeviceBusy, http.StatusConflict, "device_busy"},
	{fleet.ErrIllegalTransition, http.StatusConflict, "illegal_transition"},
	{fleet.ErrCredentialNotFound, http.StatusNotFound, "credential_not_found"},
	{fleet.ErrCredentialExists, http.StatusConflict, "credential_exists"},
	{fleet.ErrTokenNotFound, http.StatusNotFound, "token_not_found"},
	{fleet.ErrTokenExists, http.StatusConflict, "token_exists"},
	{fleet.ErrTooManyTokens, http.StatusConflict, "too_many_tokens"},
	{fleet.ErrFirmwareDamaged, http.StatusConflict, "firmware_damaged"},
	{fleet.ErrFirmwareExists, http.StatusConflict, "firmware_exists"},
	{fleet.ErrFirmwareFetching, http.StatusConflict, "firmware_fetching"},
	{fleet.ErrFirmwareInUse, http.StatusConflict, "firmware_in_use"},
	{fleet.ErrStoreUnavailable, http.StatusServiceUnavailable, CodeStoreUnavailable},
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

// apiErrors answers the requests that mux has no route for on API paths —
// 405 for a known path with another method, 404 — with a JSON error like
// every other API error, instead of the mux's plain text.
func apiErrors(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !apiPath(r.URL.Path) {
			mux.ServeHTTP(w, r)
			return
		}
		h, pattern := mux.Handler(r)
		if pattern != "" {
			mux.ServeHTTP(w, r) // sets the path values that Handler does not
			return
		}
		probe := &statusProbe{header: http.Header{}}
		h.ServeHTTP(probe, r)
		switch {
		case probe.status == http.StatusMethodNotAllowed && apiRouteAllows(mux, r, probe.header.Get("Allow")):
			w.Header().Set("Allow", probe.header.Get("Allow"))
			writeJSON(w, probe.status, Error{Code: CodeMethodNotAllowed, Message: r.Method + " is not allowed on " + r.URL.Path})
		case probe.status >= 400:
			writeJSON(w, http.StatusNotFound, Error{Code: CodeNotFound, Message: "no route " + r.Method + " " + r.URL.Path})
		default:
			mux.ServeHTTP(w, r) // a redirect to the canonical path
		}
	})
}

// apiRouteAllows reports whether one of the allowed methods (an Allow
// header) has an API route for r's path, rather than only the dashboard's
// catch-all GET.
func apiRouteAllows(mux *http.ServeMux, r *http.Request, allow string) bool {
	for _, m := range strings.Split(allow, ",") {
		other := r.Clone(r.Context())
		other.Method = strings.TrimSpace(m)
		if _, pattern := mux.Handler(other); pattern != "" && pattern != dashboardPattern {
			return true
		}
	}
	return false
}

// statusProbe records the status and headers a handler writes and drops
// its body.
type statusProbe struct {
	header http.Header
	status int
}

func (p *statusProbe) Header() http.Header { return p.header }

func (p *statusProbe) WriteHeader(status int) {
	if p.status == 0 {
		p.status = status
	}
}

func (p *statusProbe) Write(b []byte) (int, error) {
	p.WriteHeader(http.StatusOK)
	return len(b), nil
}
