package main

import (
	"context"
	"log/slog"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
)

// TestMain_ClientLogLimitReachesBrokerAndEngine runs serve's wiring with
// --log-client-lines 3: a device sending 200 undecodable reports and a
// client refused 8 times each get 3 lines, and /metrics counts the rest.
func TestMain_ClientLogLimitReachesBrokerAndEngine(t *testing.T) {
	var logs lockedBuffer
	m := newTestMain(t)
	m.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	m.Config.LogLimit.Lines = 3
	require.NoError(t, m.Run(context.Background()))
	t.Cleanup(func() { assert.NoError(t, m.Close()) })
	secret := account(t, m, fleet.RoleDevice, "dev-a")

	host, port, _ := strings.Cut(m.MQTTAddr(), ":")
	const bad = 200
	cmd := exec.Command(requireTool(t, "mosquitto_pub"), "-h", host, "-p", port, "-i", "dev-a", "-u", "dev-a", "-P", secret,
		"-q", "1", "-t", protocol.UpTopic("dev-a", protocol.KindReport), "-l")
	cmd.Stdin = strings.NewReader(strings.Repeat("{not json\n", bad))
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	const refused = 8
	for i := 0; i < refused; i++ {
		_, ok := mosq(t, m, "mosquitto_pub", "-i", "dev-b", "-u", "dev-b", "-P", "wrong", "-t", protocol.UpTopic("dev-b", "x"), "-m", "x")
		require.False(t, ok)
	}
	// The device's messages past its quota in the engine's queue are
	// dropped before they are decoded (fair.go): count them too.
	require.Eventually(t, func() bool {
		es := m.Engine.Stats()
		return es.BadMessages+es.QuotaDrops == bad && m.Broker.Stats().AuthRefused == refused
	}, waitFor, 10*time.Millisecond)
	decoded := m.Engine.Stats().BadMessages
	require.Greater(t, decoded, int64(3))
	attempted := decoded // log lines the device caused: one per bad message,
	if m.Engine.Stats().QuotaDrops > 0 {
		attempted++ // and one for going over its quota
	}

	s := logs.String()
	// The device's 3 lines: bad messages, and its quota line if it went
	// over its quota before its third bad message was logged.
	assert.Equal(t, 3, strings.Count(s, "bad device message")+strings.Count(s, "device messages dropped before the engine"), "%s", s)
	assert.Equal(t, 3, strings.Count(s, "authentication refused"), "%s", s)
	fams := scrape(t, m.HTTPURL())
	assert.EqualValues(t, attempted-3, value(fams, "flota_engine_log_lines_suppressed_total"))
	assert.EqualValues(t, refused-3, value(fams, "flota_broker_log_lines_suppressed_total"))
	assert.EqualValues(t, 0, value(fams, "flota_device_illegal_events_suppressed_total"))
}
