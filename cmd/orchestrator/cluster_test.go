package main

// External broker mode on a real RabbitMQ cluster (scripts/rabbitmq-cluster.sh,
// docs/BROKERS.md): device isolation across nodes, and an update that goes on
// while nodes are SIGKILLed, the orchestrator's own included.

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
	"github.com/flotaio/flota/internal/rabbitmq"
)

// startRabbitMQCluster starts a three-node cluster for the test, stopped
// (and its processes killed by PID) at cleanup.
func startRabbitMQCluster(t *testing.T) *rabbitmq.Cluster {
	t.Helper()
	if !rabbitmq.Installed() {
		t.Fatal("rabbitmq-server is not installed: run ./scripts/deps.sh (make deps), which installs what the tests need as root or prints the apt-get command")
	}
	binaries(t) // skips with -short
	c := &rabbitmq.Cluster{Script: "../../scripts/rabbitmq-cluster.sh", Dir: t.TempDir(), Nodes: 3}
	require.NoError(t, c.Start())
	t.Logf("RabbitMQ cluster of %d nodes started in %s", c.Nodes, c.StartTime.Round(time.Millisecond))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("RabbitMQ logs:\n%s", c.Logs())
		}
		assert.NoError(t, c.Stop())
	})
	return c
}

// clusterClient connects a paho client to url.
func clusterClient(t *testing.T, url, id, user, password string) mqtt.Client {
	t.Helper()
	o := mqtt.NewClientOptions().AddBroker(url).SetClientID(id).SetAutoReconnect(false).
		SetUsername(user).SetPassword(password)
	c := mqtt.NewClient(o)
	// A node refuses connections ("server unavailable") for a moment after
	// the cluster changes.
	poll(t, 30*time.Second, func() bool {
		tok := c.Connect()
		if !tok.WaitTimeout(10 * time.Second) {
			return false
		}
		return tok.Error() == nil
	}, "connect "+id)
	t.Cleanup(func() { c.Disconnect(0) })
	return c
}

// collector records the messages a subscription receives.
type collector struct {
	mu   sync.Mutex // guards msgs
	msgs []string
}

func (c *collector) handle(_ mqtt.Client, m mqtt.Message) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.msgs = append(c.msgs, m.Topic()+" "+string(m.Payload()))
}

func (c *collector) all() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.msgs...)
}

func TestE2E_RabbitMQCluster(t *testing.T) {
	c := startRabbitMQCluster(t)
	t.Run("DeviceReadsAndWritesOnlyItsOwnTopicsAcrossNodes", func(t *testing.T) {
		testClusterDeviceIsolation(t, c)
	})
	t.Run("UpdateCompletesWhileNodesAreKilled", func(t *testing.T) {
		testClusterUpdateSurvivesNodeKills(t, c)
	})
}

// testClusterDeviceIsolation: topic permissions with {client_id} expansion
// confine an anonymous device to its own topics, on every node.
func testClusterDeviceIsolation(t *testing.T, c *rabbitmq.Cluster) {
	orch := clusterClient(t, c.URL(1), "iso-orchestrator", rabbitmq.OrchestratorUser, rabbitmq.OrchestratorPassword)
	var up collector
	tok := orch.Subscribe(protocol.UpFilter, 1, up.handle)
	require.True(t, tok.WaitTimeout(10*time.Second))
	require.NoError(t, tok.Error())

	// dev-b, on node 2, reads its own down topic.
	victim := clusterClient(t, c.URL(2), "dev-b", "", "")
	var own collector
	tok = victim.Subscribe(protocol.DownFilter("dev-b"), 1, own.handle)
	require.True(t, tok.WaitTimeout(10*time.Second))
	require.NoError(t, tok.Error())

	// dev-c, on node 3, tries dev-b's down topic and every device's: the
	// broker refuses (RabbitMQ closes the connection) and nothing arrives.
	var stolen collector
	for _, filter := range []string{protocol.DownFilter("dev-b"), "flota/devices/+/down/#", "flota/#"} {
		thief := clusterClient(t, c.URL(3), "dev-c", "", "")
		tok := thief.Subscribe(filter, 1, stolen.handle)
		require.True(t, tok.WaitTimeout(10*time.Second))
		refused := tok.Error() != nil
		if st, ok := tok.(*mqtt.SubscribeToken); ok && !refused {
			refused = st.Result()[filter] == 0x80
		}
		poll(t, 10*time.Second, func() bool { return refused || !thief.IsConnectionOpen() },
			"subscription to "+filter+" refused")
	}
	// dev-c publishes on dev-b's up topic: refused, never delivered.
	thief := clusterClient(t, c.URL(3), "dev-c", "", "")
	thief.Publish(protocol.UpTopic("dev-b", protocol.KindHello), 1, false, "forged").WaitTimeout(5 * time.Second)
	// and on its own: delivered.
	pub := thief.Publish(protocol.UpTopic("dev-c", protocol.KindHello), 1, false, "own")
	if pub.WaitTimeout(5*time.Second) && pub.Error() == nil {
		poll(t, 10*time.Second, func() bool { return len(up.all()) > 0 }, "dev-c's own hello delivered")
	}

	pub = orch.Publish(protocol.DownTopic("dev-b", protocol.KindOffer), 1, false, "offer-b")
	require.True(t, pub.WaitTimeout(10*time.Second))
	require.NoError(t, pub.Error())
	poll(t, 10*time.Second, func() bool { return len(own.all()) == 1 }, "dev-b got its offer across nodes")
	assert.Equal(t, []string{"flota/devices/dev-b/down/offer offer-b"}, own.all())
	// An orchestrator's message to a device reaches no other device, and
	// a device's forged report no orchestrator, on any node.
	time.Sleep(500 * time.Millisecond) // let a wrongly routed copy arrive
	assert.Empty(t, stolen.all(), "dev-c read dev-b's down topic")
	for _, m := range up.all() {
		assert.NotContains(t, m, "forged", "dev-c wrote dev-b's up topic")
	}
}

