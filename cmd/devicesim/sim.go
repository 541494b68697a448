package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/flotaio/flota/agent"
	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
	"github.com/flotaio/flota/mqttclient"
)

// closeParallelism bounds how many agents disconnect at once at exit.
const closeParallelism = 256

// pollInterval is how often the exit condition and progress are checked.
const pollInterval = 100 * time.Millisecond

// usageError is a bad command line: main exits with status 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{fmt.Sprintf(format, args...)}
}

// options are the command-line flags.
type options struct {
	broker          string
	devices         int
	idPrefix        string
	model           string
	version         string
	tags            map[string]string
	rebootDelay     time.Duration
	installDelay    time.Duration
	faults          agent.Faults
	seed            uint64
	connectRate     int
	summaryFile     string
	stateDir        string
	exitWhenUpdated string
	duration        time.Duration
	username        string
	password        string
	credentials     string
	enrollToken     string
	caFile          string
	certFile        string
	keyFile         string
	logLevel        slog.Level
	publicKeyFile   string
	publicKey       ed25519.PublicKey
	bandwidth       int64         // bytes/s per device and direction; 0: unlimited
	latency         time.Duration // one way
	memProfile      string
	cpuProfile      string
	keepAlive       time.Duration
	flashRate       int64 // bytes/s a device writes to flash; 0: instant
	maxChunk        int   // limit stated by limited devices; 0: none
	maxWindow       int   // as maxChunk
	limitedEvery    int   // every this many devices is limited, from the first
	quietLimits     bool  // limited devices enforce their limits without stating them
	subscribeQoS    int   // QoS of the down subscription, 0 or 1
	resubscribe     time.Duration
	imageFile       string
	image           []byte   // content of --image, the base every device runs at start
	caps            []string // payload encodings the devices decode (--caps)
}

