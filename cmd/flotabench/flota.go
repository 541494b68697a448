package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/httpapi"
	"github.com/flotaio/flota/internal/rollout"
)

// Flota run settings.
const (
	simModel       = "sim-a"
	simFromVersion = "1.0.0"
	simToVersion   = "1.1.0"
	// simRebootDelay is devicesim's smallest reboot: it reads 0 as 1 ms.
	simRebootDelay = time.Millisecond
	pollEvery      = 20 * time.Millisecond
	startTimeout   = 30 * time.Second
	simExitTimeout = 60 * time.Second
)

// simSummary is the part of devicesim's --summary JSON the benchmark reads.
type simSummary struct {
	Devices         int     `json:"devices"`
	Updated         int     `json:"updated"`
	Failed          int     `json:"failed"`
	BytesReceived   int64   `json:"bytes_received"`
	BadFrames       int     `json:"bad_frames"`
	QueueDropped    int     `json:"queue_dropped"`
	UpdateTimeP50Ms float64 `json:"update_time_p50_ms"`
	UpdateTimeP99Ms float64 `json:"update_time_p99_ms"`
	Process         struct {
		PeakRSSBytes int64 `json:"peak_rss_bytes"`
	} `json:"process"`
}

// apiStats is the part of GET /api/v1/stats the benchmark reads.
type apiStats struct {
	Engine rollout.Stats `json:"engine"`
	Broker struct {
		MessagesDropped int64 `json:"messages_dropped"`
		RateLimited     int64 `json:"rate_limited"`
	} `json:"broker"`
	Store struct {
		Transactions int64 `json:"transactions"`
	} `json:"store"`
}

