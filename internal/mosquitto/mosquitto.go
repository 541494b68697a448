// Package mosquitto runs a mosquitto broker process with flota's example
// configuration (testdata/mosquitto), on a free loopback port, so that tests
// and benchmarks drive the external-broker mode against a real broker. It
// needs the Debian package mosquitto (the broker and mosquitto_passwd).
package mosquitto

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// OrchestratorUser is the ACL user with access to the whole flota/ tree
// (testdata/mosquitto/flota.acl).
const OrchestratorUser = "flota-orchestrator"

// startTimeout bounds how long Start waits for the listener.
const startTimeout = 10 * time.Second

// Server is one mosquitto process. Fill the fields, then Start; Stop ends it.
// Start may be called again after Stop or Kill: the broker comes back on the
// same port, without the state it lost (persistence is off).
type Server struct {
	// Dir receives the generated configuration, the password file and the
	// copy of the ACL file (a test's t.TempDir()).
	Dir string
	// ConfigDir holds mosquitto.conf and flota.acl (testdata/mosquitto).
	ConfigDir string
	// Users and their passwords, written with mosquitto_passwd; empty
	// means OrchestratorUser with password "secret".
	Users map[string]string
	// Port is the listener's port; 0 picks a free one at the first Start.
	Port int

	mu   sync.Mutex // guards cmd, done and log
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
	log  bytes.Buffer
}

// Addr returns host:port of the listener.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Port)) }

// URL returns the broker URL for paho clients.
func (s *Server) URL() string { return "tcp://" + s.Addr() }

// Password returns the password of user.
func (s *Server) Password(user string) string { return s.users()[user] }

func (s *Server) users() map[string]string {
	if len(s.Users) == 0 {
		return map[string]string{OrchestratorUser: "secret"}
	}
	return s.Users
}

// Start writes the configuration and starts mosquitto, and returns once it
// accepts connections.
func (s *Server) Start() error {
	s.mu.Lock()
	running := s.cmd != nil
	s.mu.Unlock()
	if running {
		return errors.New("mosquitto: already running")
	}
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		bin = "/usr/sbin/mosquitto" // Debian installs it outside a user's PATH
		if _, serr := os.Stat(bin); serr != nil {
			return fmt.Errorf("mosquitto: broker not installed (apt-get install mosquitto): %w", err)
		}
	}
	if s.Port == 0 {
		if s.Port, err = freePort(); err != nil {
			return err
		}
	}
	conf, err := s.writeConfig()
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, "-c", conf)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return fmt.Errorf("mosquitto: %w", err)
	}
	cmd.Stdout = cmd.Stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("mosquitto: start: %w", err)
	}
	done := make(chan struct{})
	s.mu.Lock()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			s.mu.Lock()
			s.log.WriteString(sc.Text() + "\n")
			s.mu.Unlock()
		}
		_ = cmd.Wait()
	}()

	deadline := time.Now().Add(startTimeout)
	for {
		conn, err := net.DialTimeout("tcp", s.Addr(), time.Second)
		if err == nil {
			return conn.Close()
		}
		select {
		case <-done:
			s.mu.Lock()
			s.cmd = nil
			s.mu.Unlock()
			return fmt.Errorf("mosquitto exited at start:\n%s", s.Log())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_ = s.Kill()
			return fmt.Errorf("mosquitto: no listener on %s after %s:\n%s", s.Addr(), startTimeout, s.Log())
		}
	}
}

// writeConfig writes mosquitto.conf with this server's port and files, the
// password file and the ACL file into Dir, and returns the config's path.
func (s *Server) writeConfig() (string, error) {
	tmpl, err := os.ReadFile(filepath.Join(s.ConfigDir, "mosquitto.conf"))
	if err != nil {
		return "", fmt.Errorf("mosquitto: read config: %w", err)
	}
	acl, err := os.ReadFile(filepath.Join(s.ConfigDir, "flota.acl"))
	if err != nil {
		return "", fmt.Errorf("mosquitto: read ACL: %w", err)
	}
	aclPath, pwPath := filepath.Join(s.Dir, "flota.acl"), filepath.Join(s.Dir, "flota.passwd")
	if err := os.WriteFile(aclPath, acl, 0o644); err != nil {
		return "", fmt.Errorf("mosquitto: %w", err)
	}
	_ = os.Remove(pwPath)
	for user, pw := range s.users() {
		args := []string{"-b", pwPath, user, pw}
		if _, err := os.Stat(pwPath); err != nil {
			args = append([]string{"-c"}, args...)
		}
		if out, err := exec.Command("mosquitto_passwd", args...).CombinedOutput(); err != nil {
			return "", fmt.Errorf("mosquitto_passwd: %w: %s", err, out)
		}
	}
	var b strings.Builder
	for line := range strings.Lines(string(tmpl)) {
		switch f := strings.Fields(line); {
		case len(f) > 0 && f[0] == "listener":
			fmt.Fprintf(&b, "listener %d 127.0.0.1\n", s.Port)
		case len(f) > 0 && f[0] == "acl_file":
			fmt.Fprintf(&b, "acl_file %s\n", aclPath)
		case len(f) > 0 && f[0] == "password_file":
			fmt.Fprintf(&b, "password_file %s\n", pwPath)
		default:
			b.WriteString(line)
		}
	}
	if os.Geteuid() == 0 {
		// As root, mosquitto would switch to the user mosquitto, which
		// cannot read a test's private directory.
		b.WriteString("\nuser root\n")
	}
	conf := filepath.Join(s.Dir, "mosquitto.conf")
	if err := os.WriteFile(conf, []byte(b.String()), 0o644); err != nil {
		return "", fmt.Errorf("mosquitto: %w", err)
	}
	return conf, nil
}

// Stop terminates mosquitto (SIGTERM) and waits for it. It is a no-op when
// it is not running.
func (s *Server) Stop() error { return s.signal(syscall.SIGTERM) }

// Kill ends mosquitto at once (SIGKILL), as a crash would: no last wills,
// no clean shutdown.
func (s *Server) Kill() error { return s.signal(syscall.SIGKILL) }

func (s *Server) signal(sig syscall.Signal) error {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return nil
	}
	_ = cmd.Process.Signal(syscall.SIGCONT) // a paused broker cannot handle SIGTERM
	if err := cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("mosquitto: %w", err)
	}
	select {
	case <-done:
		return nil
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		return errors.New("mosquitto: did not exit within 10s; killed")
	}
}

// Pause stops the process (SIGSTOP) without closing its connections: the
// broker stops reading, writing and acknowledging, as a stalled broker does.
func (s *Server) Pause() error { return s.send(syscall.SIGSTOP) }

// Continue resumes a paused process (SIGCONT).
func (s *Server) Continue() error { return s.send(syscall.SIGCONT) }

func (s *Server) send(sig syscall.Signal) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return errors.New("mosquitto: not running")
	}
	if err := s.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("mosquitto: %w", err)
	}
	return nil
}

// Log returns what mosquitto wrote so far.
func (s *Server) Log() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.log.String()
}

// freePort asks the kernel for a free loopback port.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("mosquitto: find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
