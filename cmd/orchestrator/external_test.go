package main

// External broker mode: the orchestrator's production wiring (Main) against
// a real mosquitto started from testdata/mosquitto, with reference agents.

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/agent"
	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/mosquitto"
	"github.com/flotaio/flota/internal/rollout"
	"github.com/flotaio/flota/internal/sqlite"
)

// externalFleet is an orchestrator on mosquitto with a fleet of agents.
type externalFleet struct {
	t      *testing.T
	broker *mosquitto.Server
	main   *Main
	agents []*agent.Agent
}

func startExternalFleet(t *testing.T, devices int) *externalFleet {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test with a mosquitto process")
	}
	f := &externalFleet{t: t, broker: &mosquitto.Server{Dir: t.TempDir(), ConfigDir: "../../testdata/mosquitto"}}
	require.NoError(t, f.broker.Start())
	t.Cleanup(func() {
		assert.NoError(t, f.broker.Stop())
		if t.Failed() {
			t.Logf("mosquitto log:\n%s", f.broker.Log())
		}
	})

	m := NewMain()
	m.Config.DataDir = t.TempDir()
	m.Config.HTTPAddr = "127.0.0.1:0"
	m.Config.Broker = f.broker.URL()
	m.Config.BrokerUsername = mosquitto.OrchestratorUser
	m.Config.BrokerPassword = f.broker.Password(mosquitto.OrchestratorUser)
	// Both logs, and each agent's state, are printed if the test fails.
	orchLog, agentLog := &lockedBuffer{}, &lockedBuffer{}
	m.Logger = slog.New(slog.NewTextHandler(orchLog, nil))
	m.Config.APITokenFile = writeTestTokens(t)
	require.NoError(t, m.Run(context.Background()))
	t.Cleanup(func() {
		assert.NoError(t, m.Close())
		if t.Failed() {
			t.Logf("orchestrator log:\n%s", orchLog)
			for _, a := range f.agents {
				t.Logf("agent %+v", a.Stats())
			}
			t.Logf("client %+v", m.Client.Stats())
			t.Logf("agents log:\n%s", agentLog)
		}
	})
	f.main = m
	require.Nil(t, m.Broker, "no embedded broker in external mode")
	require.Empty(t, m.MQTTAddr())

	var wg sync.WaitGroup
	errs := make([]error, devices)
	for i := range devices {
		a := agent.New(agent.Config{
			Broker:      f.broker.URL(),
			ID:          fmt.Sprintf("ext-%03d", i),
			Model:       "sim-a",
			Version:     "1.0.0",
			RebootDelay: 200 * time.Millisecond,
			Logger:      slog.New(slog.NewTextHandler(agentLog, nil)),
		})
		f.agents = append(f.agents, a)
		t.Cleanup(func() { assert.NoError(t, a.Close()) })
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = a.Start(context.Background())
		}()
	}
	wg.Wait()
	for _, err := range errs {
		require.NoError(t, err)
	}
	// Every hello reached the engine: the devices are registered online.
	f.poll(func() bool {
		online := true
		_, n, err := m.Store.ListDevices(context.Background(), sqlite.DeviceFilter{Online: &online})
		return err == nil && n == devices
	}, "all devices registered online")
	return f
}

func (f *externalFleet) poll(cond func() bool, what string) {
	f.t.Helper()
	poll(f.t, 90*time.Second, cond, what)
}

// update uploads a random image and creates an update for the fleet.
func (f *externalFleet) update(size int, policy fleet.Policy) (fleet.Update, string) {
	f.t.Helper()
	ctx := context.Background()
	img := make([]byte, size)
	_, _ = rand.Read(img)
	fw, err := f.main.Store.AddFirmware(ctx, fleet.Firmware{Name: "app", Version: "1.1.0", Model: "sim-a"}, bytes.NewReader(img))
	require.NoError(f.t, err)
	u, err := f.main.Engine.CreateUpdate(ctx, rollout.CreateRequest{
		FirmwareID: fw.ID, Selector: fleet.Selector{Model: "sim-a"}, Policy: policy,
	})
	require.NoError(f.t, err)
	sum := sha256.Sum256(img)
	return u, hex.EncodeToString(sum[:])
}

func (f *externalFleet) summary(id string) fleet.UpdateSummary {
	f.t.Helper()
	s, err := f.main.Engine.Summary(context.Background(), id)
	require.NoError(f.t, err)
	return s
}

// requireAllUpdated checks the update's result and every agent: each runs
// 1.1.0, installed once the image with digest, and received it exactly once
// (resumes are byte-exact).
func (f *externalFleet) requireAllUpdated(u fleet.Update, size int, digest string) {
	f.t.Helper()
	f.poll(func() bool { return f.summary(u.ID).State.Terminal() }, "update finished")
	s := f.summary(u.ID)
	require.Equal(f.t, fleet.UpdateCompleted, s.State, "counts %v", s.Counts)
	require.Equal(f.t, len(f.agents), s.Counts[fleet.StateSucceeded])
	for _, a := range f.agents {
		st := a.Stats()
		assert.Equal(f.t, "1.1.0", st.Version, st.ID)
		assert.Equal(f.t, 1, st.Installs, st.ID)
		assert.Equal(f.t, digest, st.ImageSHA256, st.ID)
		assert.EqualValues(f.t, size, st.BytesReceived, "%s received the image more than once", st.ID)
	}
}

func TestMain_ExternalBrokerFleetUpdateSucceeds(t *testing.T) {
	f := startExternalFleet(t, 20)
	const size = 96 * 1024
	u, digest := f.update(size, fleet.Policy{MaxInFlight: 8, ChunkSize: 4096})
	f.requireAllUpdated(u, size, digest)

	st := f.main.Client.Stats()
	assert.True(t, st.Connected)
	assert.Positive(t, st.Presence, "presence from the devices' status messages")
	assert.Zero(t, st.BadStatus)
	assert.Zero(t, f.main.Engine.Stats().BadMessages, "status messages are not bad messages")

	// The HTTP API reports the client's counters as the broker's.
	var stats struct {
		Broker struct {
			Connected bool  `json:"connected"`
			Received  int64 `json:"received"`
		} `json:"broker"`
	}
	getStats(t, f.main.HTTPURL(), &stats)
	assert.True(t, stats.Broker.Connected)
	assert.Positive(t, stats.Broker.Received)
}

func TestMain_ExternalBrokerUpdateSurvivesBrokerRestart(t *testing.T) {
	f := startExternalFleet(t, 20)
	const size = 256 * 1024
	u, digest := f.update(size, fleet.Policy{MaxInFlight: 10, ChunkSize: 4096})

	// Kill mosquitto as soon as bytes flow: no device can have finished,
	// since each reboots for 200 ms after its download.
	f.poll(func() bool { return f.summary(u.ID).BytesAcked > 0 }, "transfer started")
	require.NoError(t, f.broker.Kill())
	s := f.summary(u.ID)
	require.False(t, s.State.Terminal())
	require.Less(t, s.BytesAcked, int64(size*len(f.agents)))
	t.Logf("broker killed with %d of %d bytes acknowledged", s.BytesAcked, size*len(f.agents))

	require.NoError(t, f.broker.Start()) // same port, empty: sessions and retained messages are gone
	f.requireAllUpdated(u, size, digest)
	assert.GreaterOrEqual(t, f.main.Client.Stats().ConnectionsLost, int64(1))
	assert.GreaterOrEqual(t, f.main.Client.Stats().Connects, int64(2))
}