// runFlotaBench starts an orchestrator and a devicesim fleet, updates the
// fleet to image and measures the update from its creation to its end.
func runFlotaBench(ctx context.Context, o options, image []byte, tmp string, stderr io.Writer) (res result, err error) {
	dir := filepath.Join(tmp, "flota")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return res, err
	}
	orchLog, err := os.Create(filepath.Join(dir, "orchestrator.log"))
	if err != nil {
		return res, err
	}
	defer orchLog.Close()
	token := httpapi.NewToken()
	tokenFile := filepath.Join(dir, "api-tokens")
	if err := os.WriteFile(tokenFile, []byte("flotabench admin "+httpapi.HashToken(token)+"\n"), 0o600); err != nil {
		return res, err
	}
	watch := newLineWatcher(orchLog, "mqtt listening on ", "http listening on ", "debug profiles on ")
	serveArgs := []string{"serve",
		"--data", filepath.Join(dir, "data"), "--mqtt", "127.0.0.1:0", "--http", "127.0.0.1:0",
		"--api-token-file", tokenFile,
		"--window", strconv.Itoa(o.Window), "--log-level", o.LogLevel,
	}
	if o.ProfileDir != "" {
		serveArgs = append(serveArgs, "--debug-addr", "127.0.0.1:0")
	}
	orch, err := startChild("orchestrator", filepath.Join(o.BinDir, "orchestrator"), serveArgs, nil, nil, orchLog, watch, orchLog.Name())
	if err != nil {
		return res, err
	}
	defer orch.stop()
	rss := sampleRSS(orch.pid())
	sampling := true
	defer func() {
		if sampling {
			rss.stop()
		}
	}()

	startCtx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	mqttURL, err := waitLine(startCtx, watch, orch, "mqtt listening on ")
	if err != nil {
		return res, err
	}
	apiURL, err := waitLine(startCtx, watch, orch, "http listening on ")
	if err != nil {
		return res, err
	}
	api := &apiClient{base: strings.TrimRight(apiURL, "/"), token: token, hc: &http.Client{Timeout: 30 * time.Second}}
	var prof *profiler
	if o.ProfileDir != "" {
		debugURL, err := waitLine(startCtx, watch, orch, "debug profiles on ")
		if err != nil {
			return res, err
		}
		if err := os.MkdirAll(o.ProfileDir, 0o755); err != nil {
			return res, err
		}
		prof = &profiler{base: debugURL, dir: o.ProfileDir}
	}

	simOut, err := os.Create(filepath.Join(dir, "devicesim.log"))
	if err != nil {
		return res, err
	}
	defer simOut.Close()
	summaryFile := filepath.Join(dir, "summary.json")
	credsFile := filepath.Join(dir, "creds.csv")
	if err := provision(ctx, api, o.Devices, credsFile); err != nil {
		return res, err
	}
	simArgs := []string{
		"--broker", mqttURL, "--credentials", credsFile, "--devices", strconv.Itoa(o.Devices), "--model", simModel, "--version", simFromVersion,
		"--reboot-delay", simRebootDelay.String(), "--connect-rate", strconv.Itoa(o.ConnectRate),
		"--summary", summaryFile, "--exit-when-updated", simToVersion,
	}
	if o.Latency > 0 {
		simArgs = append(simArgs, "--latency", o.Latency.String())
	}
	if o.ProfileDir != "" {
		simArgs = append(simArgs, "--cpuprofile", filepath.Join(o.ProfileDir, "devicesim-cpu.pprof"),
			"--memprofile", filepath.Join(o.ProfileDir, "devicesim-heap.pprof"))
	}
	sim, err := startChild("devicesim", filepath.Join(o.BinDir, "devicesim"), simArgs, simEnv(), nil, simOut, simOut, simOut.Name())
	if err != nil {
		return res, err
	}
	defer sim.stop()

	// Every device online (registered by its hello).
	onlineBy := time.Duration(o.Devices/o.ConnectRate)*time.Second*3 + startTimeout
	if err := waitOnline(ctx, api, sim, o.Devices, onlineBy); err != nil {
		return res, err
	}
	fmt.Fprintf(stderr, "flota: %d devices online\n", o.Devices)

	var fw fleet.Firmware
	q := url.Values{"version": {simToVersion}, "name": {"bench"}, "model": {simModel}}
	if err := api.do(ctx, "POST", "/api/v1/firmware?"+q.Encode(), "application/octet-stream", image, &fw); err != nil {
		return res, fmt.Errorf("add firmware: %w", err)
	}
	var before apiStats
	if err := api.do(ctx, "GET", "/api/v1/stats", "", nil, &before); err != nil {
		return res, err
	}

	req, err := json.Marshal(rollout.CreateRequest{FirmwareID: fw.ID, Policy: fleet.Policy{
		MaxInFlight: o.MaxInFlight, Window: o.Window, ChunkSize: o.ChunkSize}})
	if err != nil {
		return res, err
	}
	var upd fleet.UpdateSummary
	cpu := startCPU(orch, sim)
	start := time.Now()
	if err := api.do(ctx, "POST", "/api/v1/updates", "application/json", req, &upd); err != nil {
		return res, fmt.Errorf("create update: %w", err)
	}
	if prof != nil {
		prof.start(ctx)
	}
	sum, err := waitTerminal(ctx, api, upd.ID, o.Timeout)
	end := time.Now()
	res.BrokerCPU, res.DevicesCPU = cpu.stop()
	res.DevicesPeakRSS = peakRSSOf(sim)
	if prof != nil {
		if perr := prof.wait(); perr != nil {
			fmt.Fprintf(stderr, "flota: %v\n", perr)
		} else {
			fmt.Fprintf(stderr, "flota: profiles in %s (go tool pprof -top %s)\n", o.ProfileDir, filepath.Join(o.BinDir, "orchestrator"))
		}
	}
	if err != nil {
		return res, err
	}
	elapsed := end.Sub(start)
	if sum.FinishedAt != nil && !upd.CreatedAt.IsZero() {
		// The orchestrator's own timestamps, without the polling interval.
		elapsed = sum.FinishedAt.Sub(upd.CreatedAt)
	}

	var after apiStats
	if err := api.do(ctx, "GET", "/api/v1/stats", "", nil, &after); err != nil {
		return res, err
	}
	mem, memErr := readMem(orch.pid())
	res.PeakRSS = rss.stop()
	sampling = false
	if memErr == nil {
		res.HWM = mem.HWM
		res.PeakRSS = max(res.PeakRSS, mem.RSS)
	}

	// devicesim exits by itself once every device runs the new version.
	if !sim.waitExit(ctx, simExitTimeout) {
		fmt.Fprintln(stderr, "flota: devicesim did not exit by itself; stopping it")
		sim.stop()
	}
	var ss simSummary
	if b, err := os.ReadFile(summaryFile); err != nil {
		return res, fmt.Errorf("devicesim summary: %w\n%s", err, sim.failure())
	} else if err := json.Unmarshal(b, &ss); err != nil {
		return res, fmt.Errorf("devicesim summary: %w", err)
	}
	if sum.State != fleet.UpdateCompleted || ss.Updated != o.Devices {
		return res, fmt.Errorf("update %s ended %s: %v; devicesim: %d of %d devices updated, %d failed, %d bad frames, %d queue drops; broker dropped %d",
			upd.ID, sum.State, sum.Counts, ss.Updated, o.Devices, ss.Failed, ss.BadFrames, ss.QueueDropped, after.Broker.MessagesDropped)
	}

	if after.Broker.RateLimited > 0 {
		fmt.Fprintf(stderr, "flota: the broker's per-client rate limit dropped %d device messages\n", after.Broker.RateLimited)
	}
	res.Name = runFlota
	res.Devices = o.Devices
	res.Completed = ss.Updated
	res.Seconds = elapsed.Seconds()
	res.rates(o.Size)
	res.P50Ms, res.P99Ms = ss.UpdateTimeP50Ms, ss.UpdateTimeP99Ms
	if ss.Process.PeakRSSBytes > 0 { // devicesim's whole run; the VmHWM read above may predate its end
		res.DevicesPeakRSS = ss.Process.PeakRSSBytes
	}
	res.RSSProcess = "orchestrator"
	res.SQLiteTx = after.Store.Transactions - before.Store.Transactions
	res.SQLiteTxTotal = after.Store.Transactions
	res.Resends = after.Engine.Resends - before.Engine.Resends
	res.Acks = after.Engine.Acks - before.Engine.Acks
	res.BrokerDropped = after.Broker.MessagesDropped
	res.Note = fmt.Sprintf("update created -> completed (orchestrator's clock); device time = offer -> hello after reboot "+
		"(devicesim --reboot-delay %v, its minimum, no install delay); RSS of the orchestrator (broker, engine, store)", simRebootDelay)
	return res, nil
}