func newFlagSet(o *options, tags, caps *string) *flag.FlagSet {
	fs := flag.NewFlagSet("devicesim", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are returned; main prints them with the usage
	fs.StringVar(&o.broker, "broker", "tcp://127.0.0.1:1883", "MQTT broker URL, or the nodes of a cluster, comma-separated: device i connects first to node i mod N and fails over to the others")
	fs.IntVar(&o.devices, "devices", 10, "number of simulated devices")
	fs.StringVar(&o.idPrefix, "id-prefix", "sim-", "device ID prefix; IDs are the prefix and a 5-digit number from 00001")
	fs.StringVar(&o.model, "model", "sim-a", "device model")
	fs.StringVar(&o.version, "version", "1.0.0", "firmware version the devices run at start")
	fs.StringVar(tags, "tags", "", "device tags, k=v,k2=v2")
	fs.DurationVar(&o.rebootDelay, "reboot-delay", agent.DefaultRebootDelay, "time a device is off while rebooting")
	fs.DurationVar(&o.installDelay, "install-delay", 0, "simulated install time")
	fs.Float64Var(&o.faults.DropChunks, "drop-chunks", 0, "probability (0..1) that a device ignores a chunk")
	fs.Float64Var(&o.faults.FailInstall, "fail-install", 0, "probability (0..1) that an install fails")
	fs.Float64Var(&o.faults.Disconnect, "disconnect", 0, "probability (0..1) that a device disconnects once mid-transfer")
	fs.Uint64Var(&o.seed, "seed", 0, "seed of the fault injection (0: random)")
	fs.IntVar(&o.connectRate, "connect-rate", 500, "connections opened per second at start")
	fs.IntVar(&o.subscribeQoS, "subscribe-qos", 1, "QoS of each device's down subscription, 0 or 1 (docs/BROKERS.md, \"Large fleets on RabbitMQ 3.10\")")
	fs.DurationVar(&o.resubscribe, "resubscribe-after", 0, "subscribe again this long after each connection, then at doubling intervals, so that a subscription RabbitMQ lost ends the connection (docs/BROKERS.md); 0: never")
	fs.StringVar(&o.summaryFile, "summary", "", "write the summary as JSON to this file")
	fs.StringVar(&o.stateDir, "state-dir", "", "keep each device's state (version, held transfer, install count) in DIR/<id>.json, "+
		"created if missing; a devicesim restarted with the same DIR resumes its devices where they were. "+
		"The summary's installs then counts across runs, installs_this_run this process's only")
	fs.StringVar(&o.exitWhenUpdated, "exit-when-updated", "", "exit once every device runs this version or reported a failure or rejection")
	fs.DurationVar(&o.duration, "duration", 0, "exit after this long (0: no limit)")
	fs.StringVar(&o.username, "username", "", "MQTT username")
	fs.StringVar(&o.password, "password", "", "MQTT password")
	fs.StringVar(&o.credentials, "credentials", "", "CSV file id,secret (orchestrator device provision --out): each device's MQTT password; "+
		"the devices keep the IDs of --id-prefix and --devices, and each must have a row")
	fs.StringVar(&o.enrollToken, "enroll-token", "", "fleet enrollment token: devices enroll themselves (pending until approved unless the server auto-approves)")
	fs.StringVar(&o.caFile, "ca-file", "", "PEM CA of the broker's certificate, for ssl:// (default: system roots)")
	fs.StringVar(&o.certFile, "cert", "", "PEM client certificate for mutual TLS; {id} in the path is replaced by each device's ID")
	fs.StringVar(&o.keyFile, "key", "", "PEM key of --cert; {id} is replaced as in --cert")
	fs.TextVar(&o.logLevel, "log-level", slog.LevelWarn, "log level: debug, info, warn, error")
	fs.StringVar(&o.publicKeyFile, "public-key", "", "PEM ed25519 public key the devices verify firmware signatures with "+
		"(orchestrator keys generate); without it they install unsigned images and downgrades")
	fs.Var((*rateFlag)(&o.bandwidth), "bandwidth", "each device's link rate per direction in bytes/s: 20000, 20KB (=20000), 20KiB (=20480), 1MB; 0: unlimited")
	fs.DurationVar(&o.keepAlive, "keepalive", agent.DefaultKeepAlive, "MQTT keepalive of each device; 0: none (saves a goroutine and a timer per device)")
	fs.StringVar(&o.memProfile, "memprofile", "", "write a heap profile of the fleet to this file before it disconnects")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of the whole run to this file")
	fs.Var((*rateFlag)(&o.flashRate), "flash-rate", "how fast each device writes chunks to flash, blocking before it acks, in bytes/s as --bandwidth (16 KiB in 300 ms: 54613); 0: instant")
	fs.IntVar(&o.maxChunk, "max-chunk", 0, "largest chunk payload in bytes (256..65536) the limited devices take and state in their hello; 0: no limit")
	fs.IntVar(&o.maxWindow, "max-window", 0, "largest window in chunks (1..64) the limited devices take and state in their hello; 0: no limit")
	fs.IntVar(&o.limitedEvery, "limited-every", 1, "with --max-chunk or --max-window, every Nth device is limited (1: all; 2: the 1st, 3rd, ...)")
	fs.BoolVar(&o.quietLimits, "quiet-limits", false, "limited devices enforce their limits without stating them, as 1.0 agents (they reject larger offers chunk_too_large)")
	fs.DurationVar(&o.latency, "latency", 0, "one-way delay added to every message a device receives and sends (a round trip gains twice this)")
	fs.Float64Var(&o.faults.RebootMidDownload, "reboot-mid-download", 0, "probability (0..1) that a device loses power once mid-transfer and boots again "+
		"after --reboot-delay, resuming from its last checkpoint with --state-dir, else from scratch")
	fs.StringVar(&o.imageFile, "image", "", "file whose content is the image the devices run at start: its SHA-256 is stated in their hello, "+
		"and it is the base of the deltas they apply (held once for the whole fleet)")
	fs.StringVar(caps, "caps", protocol.EncodingDeflate+","+protocol.EncodingBSDiff, "payload encodings the devices decode and state in their hello, "+
		"comma-separated (deflate, bsdiff; bsdiff only with a known running image); empty: none, the devices take plain images only")
	return fs
}

func usage() string {
	var o options
	var tags, caps string
	fs := newFlagSet(&o, &tags, &caps)
	var b bytes.Buffer
	b.WriteString("usage: devicesim [flags]\n")
	fs.SetOutput(&b)
	fs.PrintDefaults()
	return b.String()
}

// parseFlags parses and validates the command line.
func parseFlags(args []string) (options, error) {
	var o options
	var tags, caps string
	fs := newFlagSet(&o, &tags, &caps)
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return o, err
		}
		return o, usagef("%v", err)
	}
	if fs.NArg() > 0 {
		return o, usagef("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	var err error
	brokers := mqttclient.SplitURLs(o.broker)
	if len(brokers) == 0 {
		return o, usagef("--broker %q: want a URL such as tcp://127.0.0.1:1883", o.broker)
	}
	for _, b := range brokers {
		u, err := url.Parse(b)
		if err != nil || u.Scheme == "" || u.Host == "" {
			return o, usagef("--broker %q: want a URL such as tcp://127.0.0.1:1883", b)
		}
	}
	if o.devices < 1 {
		return o, usagef("--devices must be at least 1, got %d", o.devices)
	}
	if o.devices > 99999 {
		return o, usagef("--devices must be at most 99999, got %d", o.devices)
	}
	if id := deviceID(o.idPrefix, 1); !fleet.ValidDeviceID(id) || len(deviceID(o.idPrefix, o.devices)) > 64 {
		return o, usagef("--id-prefix %q: device IDs must match [A-Za-z0-9._-]{1,64}", o.idPrefix)
	}
	if o.version == "" {
		return o, usagef("--version must not be empty")
	}
	for _, p := range []struct {
		name string
		v    float64
	}{{"drop-chunks", o.faults.DropChunks}, {"fail-install", o.faults.FailInstall}, {"disconnect", o.faults.Disconnect},
		{"reboot-mid-download", o.faults.RebootMidDownload}} {
		if !(p.v >= 0 && p.v <= 1) {
			return o, usagef("--%s must be a probability in 0..1, got %v", p.name, p.v)
		}
	}
	if o.connectRate < 1 {
		return o, usagef("--connect-rate must be at least 1, got %d", o.connectRate)
	}
	if o.rebootDelay < 0 || o.installDelay < 0 || o.duration < 0 || o.latency < 0 || o.keepAlive < 0 || o.resubscribe < 0 {
		return o, usagef("--reboot-delay, --install-delay, --duration, --latency, --keepalive and --resubscribe-after must not be negative")
	}
	if o.maxChunk != 0 && (o.maxChunk < protocol.MinDeviceChunk || o.maxChunk > protocol.MaxChunkPayload) {
		return o, usagef("--max-chunk must be 0 or %d..%d, got %d", protocol.MinDeviceChunk, protocol.MaxChunkPayload, o.maxChunk)
	}
	if o.maxWindow < 0 || o.maxWindow > protocol.MaxDeviceWindow {
		return o, usagef("--max-window must be 0..%d, got %d", protocol.MaxDeviceWindow, o.maxWindow)
	}
	if o.limitedEvery < 1 {
		return o, usagef("--limited-every must be at least 1, got %d", o.limitedEvery)
	}
	if o.subscribeQoS != 0 && o.subscribeQoS != 1 {
		return o, usagef("--subscribe-qos must be 0 or 1, got %d", o.subscribeQoS)
	}
	if o.keepAlive > 0 && o.keepAlive < time.Second {
		return o, usagef("--keepalive must be 0 or at least 1s, got %s", o.keepAlive)
	}
	if o.tags, err = fleet.ParseTags(tags); err != nil {
		return o, usagef("--tags: %v", err)
	}
	// What the orchestrator would refuse in every hello (docs/PROTOCOL.md §4).
	for k, v := range o.tags {
		if !protocol.ValidIdent(k) || !protocol.ValidIdent(v) {
			return o, usagef("--tags: %q=%q: keys and values are at most %d bytes of printable ASCII", k, v, protocol.MaxIdentLen)
		}
	}
	if len(o.tags) > protocol.MaxTags || !protocol.ValidIdent(o.model) || !protocol.ValidIdent(o.version) || o.version == "" {
		return o, usagef("--model, --version (not empty) and --tags (at most %d): at most %d bytes of printable ASCII each", protocol.MaxTags, protocol.MaxIdentLen)
	}
	if o.caps, err = parseCaps(caps); err != nil {
		return o, err
	}
	if o.imageFile != "" {
		if o.image, err = os.ReadFile(o.imageFile); err != nil {
			return o, usagef("--image: %v", err)
		}
	}
	if o.publicKeyFile != "" {
		if o.publicKey, err = protocol.ReadPublicKeyFile(o.publicKeyFile); err != nil {
			return o, usagef("--public-key: %v", err)
		}
	}
	return o, nil
}

func deviceID(prefix string, n int) string { return fmt.Sprintf("%s%05d", prefix, n) }

// parseCaps parses --caps: known encodings, comma-separated; never nil, so
// that an empty list turns every encoding off.
func parseCaps(s string) ([]string, error) {
	out := []string{}
	for _, c := range strings.Split(s, ",") {
		switch c = strings.TrimSpace(c); c {
		case "":
		case protocol.EncodingDeflate, protocol.EncodingBSDiff:
			if !slices.Contains(out, c) {
				out = append(out, c)
			}
		default:
			return nil, usagef("--caps %q: want deflate, bsdiff or both, comma-separated", s)
		}
	}
	return out, nil
}

// run is the whole program: parse flags, start the fleet, wait for the end
// (ctx, --duration or --exit-when-updated), print the summary.
func run(ctx context.Context, args []string, stdout io.Writer) error {
	o, err := parseFlags(args)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: o.logLevel}))

	seed := o.seed
	if seed == 0 {
		seed = rand.Uint64()
	}
	if o.stateDir != "" {
		if err := os.MkdirAll(o.stateDir, 0o755); err != nil {
			return fmt.Errorf("state directory: %w", err)
		}
	}
	sec, err := loadSecurity(o)
	if err != nil {
		return err
	}
	if o.cpuProfile != "" {
		stop, err := startCPUProfile(o.cpuProfile)
		if err != nil {
			return err
		}
		defer stop(log)
	}
	rebootDelay := max(o.rebootDelay, time.Millisecond) // the agent reads zero as its default
	// One copy of each image for the whole fleet: the base they run, and
	// each image they install (agent.Images).
	images := agent.NewImages()
	var running string
	if o.image != nil {
		running = images.Add(o.image)
	}
	agents := make([]*agent.Agent, o.devices)
	for i := range agents {
		id := deviceID(o.idPrefix, i+1)
		var stateFile string
		if o.stateDir != "" {
			stateFile = filepath.Join(o.stateDir, id+".json")
		}
		cfg := agent.Config{
			Broker: strings.Join(mqttclient.RotateURLs(mqttclient.SplitURLs(o.broker), i), ","), ID: id, Model: o.model, Version: o.version, Tags: o.tags,
			RebootDelay: rebootDelay, InstallDelay: o.installDelay, Faults: o.faults, StateFile: stateFile,
			Seed: seed + uint64(i) + 1, Logger: log, Username: o.username, Password: o.password,
			PublicKey: o.publicKey,
			Bandwidth: o.bandwidth, Latency: o.latency, KeepAlive: keepAlive(o.keepAlive), FlashRate: o.flashRate,
			SubscribeQoS0: o.subscribeQoS == 0, ResubscribeAfter: o.resubscribe,
			Image: running, Images: images, Encodings: o.caps,
		}
		if i%o.limitedEvery == 0 {
			cfg.MaxChunk, cfg.MaxWindow, cfg.QuietLimits = o.maxChunk, o.maxWindow, o.quietLimits
		}
		if err := sec.apply(&cfg); err != nil {
			return err
		}
		agents[i] = agent.New(cfg)
	}

	started := time.Now()
	startCtx, stopStarting := context.WithCancel(ctx)
	var wg sync.WaitGroup // the starter and every Start call
	wg.Add(1)
	go func() {
		defer wg.Done()
		startAll(startCtx, agents, o.connectRate, log, &wg)
	}()

	var ps processSampler
	waitForEnd(ctx, o, agents, log, &ps)
	sum := summarize(o, agents, time.Since(started))
	sum.Profile = profileOf(o, seed)
	sum.Process = ps.final(len(agents))
	if o.memProfile != "" {
		if err := writeHeapProfile(o.memProfile); err != nil {
			log.Warn("heap profile not written", "err", err)
		}
	}
	stopStarting()
	wg.Wait()
	closeAll(agents, log)

	writeText(stdout, sum)
	if o.summaryFile != "" {
		b, err := json.MarshalIndent(sum, "", "  ")
		if err != nil {
			return fmt.Errorf("encode summary: %w", err)
		}
		if err := os.WriteFile(o.summaryFile, append(b, '\n'), 0o644); err != nil {
			return fmt.Errorf("write summary: %w", err)
		}
	}
	return nil
}

