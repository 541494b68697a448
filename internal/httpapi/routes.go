package httpapi

import (
	"net/http"
	"strings"

	"github.com/flotaio/flota/internal/rollout"
)

// route is one registered method and path pattern.
type route struct {
	method  string
	pattern string // net/http pattern without the method
	handler http.HandlerFunc
}

// APIPrefix is the root of the versioned JSON API.
const APIPrefix = "/api/v1"

// dashboardPattern serves the dashboard: every GET no other route takes.
const dashboardPattern = "GET /"

// routes lists every route of the JSON API. The OpenAPI document must
// describe exactly these (a test checks both ways).
func (s *Server) routes() []route {
	return append([]route{
		{"GET", "/api/v1/health", s.health},
		{"GET", "/api/v1/stats", s.stats},
		{"GET", "/api/v1/openapi.json", s.openAPI},

		{"POST", "/api/v1/firmware", s.addFirmware},
		{"GET", "/api/v1/firmware", s.listFirmware},
		{"GET", "/api/v1/firmware/{id}", s.getFirmware},
		{"DELETE", "/api/v1/firmware/{id}", s.deleteFirmware},

		{"GET", "/api/v1/devices", s.listDevices},
		{"GET", "/api/v1/devices/{id}", s.getDevice},
		{"GET", "/api/v1/devices/{id}/history", s.deviceHistory},
		{"GET", "/api/v1/fleet/summary", s.fleetSummary},

		{"POST", "/api/v1/updates", s.createUpdate},
		{"GET", "/api/v1/updates", s.listUpdates},
		{"GET", "/api/v1/updates/{id}", s.getUpdate},
		{"GET", "/api/v1/updates/{id}/devices", s.updateDevices},
		{"GET", "/api/v1/updates/{id}/events", s.updateEvents},
		{"GET", "/api/v1/updates/{id}/failures", s.updateFailures},
		{"GET", "/api/v1/updates/{id}/timeline", s.updateTimeline},
		{"POST", "/api/v1/updates/{id}/pause", s.control((*rollout.Engine).Pause)},
		{"POST", "/api/v1/updates/{id}/resume", s.control((*rollout.Engine).Resume)},
		{"POST", "/api/v1/updates/{id}/cancel", s.control((*rollout.Engine).Cancel)},
		{"POST", "/api/v1/updates/{id}/retry-failed", s.retryFailed},

		{"GET", "/api/v1/events/stream", s.eventStream},
		{"POST", "/api/v1/backup", s.backup},
	}, append(append(s.accountRoutes(), s.tokenRoutes()...), s.fetchRoutes()...)...)
}

// RouteNames returns "METHOD pattern" of every route of the JSON API, for
// tests that check the OpenAPI document against the server.
func (s *Server) RouteNames() []string {
	var out []string
	for _, r := range s.routes() {
		out = append(out, r.method+" "+r.pattern)
	}
	return out
}

// Handler returns every route: the JSON API under /api/v1, the Prometheus
// metrics at /metrics and the dashboard at /. Every route but the public
// ones needs a token of Tokens (auth.go).
func (s *Server) Handler() http.Handler {
	_ = s.init() // logged; the event stream then serves the store only
	mux := http.NewServeMux()
	for _, r := range s.routes() {
		mux.HandleFunc(r.method+" "+r.pattern, r.handler)
	}
	mux.Handle("GET /metrics", s.metricsHandler())
	// The dashboard answers every other GET; it sends unknown API paths a
	// JSON error.
	mux.Handle(dashboardPattern, s.dashboard())
	return s.countRequests(mux, s.logRequests(s.authenticate(s.storeGuard(apiErrors(mux)))))
}

// apiPath reports whether a request path belongs to the JSON API.
func apiPath(p string) bool { return p == APIPrefix || strings.HasPrefix(p, APIPrefix+"/") }
