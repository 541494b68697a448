package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// stopGrace is how long a child has to exit after SIGTERM before SIGKILL.
const stopGrace = 20 * time.Second

// child is a process this one started. Its stdout and stderr go to log files
// and through lineWatchers that report the lines a benchmark waits for.
type child struct {
	name string
	cmd  *exec.Cmd
	logs []string // files its output goes to

	done chan struct{} // closed once Wait returned
	err  error         // Wait's result; read only after done is closed

	stopOnce sync.Once
}

// simGCPercent is the garbage collector's target for the processes that
// simulate devices (devicesim and the raw and stop-and-wait subscribers),
// unless GOGC is set. Each simulated device costs about ten goroutines of
// paho's, every collection scans all their stacks, and at Go's default of
// 100 a 10,000-device fleet spends about 40% of its process's CPU in the
// collector: CPU the machine's cores then do not give to the broker being
// measured. The higher target halves that at the cost of the simulators'
// memory, and applies to both sides of each comparison alike.
const simGCPercent = 400

// simEnv is the environment of a device-simulating child: this process's,
// with GOGC=simGCPercent unless GOGC is set.
func simEnv() []string {
	env := os.Environ()
	if os.Getenv("GOGC") == "" {
		env = append(env, "GOGC="+strconv.Itoa(simGCPercent))
	}
	return env
}

// startChild starts path with args and env (nil: this process's). Its stdout
// and stderr are written to the given writers (nil: discarded); stdin, if not
// nil, is its standard input.
func startChild(name, path string, args, env []string, stdin io.Reader, stdout, stderr io.Writer, logs ...string) (*child, error) {
	cmd := exec.Command(path, args...)
	cmd.Env = env
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, stdout, stderr
	cmd.SysProcAttr = childAttr()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	c := &child{name: name, cmd: cmd, logs: logs, done: make(chan struct{})}
	go func() { // ends when the process does; stop waits for it
		c.err = cmd.Wait()
		close(c.done)
	}()
	return c, nil
}

// pid is the child's process ID.
func (c *child) pid() int { return c.cmd.Process.Pid }

// exited reports whether the process has ended.
func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// waitExit waits at most d for the process to end by itself and reports
// whether it did.
func (c *child) waitExit(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-c.done:
		return true
	case <-t.C:
	case <-ctx.Done():
	}
	return false
}

// stop ends the process: SIGTERM, then SIGKILL after stopGrace. It returns
// once the process is gone; it is idempotent.
func (c *child) stop() {
	c.stopOnce.Do(func() {
		if c.exited() {
			return
		}
		_ = c.cmd.Process.Signal(syscall.SIGTERM) // fails only if it already exited
		t := time.NewTimer(stopGrace)
		defer t.Stop()
		select {
		case <-c.done:
			return
		case <-t.C:
		}
		_ = c.cmd.Process.Kill()
		<-c.done
	})
}

// failure describes how the child ended, with the tail of its logs, for an
// error message.
func (c *child) failure() string {
	var b strings.Builder
	if c.exited() {
		fmt.Fprintf(&b, "%s exited: %v", c.name, c.err)
	} else {
		fmt.Fprintf(&b, "%s still running", c.name)
	}
	for _, l := range c.logs {
		if tail := tailFile(l, 15); tail != "" {
			fmt.Fprintf(&b, "\n--- last lines of %s:\n%s", l, tail)
		}
	}
	return b.String()
}

// tailFile returns the last n lines of a file, or "" if it cannot be read.
func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// lineWatcher is an io.Writer that copies a child's output to w and sends
// every complete line that starts with one of prefixes to lines (dropping it
// if lines is full: the watched lines are few).
type lineWatcher struct {
	w        io.Writer
	prefixes []string
	lines    chan string

	mu      sync.Mutex // guards partial
	partial []byte     // the current line so far
}

func newLineWatcher(w io.Writer, prefixes ...string) *lineWatcher {
	return &lineWatcher{w: w, prefixes: prefixes, lines: make(chan string, 16)}
}

func (l *lineWatcher) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for rest := p; len(rest) > 0; {
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			l.partial = append(l.partial, rest...)
			break
		}
		line := string(append(l.partial, rest[:i]...))
		l.partial = l.partial[:0]
		rest = rest[i+1:]
		for _, pre := range l.prefixes {
			if strings.HasPrefix(line, pre) {
				select {
				case l.lines <- line:
				default:
				}
				break
			}
		}
	}
	if l.w == nil {
		return len(p), nil
	}
	return l.w.Write(p)
}

// waitLine waits for the next watched line that starts with prefix, until ctx
// ends or c exits.
func waitLine(ctx context.Context, l *lineWatcher, c *child, prefix string) (string, error) {
	for {
		select {
		case line := <-l.lines:
			if rest, ok := strings.CutPrefix(line, prefix); ok {
				return rest, nil
			}
		case <-c.done:
			// The last lines may have been written just before the exit.
			select {
			case line := <-l.lines:
				if rest, ok := strings.CutPrefix(line, prefix); ok {
					return rest, nil
				}
			default:
			}
			return "", fmt.Errorf("waiting for %q: %s", prefix, c.failure())
		case <-ctx.Done():
			return "", fmt.Errorf("waiting for %q from %s: %w", prefix, c.name, context.Cause(ctx))
		}
	}
}

