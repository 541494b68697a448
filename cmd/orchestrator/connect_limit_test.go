package main

import (
	"encoding/json"
	"flag"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
)

func TestServeFlags_ConnectLimit(t *testing.T) {
	var c Config
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	securityFlags(fs, &c)
	require.NoError(t, fs.Parse([]string{"--mqtt-connect-rate", "5", "--mqtt-connect-ban", "2m"}))
	assert.Equal(t, 5, c.ConnectRate)
	assert.Equal(t, 2*time.Minute, c.ConnectBan)
	require.NoError(t, c.checkSecurity())

	c.Broker = "tcp://127.0.0.1:1883"
	assert.ErrorContains(t, c.checkSecurity(), "--mqtt-connect-rate")
	c = Config{ConnectBan: -time.Second}
	assert.ErrorContains(t, c.checkSecurity(), "must not be negative")
}

// TestMQTTAuth_FlappingDeviceIsRefusedAndCounted connects a device more
// often than --mqtt-connect-rate allows: its next connection is refused
// with CONNACK "server unavailable" while another device connects, and the
// refusal shows in /api/v1/stats and /metrics.
func TestMQTTAuth_FlappingDeviceIsRefusedAndCounted(t *testing.T) {
	m, r := secureMain(t, func(c *Config) { c.ConnectRate, c.ConnectBan = 2, time.Hour })
	flappy := account(t, m, fleet.RoleDevice, "flappy")
	steady := account(t, m, fleet.RoleDevice, "steady")
	publishOwn(t, m, r, "flappy", flappy)
	publishOwn(t, m, r, "flappy", flappy)
	out, ok := mosq(t, m, "mosquitto_pub", "-i", "flappy", "-u", "flappy", "-P", flappy, "-q", "1",
		"-t", protocol.UpTopic("flappy", "probe"), "-m", "x")
	assert.False(t, ok, "third connection in a minute accepted: %s", out)
	assert.Contains(t, out, "unavailable")
	publishOwn(t, m, r, "steady", steady)
	publishOwn(t, m, r, "steady", steady)

	var stats struct {
		Broker struct {
			ConnectRateLimited int64 `json:"connect_rate_limited"`
			Identities         int   `json:"identities"`
		} `json:"broker"`
	}
	getStats(t, m.HTTPURL(), &stats)
	assert.EqualValues(t, 1, stats.Broker.ConnectRateLimited)
	assert.Equal(t, 2, stats.Broker.Identities)

	fams := scrape(t, m.HTTPURL())
	assert.Equal(t, 1.0, value(fams, "flota_broker_connect_rate_limited_total"))
	assert.Equal(t, 2.0, value(fams, "flota_broker_identities"))
}

// getStats decodes /api/v1/stats, read with the read token, into v.
func getStats(t *testing.T, base string, v any) {
	t.Helper()
	req, err := http.NewRequest("GET", base+"/api/v1/stats", nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+testReadToken)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.NoError(t, json.NewDecoder(resp.Body).Decode(v))
}