// startAll starts the agents at rate per second. Each Start runs in its own
// goroutine (tracked by wg) because it waits for the connection.
func startAll(ctx context.Context, agents []*agent.Agent, rate int, log *slog.Logger, wg *sync.WaitGroup) {
	interval := time.Second / time.Duration(rate)
	begin := time.Now()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for i, a := range agents {
		if wait := time.Until(begin.Add(time.Duration(i) * interval)); wait > 0 {
			timer.Reset(wait)
			select {
			case <-ctx.Done():
				return
			case <-timer.C:
			}
		} else if ctx.Err() != nil {
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := a.Start(ctx); err != nil && ctx.Err() == nil {
				log.Warn("device not connected yet; retrying in the background", "device", a.ID(), "err", err)
			}
		}()
	}
	log.Info("all devices started", "devices", len(agents), "elapsed", time.Since(begin))
}

// waitForEnd returns when ctx ends, --duration passes or, with
// --exit-when-updated, every device is done.
func waitForEnd(ctx context.Context, o options, agents []*agent.Agent, log *slog.Logger, ps *processSampler) {
	var deadline <-chan time.Time
	if o.duration > 0 {
		t := time.NewTimer(o.duration)
		defer t.Stop()
		deadline = t.C
	}
	poll := time.NewTicker(pollInterval)
	defer poll.Stop()
	lastLog := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-deadline:
			return
		case <-poll.C:
		}
		ps.maybeSample()
		if o.exitWhenUpdated == "" && time.Since(lastLog) < 5*time.Second {
			continue
		}
		done, connected, updated := 0, 0, 0
		for _, a := range agents {
			s := a.Stats()
			if s.Connected {
				connected++
			}
			if s.Version == o.exitWhenUpdated {
				updated++
			}
			if finished(s, o.exitWhenUpdated) {
				done++
			}
		}
		if time.Since(lastLog) >= 5*time.Second {
			lastLog = time.Now()
			log.Info("progress", "devices", len(agents), "connected", connected, "on_target", updated, "finished", done)
		}
		if o.exitWhenUpdated != "" && done == len(agents) {
			return
		}
	}
}

