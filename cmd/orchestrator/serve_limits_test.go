package main

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/broker"
	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
)

func TestServe_TopicLimitsBelowTheProtocolAreAUsageError(t *testing.T) {
	for _, args := range [][]string{
		{"serve", "--mqtt-max-topic-length", "50"},
		{"serve", "--mqtt-max-topic-levels", "4"},
		{"serve", "--mqtt-max-subscriptions", "-1"},
	} {
		r := runCLI(t, "", args...)
		assert.Equal(t, exitUsage, r.code, "%v", args)
		assert.Contains(t, r.stderr, "--mqtt-max-topic", "%v", args)
	}
}

// TestMain_SubscriptionLimitReachesTheBrokerAndMetrics runs serve's wiring
// with a quota of one subscription: a device's second filter is refused,
// and the refusal is counted in the broker's stats and in /metrics.
func TestMain_SubscriptionLimitReachesTheBrokerAndMetrics(t *testing.T) {
	m, _ := secureMain(t, func(c *Config) { c.TopicLimits = broker.TopicLimits{MaxSubscriptions: 1} })
	secret := account(t, m, fleet.RoleDevice, "dev-a")
	// Waits at most 1 s for a message that never comes, subscribed to two filters.
	out, _ := mosq(t, m, "mosquitto_sub", "-i", "dev-a", "-u", "dev-a", "-P", secret, "-q", "1",
		"-t", protocol.DownFilter("dev-a"), "-t", protocol.EventsFilter, "-W", "1")
	require.Eventually(t, func() bool { return m.Broker.Stats().SubscriptionsRefused == 1 }, waitFor, 10*time.Millisecond, "mosquitto_sub: %s", out)
	assert.Equal(t, 1.0, value(scrape(t, m.HTTPURL()), "flota_broker_subscriptions_refused_total"))
}