// clusterSim starts devicesim on the cluster nodes urls, with anonymous
// devices (the cluster's default user). They subscribe again and say hello
// at doubling intervals from 20 s after each connection, as docs/BROKERS.md
// advises on RabbitMQ 3.10: a subscription the cluster lost would
// otherwise leave a device connected and forgotten.
func clusterSim(t *testing.T, urls string, args ...string) *sim {
	t.Helper()
	return runSim(t, append([]string{"--broker", urls, "--resubscribe-after", "20s"}, args...)...)
}

// testClusterUpdateSurvivesNodeKills: devices on every node, the
// orchestrator on node 1, two nodes keeping the cluster's majority. Node 2 is
// SIGKILLed mid-update and restarted; then node 1, the orchestrator's, is
// SIGKILLed, and restarted 20 s later as a service manager would:
// RabbitMQ 3.10 may leave a mirrored session queue whose master died with
// a node unusable until that node returns, and a device whose queue it is
// cannot connect anywhere meanwhile. Every device ends updated, having installed once.
// The stall of each kill is the time until the fleet's acked bytes grow
// again.
func testClusterUpdateSurvivesNodeKills(t *testing.T, c *rabbitmq.Cluster) {
	// FLOTA_CLUSTER_DEVICES and FLOTA_CLUSTER_SIZE set the benchmark's run
	// (docs/BENCHMARKS.md, "Broker cluster").
	devices, size := 300, 64<<10
	if n, err := strconv.Atoi(os.Getenv("FLOTA_CLUSTER_DEVICES")); err == nil && n > 0 {
		devices = n
	}
	if n, err := strconv.Atoi(os.Getenv("FLOTA_CLUSTER_SIZE")); err == nil && n > 0 {
		size = n
	}
	// A sixth of the fleet in flight at most: the pause below leaves work.
	inFlight := max(50, devices/6)
	s := startServer(t, "--broker", c.URLs(1, 2, 3), "--broker-username", rabbitmq.OrchestratorUser,
		"--broker-password", rabbitmq.OrchestratorPassword)
	// Held back: targets that connect after the last kill (to nodes 2 and
	// 3), so the update cannot end before it, however fast the machine.
	// They register first: an external broker has no accounts to provision.
	lateArgs := []string{"--devices", strconv.Itoa(heldBack), "--id-prefix", "rmqlate-", "--model", "sim-a"}
	late := clusterSim(t, c.URLs(2, 3), lateArgs...)
	s.waitOnline(heldBack)
	late.stop(t)
	// devicesim gives its devices every node, each its own first: a third
	// on each, and a dead node's devices spread over the two others.
	// Each connection is a client ID registration in a Raft group and a
	// mirrored queue declared and bound in cluster-wide transactions:
	// RabbitMQ takes its time, and a rate past what it absorbs ends in
	// timeouts.
	sm := clusterSim(t, c.URLs(1, 2, 3), "--devices", strconv.Itoa(devices), "--id-prefix", "rmq-", "--model", "sim-a",
		"--connect-rate", "20")
	t0 := time.Now()
	s.waitOnlineWithin(devices, 30*time.Second+time.Duration(devices)*150*time.Millisecond)
	t.Logf("%d devices online in %s", devices, time.Since(t0).Round(time.Millisecond))
	fw, digest := s.firmware(size, "1.1.0")
	start := time.Now()
	cpu0 := processCPU(t, s.cmd.Process.Pid)
	id := strings.TrimSpace(s.mustCLI("update", "create", "--firmware", fw, "--max-in-flight", strconv.Itoa(inFlight), "--window", "4"))
	all := int64(devices+heldBack) * int64(size)

	acked := func() int64 {
		var sum fleet.UpdateSummary
		s.getJSON("/api/v1/updates/"+id, &sum)
		require.False(t, sum.State.Terminal(), "the update waits for the held-back devices: %s %v", sum.State, sum.Counts)
		return sum.BytesAcked
	}
	waitAcked := func(frac int64, what string) {
		want := all * frac / 8
		poll(t, 5*time.Minute, func() bool { return acked() >= want }, fmt.Sprintf("%d/8 of the bytes acked before %s", frac, what))
	}
	// stall is the time from a kill until the fleet's acked bytes grow
	// again by at least a chunk's worth (16 KiB).
	stall := func() time.Duration {
		t0, base := time.Now(), acked()
		poll(t, 3*time.Minute+time.Duration(devices)*50*time.Millisecond, func() bool { return acked() >= base+16<<10 }, "progress after the kill")
		return time.Since(t0)
	}

	waitAcked(2, "killing node 2")
	require.NoError(t, c.KillNode(2))
	stall2 := stall()
	t.Logf("node 2 killed: the fleet's progress stalled %s", stall2.Round(10*time.Millisecond))
	// Paused (no device admitted, transfers in flight finish) while node 2
	// restarts, so that work is left for after the next kill however long
	// the restart takes: at most 3/8 of the bytes plus a sixth of the
	// fleet's are acked before the resume.
	waitAcked(3, "restarting node 2")
	s.mustCLI("update", "pause", id)
	t0 = time.Now()
	require.NoError(t, c.RestartNode(2))
	restart := time.Since(t0)
	t.Logf("node 2 restarted in %s", restart.Round(time.Millisecond))
	s.mustCLI("update", "resume", id)
	require.NoError(t, c.KillNode(1))
	// Its service manager starts it again 20 s later (systemd's
	// Restart=on-failure, RestartSec=20s), while the stall is measured.
	var restart1 time.Duration
	var restartErr error
	restarted := make(chan struct{})
	go func() {
		defer close(restarted)
		time.Sleep(20 * time.Second)
		t1 := time.Now()
		restartErr = c.RestartNode(1)
		restart1 = time.Since(t1)
	}()
	t.Cleanup(func() { <-restarted }) // before the cluster stops, however the test ends
	stall1 := stall()
	t.Logf("node 1, the orchestrator's, killed: the fleet's progress stalled %s", stall1.Round(10*time.Millisecond))
	for _, l := range strings.Split(s.logString(), "\n") {
		if strings.Contains(l, "reconnected to the broker") {
			t.Logf("orchestrator: %s", l)
		}
	}
	late = clusterSim(t, c.URLs(2, 3), lateArgs...)

	ends := 5*time.Minute + time.Duration(devices)*100*time.Millisecond
	for deadline := time.Now().Add(ends); ; time.Sleep(100 * time.Millisecond) {
		var sum fleet.UpdateSummary
		s.getJSON("/api/v1/updates/"+id, &sum)
		if sum.State.Terminal() {
			break
		}
		if time.Now().After(deadline) {
			// Which devices hold the update, and in what state: the rows
			// of `update devices` that have not succeeded.
			var stuck []string
			for _, l := range strings.Split(s.mustCLI("update", "devices", id), "\n") {
				if !strings.Contains(l, string(fleet.StateSucceeded)) {
					stuck = append(stuck, l)
				}
			}
			t.Fatalf("the update did not end within %s: %s %v\n%s", ends, sum.State, sum.Counts, strings.Join(stuck, "\n"))
		}
	}
	took := time.Since(start)
	cpu := processCPU(t, s.cmd.Process.Pid) - cpu0
	<-restarted
	require.NoError(t, restartErr)
	t.Logf("node 1 restarted in %s, 20 s after its kill", restart1.Round(time.Millisecond))
	st := s.status(id)
	assert.Equal(t, fleet.UpdateCompleted, st.State)
	assert.Equal(t, map[fleet.DeviceState]int{fleet.StateSucceeded: devices + heldBack}, st.Counts)

	detail := append(sm.stop(t).DevicesDetail, late.stop(t).DevicesDetail...)
	require.Len(t, detail, devices+heldBack)
	for _, d := range detail {
		assert.Equal(t, 1, d.Installs, "%s installed once", d.ID)
		assert.Equal(t, "1.1.0", d.Version, d.ID)
		assert.Equal(t, digest, d.ImageSHA256, d.ID)
	}
	t.Logf("cluster: %d devices x %d KiB in %s (%.1f MiB/s), orchestrator CPU %s (%.1f ms per device update); "+
		"stall after killing the devices' other node %s, after killing the orchestrator's node %s; node restart %s; resends %d",
		devices+heldBack, size>>10, took.Round(time.Millisecond), float64(all)/took.Seconds()/(1<<20),
		cpu.Round(time.Millisecond), float64(cpu.Milliseconds())/float64(devices+heldBack),
		stall2.Round(10*time.Millisecond), stall1.Round(10*time.Millisecond), restart.Round(time.Millisecond), st.Resends)
}

// processCPU returns the user and system CPU time of process pid.
func processCPU(t *testing.T, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	require.NoError(t, err)
	// Fields after the parenthesised command name: state is 3, utime 14, stime 15.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	require.Greater(t, len(f), 12)
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	require.NoError(t, err1)
	require.NoError(t, err2)
	return time.Duration(utime+stime) * 10 * time.Millisecond // USER_HZ is 100 on Linux
}
