package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/httpapi"
	"github.com/flotaio/flota/internal/rollout"
	"github.com/flotaio/flota/internal/sqlite"
)

// DefaultServer is the API the operator commands talk to without --server
// or FLOTA_SERVER.
const DefaultServer = "http://127.0.0.1:8080"

// APIError is an error answer of the API.
type APIError struct {
	Status  int
	Code    string
	Message string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("%s (%s)", e.Message, e.Code)
}

// Client calls the orchestrator's HTTP API.
type Client struct {
	BaseURL string // such as http://127.0.0.1:8080
	// Token is sent as "Authorization: Bearer Token" when not empty.
	Token string
	HTTP  *http.Client
	// UpdateState narrows ListUpdates to updates in that state.
	UpdateState fleet.UpdateState
}

// NewClient returns a client of the API at baseURL. A baseURL without a
// scheme (127.0.0.1:8080) is taken as http://.
func NewClient(baseURL string) *Client {
	if !strings.Contains(baseURL, "://") {
		baseURL = "http://" + baseURL
	}
	return &Client{
		BaseURL: strings.TrimRight(baseURL, "/"),
		HTTP:    &http.Client{Timeout: 5 * time.Minute}, // uploads of large images
	}
}

// Health returns the server's health and version.
func (c *Client) Health(ctx context.Context) (httpapi.Health, error) {
	var out httpapi.Health
	return out, c.do(ctx, http.MethodGet, "/api/v1/health", nil, nil, &out)
}

// AddFirmware uploads an image of size bytes read from r.
func (c *Client) AddFirmware(ctx context.Context, meta fleet.Firmware, r io.Reader, size int64) (fleet.Firmware, error) {
	q := url.Values{}
	q.Set("version", meta.Version)
	if meta.Name != "" {
		q.Set("name", meta.Name)
	}
	if meta.Model != "" {
		q.Set("model", meta.Model)
	}
	if meta.Signature != "" {
		q.Set("signature", meta.Signature)
	}
	if meta.AllowDowngrade {
		q.Set("allow_downgrade", "true")
	}
	req, err := c.newRequest(ctx, http.MethodPost, "/api/v1/firmware?"+q.Encode(), r)
	if err != nil {
		return fleet.Firmware{}, err
	}
	req.ContentLength = size
	req.Header.Set("Content-Type", "application/octet-stream")
	var out fleet.Firmware
	return out, c.send(req, &out)
}

// ListFirmware returns every stored firmware.
func (c *Client) ListFirmware(ctx context.Context) ([]fleet.Firmware, error) {
	var out httpapi.FirmwareList
	return out.Firmware, c.do(ctx, http.MethodGet, "/api/v1/firmware", nil, nil, &out)
}

// Firmware returns one firmware.
func (c *Client) Firmware(ctx context.Context, id string) (fleet.Firmware, error) {
	var out fleet.Firmware
	return out, c.do(ctx, http.MethodGet, "/api/v1/firmware/"+url.PathEscape(id), nil, nil, &out)
}

// DeviceQuery filters ListDevices.
type DeviceQuery struct {
	Model, Version string
	Online         *bool
	Tags           map[string]string // every one, with its value
	Limit, Offset  int
}

// ListDevices returns one page of devices and the number that match.
func (c *Client) ListDevices(ctx context.Context, f DeviceQuery) (httpapi.DeviceList, error) {
	q := url.Values{}
	setNonEmpty(q, "model", f.Model)
	setNonEmpty(q, "version", f.Version)
	for k, v := range f.Tags {
		q.Add("tag", k+"="+v)
	}
	if f.Online != nil {
		q.Set("online", strconv.FormatBool(*f.Online))
	}
	setPage(q, f.Limit, f.Offset)
	var out httpapi.DeviceList
	return out, c.do(ctx, http.MethodGet, "/api/v1/devices", q, nil, &out)
}

// AllDevices pages through every device that matches f.
func (c *Client) AllDevices(ctx context.Context, f DeviceQuery) ([]fleet.Device, error) {
	f.Limit, f.Offset = httpapi.MaxPageSize, 0
	var all []fleet.Device
	for {
		page, err := c.ListDevices(ctx, f)
		if err != nil {
			return nil, err
		}
		all = append(all, page.Devices...)
		f.Offset += len(page.Devices)
		if len(page.Devices) == 0 || f.Offset >= page.Total {
			return all, nil
		}
	}
}