// finished reports whether a device is done for --exit-when-updated: it
// holds no transfer, and it runs the target version (and is connected, so its
// hello went out) or its last transfer failed, was rejected or was cancelled.
// A device only knows its own reports, so a failure that the orchestrator
// would retry later counts as finished too.
func finished(s agent.Stats, target string) bool {
	if s.Holding {
		return false
	}
	return (s.Connected && s.Version == target) || s.Failed || s.State == fleet.StateCancelled
}

// summary is what devicesim prints at exit.
type summary struct {
	Devices         int      `json:"devices"`
	Connected       int      `json:"connected"`
	Updated         int      `json:"updated"`
	Failed          int      `json:"failed"`
	Installs        int      `json:"installs"`          // with --state-dir: across runs
	InstallsThisRun int      `json:"installs_this_run"` // by this process
	BytesReceived   int64    `json:"bytes_received"`
	ChunksDropped   int      `json:"chunks_dropped"`
	BadFrames       int      `json:"bad_frames"`
	QueueDropped    int      `json:"queue_dropped"`
	OversizedFrames int      `json:"oversized_frames"` // frames over a limited device's --max-chunk, dropped
	UpdateTimeP50Ms float64  `json:"update_time_p50_ms"`
	UpdateTimeP99Ms float64  `json:"update_time_p99_ms"`
	ElapsedSeconds  float64  `json:"elapsed_seconds"`
	PowerCuts       int      `json:"power_cuts"`
	Outcomes        outcomes `json:"outcomes"`
	// DeviceTime: from the offer to the confirmed boot, failure or cancel.
	DeviceTime    timeStats      `json:"device_time"`
	Profile       profile        `json:"profile"`
	Process       processStats   `json:"process"`
	DevicesDetail []deviceDetail `json:"devices_detail"`
}

