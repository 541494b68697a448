package httpapi

import (
	"net/http"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics of the operator's view: device failures by reason, HTTP requests
// by route, and API tokens. Every label set is bounded: reasons by
// rollout.FailureReasons, routes by the registered patterns, codes by
// their class.
var (
	descDeviceFailures = desc("flota_device_failures_total", "Device update attempts that ended failed, by reason (reasons no device is known to send count as other).", "reason")
	descAPITokens      = desc("flota_api_tokens", "HTTP API tokens by where they are kept: file (the token file) or database (made through the API).", "source")
	descTokenRefused   = desc("flota_api_token_creations_refused_total", "API token creations refused: invalid (name, role or expiry), exists (the name is taken), limit (the database holds its most tokens).", "reason")
)

// unmatchedRoute labels requests that no route matched (404, 405).
const unmatchedRoute = "unmatched"

// opsCollector collects the metrics above, but for the HTTP requests,
// which are a CounterVec of their own.
type opsCollector struct{ s *Server }

func (c opsCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descDeviceFailures
	ch <- descAPITokens
	ch <- descTokenRefused
}

func (c opsCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.s
	if s.Engine != nil {
		for reason, n := range s.Engine.Failures() {
			ch <- prometheus.MustNewConstMetric(descDeviceFailures, prometheus.CounterValue, float64(n), string(reason))
		}
	}
	file, db := s.tokenCounts()
	ch <- prometheus.MustNewConstMetric(descAPITokens, prometheus.GaugeValue, float64(file), TokenSourceFile)
	ch <- prometheus.MustNewConstMetric(descAPITokens, prometheus.GaugeValue, float64(db), TokenSourceDatabase)
	ref := &s.apiTokens.refused
	for _, r := range []struct {
		reason string
		n      int64
	}{{"invalid", ref.invalid.Load()}, {"exists", ref.exists.Load()}, {"limit", ref.limit.Load()}} {
		ch <- prometheus.MustNewConstMetric(descTokenRefused, prometheus.CounterValue, float64(r.n), r.reason)
	}
}

// newRequestCounter returns flota_http_requests_total.
func newRequestCounter() *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flota_http_requests_total",
		Help: "HTTP requests by route (the registered pattern, such as \"GET /api/v1/updates/{id}\", or unmatched) and status class (2xx..5xx).",
	}, []string{"route", "code"})
}

// countRequests counts every request by the pattern mux routes it to,
// never its raw path, so that the label set is bounded by the routes.
func (s *Server) countRequests(mux *http.ServeMux, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(rec, r)
		_, route := mux.Handler(r)
		if route == "" {
			route = unmatchedRoute
		}
		s.requests.WithLabelValues(route, statusClass(rec.status)).Inc()
	})
}

// statusClass returns "2xx" for 200..299, and so on.
func statusClass(status int) string {
	if status < 100 || status > 599 {
		return "other"
	}
	return strconv.Itoa(status/100) + "xx"
}