// Device returns one device.
func (c *Client) Device(ctx context.Context, id string) (fleet.Device, error) {
	var out fleet.Device
	return out, c.do(ctx, http.MethodGet, "/api/v1/devices/"+url.PathEscape(id), nil, nil, &out)
}

// CreateUpdate starts an update and returns its summary.
func (c *Client) CreateUpdate(ctx context.Context, req rollout.CreateRequest) (fleet.UpdateSummary, error) {
	var out fleet.UpdateSummary
	return out, c.do(ctx, http.MethodPost, "/api/v1/updates", nil, req, &out)
}

// ListUpdates returns the summary of every update, newest first, paging
// through the list.
func (c *Client) ListUpdates(ctx context.Context) ([]fleet.UpdateSummary, error) {
	var all []fleet.UpdateSummary
	for {
		q := url.Values{}
		setPage(q, httpapi.MaxPageSize, len(all))
		setNonEmpty(q, "state", string(c.UpdateState))
		var page httpapi.UpdateList
		if err := c.do(ctx, http.MethodGet, "/api/v1/updates", q, nil, &page); err != nil {
			return nil, err
		}
		all = append(all, page.Updates...)
		if len(page.Updates) == 0 || len(all) >= page.Total {
			return all, nil
		}
	}
}

// DeviceHistory returns a device with the updates it was in and its last
// events.
func (c *Client) DeviceHistory(ctx context.Context, id string, limit int) (httpapi.DeviceHistory, error) {
	q := url.Values{}
	setPage(q, limit, 0)
	var out httpapi.DeviceHistory
	return out, c.do(ctx, http.MethodGet, "/api/v1/devices/"+url.PathEscape(id)+"/history", q, nil, &out)
}

// Update returns an update's live summary.
func (c *Client) Update(ctx context.Context, id string) (fleet.UpdateSummary, error) {
	var out fleet.UpdateSummary
	return out, c.do(ctx, http.MethodGet, updatePath(id, ""), nil, nil, &out)
}

// UpdateDevices returns one page of an update's per-device progress; state
// "" means every state.
func (c *Client) UpdateDevices(ctx context.Context, id string, state fleet.DeviceState, limit, offset int) (httpapi.ProgressList, error) {
	q := url.Values{}
	setNonEmpty(q, "state", string(state))
	setPage(q, limit, offset)
	var out httpapi.ProgressList
	return out, c.do(ctx, http.MethodGet, updatePath(id, "/devices"), q, nil, &out)
}

// AllUpdateDevices pages through an update's per-device progress.
func (c *Client) AllUpdateDevices(ctx context.Context, id string, state fleet.DeviceState) ([]fleet.Progress, error) {
	var all []fleet.Progress
	for {
		page, err := c.UpdateDevices(ctx, id, state, httpapi.MaxPageSize, len(all))
		if err != nil {
			return nil, err
		}
		all = append(all, page.Devices...)
		if len(page.Devices) == 0 || len(all) >= page.Total {
			return all, nil
		}
	}
}

// Events returns up to limit events of an update after sequence after.
func (c *Client) Events(ctx context.Context, id string, after int64, limit int) (httpapi.EventList, error) {
	q := url.Values{}
	q.Set("after", strconv.FormatInt(after, 10))
	setPage(q, limit, 0)
	var out httpapi.EventList
	return out, c.do(ctx, http.MethodGet, updatePath(id, "/events"), q, nil, &out)
}

// Pause stops admitting devices to an update.
func (c *Client) Pause(ctx context.Context, id string) (fleet.UpdateSummary, error) {
	return c.control(ctx, id, "pause")
}

// Resume admits devices to a paused update again.
func (c *Client) Resume(ctx context.Context, id string) (fleet.UpdateSummary, error) {
	return c.control(ctx, id, "resume")
}

// Cancel stops an update.
func (c *Client) Cancel(ctx context.Context, id string) (fleet.UpdateSummary, error) {
	return c.control(ctx, id, "cancel")
}