// deviceDetail is one device in the summary.
type deviceDetail struct {
	ID            string  `json:"id"`
	Version       string  `json:"version"`
	Connected     bool    `json:"connected"`
	Installs      int     `json:"installs"`
	BytesReceived int64   `json:"bytes_received"`
	ImageSHA256   string  `json:"image_sha256,omitempty"`
	Failed        bool    `json:"failed"`
	Reason        string  `json:"reason,omitempty"`
	UpdateTimeMs  float64 `json:"update_time_ms,omitempty"`
	MaxChunk      int     `json:"max_chunk,omitempty"` // the device's --max-chunk, if limited
	Image         string  `json:"image,omitempty"`     // SHA-256 of the image it runs, when known
	Encoding      string  `json:"encoding,omitempty"`  // payload encoding of its last transfer
}

// summarize collects the fleet's stats. Updated counts devices on the
// --exit-when-updated version, or else on any version but the initial one.
func summarize(o options, agents []*agent.Agent, elapsed time.Duration) summary {
	sum := summary{Devices: len(agents), ElapsedSeconds: elapsed.Seconds(), DevicesDetail: make([]deviceDetail, 0, len(agents))}
	var times []time.Duration
	all := make([]agent.Stats, 0, len(agents))
	for _, a := range agents {
		s := a.Stats()
		all = append(all, s)
		sum.PowerCuts += s.PowerCuts
		if s.Connected {
			sum.Connected++
		}
		if (o.exitWhenUpdated != "" && s.Version == o.exitWhenUpdated) || (o.exitWhenUpdated == "" && s.Version != o.version) {
			sum.Updated++
		}
		if s.Failed {
			sum.Failed++
		}
		sum.Installs += s.Installs
		sum.InstallsThisRun += s.Installs - s.InstallsBefore
		sum.BytesReceived += s.BytesReceived
		sum.ChunksDropped += s.ChunksDropped
		sum.BadFrames += s.BadFrames
		sum.QueueDropped += s.QueueDropped
		sum.OversizedFrames += s.OversizedFrames
		if s.UpdateTime > 0 {
			times = append(times, s.UpdateTime)
		}
		sum.DevicesDetail = append(sum.DevicesDetail, deviceDetail{
			ID: s.ID, Version: s.Version, Connected: s.Connected, Installs: s.Installs, BytesReceived: s.BytesReceived,
			ImageSHA256: s.ImageSHA256, Failed: s.Failed, Reason: string(s.LastReason), UpdateTimeMs: ms(s.UpdateTime),
			MaxChunk: a.MaxChunk(), Image: s.Image, Encoding: s.Encoding,
		})
	}
	slices.Sort(times)
	sum.UpdateTimeP50Ms = ms(percentile(times, 0.50))
	sum.UpdateTimeP99Ms = ms(percentile(times, 0.99))
	sum.Outcomes, sum.DeviceTime = outcomeStats(o, all)
	return sum
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// percentile is the nearest-rank percentile of sorted durations.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p*float64(len(sorted))+0.999999) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func writeText(w io.Writer, s summary) {
	fmt.Fprintf(w, "devices         %d\n", s.Devices)
	fmt.Fprintf(w, "connected       %d\n", s.Connected)
	fmt.Fprintf(w, "updated         %d\n", s.Updated)
	fmt.Fprintf(w, "failed          %d\n", s.Failed)
	fmt.Fprintf(w, "installs        %d (this run %d)\n", s.Installs, s.InstallsThisRun)
	fmt.Fprintf(w, "bytes_received  %d\n", s.BytesReceived)
	fmt.Fprintf(w, "chunks_dropped  %d\n", s.ChunksDropped)
	fmt.Fprintf(w, "bad_frames      %d\n", s.BadFrames)
	fmt.Fprintf(w, "queue_dropped   %d\n", s.QueueDropped)
	fmt.Fprintf(w, "update_time     p50 %.0f ms, p99 %.0f ms\n", s.UpdateTimeP50Ms, s.UpdateTimeP99Ms)
	fmt.Fprintf(w, "power_cuts      %d\n", s.PowerCuts)
	fmt.Fprintf(w, "device_time     p50 %.0f ms, p90 %.0f ms, p99 %.0f ms, max %.0f ms (%d devices)\n",
		s.DeviceTime.P50Ms, s.DeviceTime.P90Ms, s.DeviceTime.P99Ms, s.DeviceTime.MaxMs, s.DeviceTime.Count)
	fmt.Fprintf(w, "memory          RSS %.1f MiB (%.1f KiB/device), peak %.1f MiB, heap %.1f MiB, %d goroutines\n",
		mib(s.Process.RSSBytes), float64(s.Process.RSSPerDeviceBytes)/1024, mib(s.Process.PeakRSSBytes),
		mib(s.Process.HeapInuseBytes), s.Process.Goroutines)
	fmt.Fprintf(w, "elapsed         %.1f s\n", s.ElapsedSeconds)
}

// closeAll disconnects every agent, closeParallelism at a time.
func closeAll(agents []*agent.Agent, log *slog.Logger) {
	sem := make(chan struct{}, closeParallelism)
	var wg sync.WaitGroup
	for _, a := range agents {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := a.Close(); err != nil {
				log.Warn("close device", "device", a.ID(), "err", err)
			}
		}()
	}
	wg.Wait()
}
