package httpapi

import (
	"net/http"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Requests are counted by the pattern they were routed to and their status
// class: a thousand different IDs make one series, not a thousand.
func TestMetrics_HTTPRequestsAreCountedByRoutePatternNotPath(t *testing.T) {
	base := newTestAPI(t, &Server{})
	for i := range 20 {
		callAs(t, testAdminToken, "GET", base+"/api/v1/firmware/fw-"+strings.Repeat("x", i), nil, nil) // 404
	}
	callAs(t, testAdminToken, "GET", base+"/api/v1/devices", nil, nil)
	callAs(t, "", "GET", base+"/api/v1/devices", nil, nil)
	callAs(t, testAdminToken, "DELETE", base+"/api/v1/nothing-here-abc", nil, nil)

	m := scrape(t, base)
	assert.Contains(t, m, `flota_http_requests_total{code="4xx",route="GET /api/v1/firmware/{id}"} 20`)
	assert.Contains(t, m, `flota_http_requests_total{code="2xx",route="GET /api/v1/devices"} 1`)
	assert.Contains(t, m, `flota_http_requests_total{code="4xx",route="GET /api/v1/devices"} 1`, "refused before the handler, counted on its route")
	assert.Contains(t, m, `flota_http_requests_total{code="4xx",route="unmatched"} 1`)
	assert.NotContains(t, m, "fw-x", "no raw path in a label")
	assert.NotContains(t, m, "nothing-here")
}

// The metrics pass the checks of promtool check metrics (the same linter).
func TestMetrics_PassTheLinter(t *testing.T) {
	base := newTestAPI(t, &Server{BrokerStats: func() any { return map[string]int{"clients": 3} }})
	callAs(t, testAdminToken, "GET", base+"/api/v1/devices", nil, nil)
	createAPIToken(t, base, "lint", "read")
	m := scrape(t, base)
	problems, err := promlint.New(strings.NewReader(m)).Lint()
	require.NoError(t, err)
	assert.Empty(t, problems)
	assert.Regexp(t, regexp.MustCompile(`(?m)^flota_api_tokens\{source="database"\} 1$`), m)
}

// statusClass keeps the code label to five values and "other".
func TestStatusClass(t *testing.T) {
	for status, want := range map[int]string{200: "2xx", 201: "2xx", 304: "3xx", 404: "4xx", 503: "5xx", 99: "other", 600: "other", http.StatusSwitchingProtocols: "1xx"} {
		assert.Equal(t, want, statusClass(status), "%d", status)
	}
}

// Every metric the collector serves is one it describes: a pedantic
// registry (what a program embedding the collector may use) refuses a
// metric collected under a descriptor Describe never sent.
func TestMetrics_CollectorDescribesEveryMetricItCollects(t *testing.T) {
	s := &Server{BrokerStats: func() any { return map[string]int{"clients": 3} }}
	newTestAPI(t, s)
	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(collector{s: s}))
	families, err := reg.Gather()
	require.NoError(t, err)
	names := map[string]bool{}
	for _, f := range families {
		names[f.GetName()] = true
	}
	for _, want := range []string{"flota_store_write_failures_total", "flota_store_held_writes", "flota_store_writes_dropped_total"} {
		assert.True(t, names[want], "%s is served", want)
	}
}