// memStatus is a process's resident memory, from /proc/PID/status.
type memStatus struct {
	RSS int64 // VmRSS, bytes
	HWM int64 // VmHWM (peak RSS), bytes
}

// readMem reads /proc/PID/status; pid 0 means this process.
func readMem(pid int) (memStatus, error) {
	path := "/proc/self/status"
	if pid != 0 {
		path = "/proc/" + strconv.Itoa(pid) + "/status"
	}
	f, err := os.Open(path)
	if err != nil {
		return memStatus{}, err
	}
	defer f.Close()
	return parseMem(f)
}

func parseMem(r io.Reader) (memStatus, error) {
	var m memStatus
	found := 0
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok || (key != "VmRSS" && key != "VmHWM") {
			continue
		}
		f := strings.Fields(val) // "123456 kB"
		if len(f) != 2 || f[1] != "kB" {
			return m, fmt.Errorf("%s: unexpected value %q", key, val)
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return m, fmt.Errorf("%s: %w", key, err)
		}
		if key == "VmRSS" {
			m.RSS = kb << 10
		} else {
			m.HWM = kb << 10
		}
		found++
	}
	if err := sc.Err(); err != nil {
		return m, err
	}
	if found < 2 {
		return m, errors.New("no VmRSS or VmHWM in status")
	}
	return m, nil
}

// rssSampler records the peak VmRSS of a process, sampled at an interval.
type rssSampler struct {
	stopc chan struct{}
	done  chan struct{}
	peak  int64 // written by the sampling goroutine, read after done is closed
}

const rssInterval = 100 * time.Millisecond

func sampleRSS(pid int) *rssSampler {
	s := &rssSampler{stopc: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		t := time.NewTicker(rssInterval)
		defer t.Stop()
		for {
			if m, err := readMem(pid); err == nil {
				s.peak = max(s.peak, m.RSS)
			}
			select {
			case <-s.stopc:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

// stop ends the sampling and returns the peak RSS seen, in bytes. Call it once.
func (s *rssSampler) stop() int64 {
	close(s.stopc)
	<-s.done
	return s.peak
}

// clockTick is the unit of utime and stime in /proc/PID/stat (USER_HZ,
// 100 on every Linux architecture Go supports).
const clockTick = 10 * time.Millisecond

// readCPU returns the CPU time (user and system) a process has used, from
// /proc/PID/stat; pid 0 means this process.
func readCPU(pid int) (time.Duration, error) {
	path := "/proc/self/stat"
	if pid != 0 {
		path = "/proc/" + strconv.Itoa(pid) + "/stat"
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return parseCPU(string(b))
}

func parseCPU(stat string) (time.Duration, error) {
	// The command name (field 2) is in parentheses and may hold spaces.
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("stat: no command name")
	}
	f := strings.Fields(stat[i+1:]) // f[0] is field 3 (state)
	if len(f) < 13 {
		return 0, errors.New("stat: too few fields")
	}
	var total int64
	for _, s := range f[11:13] { // fields 14 and 15: utime, stime
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("stat: %w", err)
		}
		total += v
	}
	return time.Duration(total) * clockTick, nil
}

// cpuMeter measures the CPU time two processes use over an interval: the
// process that holds the broker (nil: this one) and the device process.
type cpuMeter struct {
	procs [2]*child
	start [2]time.Duration
}

func startCPU(broker, devices *child) *cpuMeter {
	m := &cpuMeter{procs: [2]*child{broker, devices}}
	for i, c := range m.procs {
		m.start[i], _ = cpuOf(c) // a failed read shows as an odd figure, not a failed run
	}
	return m
}

// stop returns the CPU seconds each process used since startCPU.
func (m *cpuMeter) stop() (broker, devices float64) {
	var d [2]float64
	for i, c := range m.procs {
		if now, err := cpuOf(c); err == nil {
			d[i] = (now - m.start[i]).Seconds()
		}
	}
	return d[0], d[1]
}

// peakRSSOf returns the peak resident memory (VmHWM) of c so far, in bytes;
// 0 once it exited.
func peakRSSOf(c *child) int64 {
	if c.exited() {
		return 0
	}
	m, err := readMem(c.pid())
	if err != nil {
		return 0
	}
	return m.HWM
}

// cpuOf returns the CPU time c (nil: this process) has used. A child that
// exited meanwhile (devicesim ends by itself once its fleet is updated)
// reports its total, shutdown included.
func cpuOf(c *child) (time.Duration, error) {
	if c == nil {
		return readCPU(0)
	}
	if !c.exited() {
		if d, err := readCPU(c.pid()); err == nil {
			return d, nil
		}
	}
	select {
	case <-c.done:
	case <-time.After(time.Second):
		return 0, fmt.Errorf("cpu time of %s: unreadable", c.name)
	}
	st := c.cmd.ProcessState
	return st.UserTime() + st.SystemTime(), nil
}