// RetryFailed queues the failed devices of update id again.
func (c *Client) RetryFailed(ctx context.Context, id string) (httpapi.RetryResult, error) {
	var out httpapi.RetryResult
	return out, c.do(ctx, http.MethodPost, updatePath(id, "/retry-failed"), nil, nil, &out)
}

// FleetSummary counts the devices online and offline, per model and version.
func (c *Client) FleetSummary(ctx context.Context) (sqlite.FleetSummary, error) {
	var out sqlite.FleetSummary
	return out, c.do(ctx, http.MethodGet, "/api/v1/fleet/summary", nil, nil, &out)
}

// Stats returns the server's counters, decoded loosely.
func (c *Client) Stats(ctx context.Context) (map[string]any, error) {
	var out map[string]any
	return out, c.do(ctx, http.MethodGet, "/api/v1/stats", nil, nil, &out)
}

func (c *Client) control(ctx context.Context, id, op string) (fleet.UpdateSummary, error) {
	var out fleet.UpdateSummary
	return out, c.do(ctx, http.MethodPost, updatePath(id, "/"+op), nil, nil, &out)
}

func updatePath(id, suffix string) string {
	return "/api/v1/updates/" + url.PathEscape(id) + suffix
}

func setNonEmpty(q url.Values, k, v string) {
	if v != "" {
		q.Set(k, v)
	}
}

func setPage(q url.Values, limit, offset int) {
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	if offset > 0 {
		q.Set("offset", strconv.Itoa(offset))
	}
}

// do sends a request with in, if not nil, as a JSON body and decodes the
// answer into out.
func (c *Client) do(ctx context.Context, method, path string, q url.Values, in, out any) error {
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	req, err := c.newRequest(ctx, method, path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return c.send(req, out)
}

func (c *Client) newRequest(ctx context.Context, method, path string, body io.Reader) (*http.Request, error) {
	if u, err := url.Parse(c.BaseURL); err != nil || u.Host == "" || u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("server %q is not an orchestrator URL such as http://127.0.0.1:8080 or https://flota.example.com (see --server or FLOTA_SERVER)", c.BaseURL)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.BaseURL+path, body)
	if err != nil {
		return nil, fmt.Errorf("request %s %s: %w", method, path, err)
	}
	req.Header.Set("Accept", "application/json")
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	return req, nil
}

// stream sends req and hands a 2xx answer's body to read; any other
// answer becomes an *APIError, as with send.
func (c *Client) stream(req *http.Request, read func(io.Reader) error) error {
	hc := *c.HTTP
	hc.Timeout = 0 // a backup takes as long as it takes; ctx bounds it
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20)) // an error body; what was read decides
		return answerError(resp.StatusCode, data)
	}
	return read(resp.Body)
}

// send sends req; a 2xx answer is decoded into out, any other becomes an
// *APIError.
func (c *Client) send(req *http.Request, out any) error {
	resp, err := c.HTTP.Do(req)
	if err != nil {
		var uerr *url.Error
		if errors.As(err, &uerr) && req.Context().Err() == nil {
			return fmt.Errorf("cannot reach the orchestrator at %s (see --server or FLOTA_SERVER): %w", c.BaseURL, uerr.Err)
		}
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("%s %s: read answer: %w", req.Method, req.URL.Path, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return answerError(resp.StatusCode, data)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("%s %s: decode answer: %w", req.Method, req.URL.Path, err)
	}
	return nil
}

// answerError is the *APIError of an answer with status and body data.
func answerError(status int, data []byte) error {
	apiErr := &APIError{Status: status}
	var body httpapi.Error
	if json.Unmarshal(data, &body) == nil && body.Code != "" {
		apiErr.Code, apiErr.Message = body.Code, body.Message
		if body.Code == httpapi.CodeUnauthorized {
			apiErr.Message += " (see --token or FLOTA_TOKEN)"
		}
	} else {
		apiErr.Code = "http_" + strconv.Itoa(status)
		apiErr.Message = strings.TrimSpace(string(data))
		if apiErr.Message == "" {
			apiErr.Message = http.StatusText(status)
		}
	}
	return apiErr
}