// waitOnline polls until n devices are online.
func waitOnline(ctx context.Context, api *apiClient, sim *child, n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var list struct {
		Total int `json:"total"`
	}
	for {
		if err := api.do(ctx, "GET", "/api/v1/devices?online=true&limit=1", "", nil, &list); err != nil {
			return err
		}
		if list.Total >= n {
			return nil
		}
		if sim.exited() {
			return fmt.Errorf("%d of %d devices online: %s", list.Total, n, sim.failure())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("only %d of %d devices online after %v", list.Total, n, timeout)
		}
		if err := sleep(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
}

// waitTerminal polls an update until it ends.
func waitTerminal(ctx context.Context, api *apiClient, id string, timeout time.Duration) (fleet.UpdateSummary, error) {
	deadline := time.Now().Add(timeout)
	for {
		var sum fleet.UpdateSummary
		if err := api.do(ctx, "GET", "/api/v1/updates/"+url.PathEscape(id), "", nil, &sum); err != nil {
			return sum, err
		}
		if sum.State.Terminal() {
			return sum, nil
		}
		if time.Now().After(deadline) {
			return sum, fmt.Errorf("update %s still %s after %v (--timeout): %d of %d devices finished, %v",
				id, sum.State, timeout, sum.Finished(), sum.Total, sum.Counts)
		}
		if err := sleep(ctx, pollEvery); err != nil {
			return sum, err
		}
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.C:
		return nil
	}
}

// apiClient calls the orchestrator's HTTP API.
type apiClient struct {
	base  string
	token string // an admin token
	hc    *http.Client
}

// do sends body (if not nil) and decodes a 2xx JSON response into out.
func (c *apiClient) do(ctx context.Context, method, path, contentType string, body []byte, out any) error {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, bytes.TrimSpace(b))
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("%s %s: decode: %w", method, path, err)
	}
	return nil
}
