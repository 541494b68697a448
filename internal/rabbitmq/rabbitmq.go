// Package rabbitmq runs a RabbitMQ cluster with the MQTT plugin on loopback
// through scripts/rabbitmq-cluster.sh, so that tests and benchmarks drive
// flota's external broker mode against a real clustered broker and kill its
// nodes. It needs the Debian package rabbitmq-server (not running: the
// cluster has its own node names, ports, epmd and Erlang cookie).
package rabbitmq

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Server is where Debian installs the broker.
const Server = "/usr/lib/rabbitmq/bin/rabbitmq-server"

// OrchestratorUser and OrchestratorPassword are the account the script
// gives the whole flota/ tree; devices connect anonymously.
const (
	OrchestratorUser     = "flota-orchestrator"
	OrchestratorPassword = "secret"
)

// Installed reports whether rabbitmq-server is installed.
func Installed() bool {
	_, err := os.Stat(Server)
	return err == nil
}

// Cluster is a running cluster. Start it with Start; Stop ends it.
type Cluster struct {
	// Script is scripts/rabbitmq-cluster.sh; Dir holds the cluster's
	// files (a test's temporary directory).
	Script, Dir string
	// Nodes is the node count (the script's default when 0).
	Nodes int
	// StartTime is how long Start took.
	StartTime time.Duration

	env map[string]string // cluster.env as last read
}

// Start starts the cluster and returns once every node serves MQTT.
func (c *Cluster) Start() error {
	args := []string{"start", c.Dir}
	if c.Nodes > 0 {
		args = append(args, strconv.Itoa(c.Nodes))
	}
	t0 := time.Now()
	if err := c.run(args...); err != nil {
		c.Kill()
		return err
	}
	c.StartTime = time.Since(t0)
	if err := c.load(); err != nil {
		return err
	}
	c.Nodes, _ = strconv.Atoi(c.env["NODES"])
	return nil
}

func (c *Cluster) run(args ...string) error {
	out, err := exec.Command(c.Script, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("rabbitmq-cluster %s: %w\n%s%s", strings.Join(args, " "), err, out, c.Logs())
	}
	return nil
}

// load reads cluster.env.
func (c *Cluster) load() error {
	f, err := os.Open(filepath.Join(c.Dir, "cluster.env"))
	if err != nil {
		return fmt.Errorf("rabbitmq: %w", err)
	}
	defer f.Close()
	env := make(map[string]string)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			env[k] = v
		}
	}
	c.env = env
	return sc.Err()
}

// URL returns node n's MQTT URL (n from 1).
func (c *Cluster) URL(n int) string {
	return "tcp://127.0.0.1:" + c.env["MQTT_PORT_"+strconv.Itoa(n)]
}

// URLs returns the URLs of nodes ns, comma-separated, in that order.
func (c *Cluster) URLs(ns ...int) string {
	urls := make([]string, len(ns))
	for i, n := range ns {
		urls[i] = c.URL(n)
	}
	return strings.Join(urls, ",")
}

// KillNode SIGKILLs node n's Erlang VM.
func (c *Cluster) KillNode(n int) error {
	if err := c.run("kill", c.Dir, strconv.Itoa(n)); err != nil {
		return err
	}
	return c.load()
}

// RestartNode starts node n again and returns once it serves MQTT.
func (c *Cluster) RestartNode(n int) error {
	if err := c.run("restart", c.Dir, strconv.Itoa(n)); err != nil {
		return err
	}
	return c.load()
}

// Stop stops every node and the cluster's epmd.
func (c *Cluster) Stop() error {
	if c.env == nil {
		return nil
	}
	err := c.run("stop", c.Dir)
	c.Kill()
	return err
}

// Kill SIGKILLs every process of the cluster the script recorded, for a
// test's cleanup after a failed Stop or Start.
func (c *Cluster) Kill() {
	if c.load() != nil {
		return
	}
	for k, v := range c.env {
		if !strings.HasPrefix(k, "PID_") && k != "EPMD_PID" {
			continue
		}
		if pid, err := strconv.Atoi(v); err == nil && pid > 0 {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	_ = os.Remove(filepath.Join(c.Dir, "cluster.env"))
}

// Logs returns the tail of every node's log, for a failed test.
func (c *Cluster) Logs() string {
	var b strings.Builder
	files, _ := filepath.Glob(filepath.Join(c.Dir, "node*", "log", "*.log"))
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil || len(data) == 0 {
			continue
		}
		if len(data) > 4096 {
			data = data[len(data)-4096:]
		}
		fmt.Fprintf(&b, "--- %s\n%s\n", f, data)
	}
	return b.String()
}
