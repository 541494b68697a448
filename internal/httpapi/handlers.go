package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
	"github.com/flotaio/flota/internal/rollout"
	"github.com/flotaio/flota/internal/sqlite"
)

// Response bodies of the list routes.
type (
	// FirmwareList is the body of GET /api/v1/firmware.
	FirmwareList struct {
		Firmware []fleet.Firmware `json:"firmware"`
	}
	// DeviceList is the body of GET /api/v1/devices.
	DeviceList struct {
		Devices []fleet.Device `json:"devices"`
		Total   int            `json:"total"`
	}
	// UpdateList is the body of GET /api/v1/updates.
	UpdateList struct {
		Updates []fleet.UpdateSummary `json:"updates"`
		Total   int                   `json:"total"` // updates matching ?q=, on every page
	}
	// ProgressList is the body of GET /api/v1/updates/{id}/devices.
	ProgressList struct {
		Devices []fleet.Progress `json:"devices"`
		Total   int              `json:"total"`
	}
	// EventList is the body of GET /api/v1/updates/{id}/events. Next is the
	// value of ?after= that returns the following events. PrunedThrough is
	// the event log's retention watermark: events with seq <= it were
	// deleted, so a client whose ?after= is below it may have missed some
	// (the list holds what remains).
	EventList struct {
		Events        []fleet.Event `json:"events"`
		Next          int64         `json:"next"`
		PrunedThrough int64         `json:"pruned_through"`
	}
	// RetryResult is the body of POST /api/v1/updates/{id}/retry-failed.
	RetryResult struct {
		Retried int                 `json:"retried"` // failed devices queued again
		Update  fleet.UpdateSummary `json:"update"`
	}
	// Health is the body of GET /api/v1/health.
	Health struct {
		Status  string   `json:"status"` // "ok" or "degraded"
		Version string   `json:"version"`
		Reasons []string `json:"reasons,omitempty"` // why it is degraded
	}
)

// health answers 200 "ok", or 503 "degraded" with the reasons of every
// HealthChecks function that reported one.
func (s *Server) health(w http.ResponseWriter, r *http.Request) {
	h := Health{Status: "ok", Version: s.version()}
	for _, check := range s.HealthChecks {
		if reason := check(); reason != "" {
			h.Reasons = append(h.Reasons, reason)
		}
	}
	code := http.StatusOK
	if len(h.Reasons) > 0 {
		h.Status, code = "degraded", http.StatusServiceUnavailable
	}
	writeJSON(w, code, h)
}

func (s *Server) stats(w http.ResponseWriter, r *http.Request) {
	out := map[string]any{"store": s.Store.Stats()}
	if s.Engine != nil {
		out["engine"] = s.Engine.Stats()
	}
	if s.BrokerStats != nil {
		out["broker"] = s.BrokerStats()
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) addFirmware(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	meta := fleet.Firmware{Name: q.Get("name"), Version: q.Get("version"), Model: q.Get("model")}
	if err := checkFirmwareMeta(meta); err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := signatureParams(q, &meta); err != nil {
		s.writeError(w, r, err)
		return
	}
	limit := s.maxFirmwareSize()
	if r.ContentLength > limit {
		s.writeError(w, r, &http.MaxBytesError{Limit: limit})
		return
	}
	body := http.MaxBytesReader(w, r.Body, limit)
	fw, created, err := s.Store.AddFirmwareOnce(r.Context(), meta, body, s.verifyFirmware)
	if err != nil {
		s.writeError(w, r, fmt.Errorf("add firmware: %w", err))
		return
	}
	if !created {
		writeJSON(w, http.StatusOK, fw) // stored before: the same firmware
		return
	}
	writeJSON(w, http.StatusCreated, fw)
}

// checkFirmwareMeta checks the name, version and model of a new firmware,
// uploaded or fetched.
func checkFirmwareMeta(meta fleet.Firmware) error {
	if meta.Version == "" {
		return fleet.Errorf(fleet.ErrInvalidInput, "version is required")
	}
	if err := fleet.CheckVersion(meta.Version); err != nil {
		return err
	}
	for _, f := range []struct {
		name, value string
		max         int
	}{{"name", meta.Name, MaxFirmwareName}, {"version", meta.Version, protocol.MaxIdentLen}, {"model", meta.Model, protocol.MaxIdentLen}} {
		if len(f.value) > f.max || !utf8.ValidString(f.value) {
			return fleet.Errorf(fleet.ErrInvalidInput, "%s: want at most %d bytes of UTF-8", f.name, f.max)
		}
	}
	return nil
}

func (s *Server) listFirmware(w http.ResponseWriter, r *http.Request) {
	fws, err := s.Store.ListFirmware(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	payloads, err := s.Store.AllPayloads(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	for i := range fws {
		fws[i].Payloads = payloads[fws[i].ID]
	}
	writeJSON(w, http.StatusOK, FirmwareList{Firmware: nonNil(fws)})
}

func (s *Server) getFirmware(w http.ResponseWriter, r *http.Request) {
	fw, err := s.Store.Firmware(r.Context(), r.PathValue("id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if fw.Payloads, err = s.Store.Payloads(r.Context(), fw.ID); err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, fw)
}

func (s *Server) listDevices(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit, offset, err := pageParams(q.Get("limit"), q.Get("offset"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	tags, err := tagParams(q["tag"])
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	f := sqlite.DeviceFilter{Model: q.Get("model"), Version: q.Get("version"), After: q.Get("after"),
		Prefix: q.Get("prefix"), Tags: tags, Limit: limit, Offset: offset}
	if v := q.Get("online"); v != "" {
		online, err := strconv.ParseBool(v)
		if err != nil {
			s.writeError(w, r, fleet.Errorf(fleet.ErrInvalidInput, "online=%q: want true or false", v))
			return
		}
		f.Online = &online
	}
	devs, total, err := s.Store.ListDevices(r.Context(), f)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, DeviceList{Devices: nonNil(devs), Total: total})
}

func (s *Server) getDevice(w http.ResponseWriter, r *http.Request) {
	d, err := s.Store.Device(r.Context(), r.PathValue("id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, d)
}

func (s *Server) createUpdate(w http.ResponseWriter, r *http.Request) {
	var req rollout.CreateRequest
	if err := s.decodeStrict(w, r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	if !s.engineReady(w, r) {
		return
	}
	req.CreatedBy = requester(r)
	u, err := s.Engine.CreateUpdate(r.Context(), req)
	if err != nil {
		s.writeError(w, r, fmt.Errorf("create update: %w", err))
		return
	}
	// The summary, as every other update route answers, so that "firmware"
	// is always the firmware object.
	sum, err := s.Engine.Summary(r.Context(), u.ID)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, sum)
}

func (s *Server) listUpdates(w http.ResponseWriter, r *http.Request) {
	state, err := updateStateParam(r.URL.Query().Get("state"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if !s.engineReady(w, r) {
		return
	}
	q := r.URL.Query()
	limit, offset, err := pageParams(q.Get("limit"), q.Get("offset"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	ups, total, err := s.Store.ListUpdatesPage(r.Context(), sqlite.UpdateFilter{Query: q.Get("q"), Limit: limit, Offset: offset})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := UpdateList{Updates: make([]fleet.UpdateSummary, 0, len(ups)), Total: total}
	for _, u := range ups {
		sum, err := s.Engine.Summary(r.Context(), u.ID)
		if err != nil {
			s.writeError(w, r, fmt.Errorf("summary of %s: %w", u.ID, err))
			return
		}
		if state != "" && sum.State != state {
			continue
		}
		out.Updates = append(out.Updates, sum)
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) getUpdate(w http.ResponseWriter, r *http.Request) {
	if !s.engineReady(w, r) {
		return
	}
	sum, err := s.Engine.Summary(r.Context(), r.PathValue("id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, sum)
}

func (s *Server) updateDevices(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit, offset, err := pageParams(q.Get("limit"), q.Get("offset"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	f := sqlite.ProgressFilter{State: fleet.DeviceState(q.Get("state")), After: q.Get("after"), Limit: limit, Offset: offset}
	if f.State != "" && !f.State.Valid() {
		s.writeError(w, r, fleet.Errorf(fleet.ErrInvalidInput, "state=%q: unknown device state; the states are %s", f.State, fleet.StateNames()))
		return
	}
	id := r.PathValue("id")
	if _, err := s.Store.Update(r.Context(), id); err != nil {
		s.writeError(w, r, err)
		return
	}
	ps, total, err := s.Store.Progress(r.Context(), id, f)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, ProgressList{Devices: nonNil(ps), Total: total})
}

func (s *Server) updateEvents(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if err := checkQuery(q, "after", "limit", "device", "type"); err != nil {
		s.writeError(w, r, err)
		return
	}
	filter, err := eventFilter(q)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var after int64
	if v := q.Get("after"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			s.writeError(w, r, fleet.Errorf(fleet.ErrInvalidInput, "after=%q: want a sequence number >= 0", v))
			return
		}
		after = n
	}
	limit, _, err := pageParams(q.Get("limit"), "")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	id := r.PathValue("id")
	if _, err := s.Store.Update(r.Context(), id); err != nil {
		s.writeError(w, r, err)
		return
	}
	evs, err := s.Store.FilteredEvents(r.Context(), id, filter, after, limit)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	// The watermark is read after the events, so that it covers every
	// event pruned before they were read.
	pruned, err := s.Store.PrunedThrough(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := EventList{Events: nonNil(evs), Next: after, PrunedThrough: pruned}
	if len(evs) > 0 {
		out.Next = evs[len(evs)-1].Seq
	}
	writeJSON(w, http.StatusOK, out)
}

// control returns a handler that applies op to the update and answers with
// its summary.
func (s *Server) control(op func(*rollout.Engine, context.Context, string) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !s.engineReady(w, r) {
			return
		}
		id := r.PathValue("id")
		if err := op(s.Engine, r.Context(), id); err != nil {
			s.writeError(w, r, err)
			return
		}
		sum, err := s.Engine.Summary(r.Context(), id)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, sum)
	}
}

// engineReady answers 503 when the server runs without an engine.
func (s *Server) engineReady(w http.ResponseWriter, r *http.Request) bool {
	if s.Engine == nil {
		writeJSON(w, http.StatusServiceUnavailable, Error{Code: CodeUnavailable, Message: "engine not running"})
		return false
	}
	return true
}

// pageParams parses ?limit= and ?offset=. A missing limit is DefaultPageSize;
// a larger one than MaxPageSize is clamped.
func pageParams(limitStr, offsetStr string) (limit, offset int, err error) {
	limit = DefaultPageSize
	if limitStr != "" {
		limit, err = strconv.Atoi(limitStr)
		if err != nil || limit < 1 {
			return 0, 0, fleet.Errorf(fleet.ErrInvalidInput, "limit=%q: want a number >= 1", limitStr)
		}
		limit = min(limit, MaxPageSize)
	}
	if offsetStr != "" {
		offset, err = strconv.Atoi(offsetStr)
		if err != nil || offset < 0 {
			return 0, 0, fleet.Errorf(fleet.ErrInvalidInput, "offset=%q: want a number >= 0", offsetStr)
		}
	}
	return limit, offset, nil
}

// decodeStrict decodes one JSON object of at most MaxRequestBody bytes into
// v. A value of the wrong type, trailing data and unknown fields are refused
// with a message naming them: every unknown field at once, nested ones by
// their path (policy.windw), so that a misspelt policy field cannot pass
// unnoticed and one round trip shows every mistake.
func (s *Server) decodeStrict(w http.ResponseWriter, r *http.Request, v any) error {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxRequestBody))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return fmt.Errorf("request body over %d bytes: %w", MaxRequestBody, err)
		}
		return fleet.Errorf(fleet.ErrInvalidInput, "read request body: %v", err)
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return fleet.Errorf(fleet.ErrInvalidInput, "empty request body")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(v); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) {
			if typeErr.Field == "" {
				return fleet.Errorf(fleet.ErrInvalidInput, "request body: want a JSON object, got JSON %s", typeErr.Value)
			}
			return fleet.Errorf(fleet.ErrInvalidInput, "request body: field %q: want %s, got JSON %s", typeErr.Field, typeErr.Type, typeErr.Value)
		}
		return fleet.Errorf(fleet.ErrInvalidInput, "request body: %v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return fleet.Errorf(fleet.ErrInvalidInput, "request body: trailing data after the JSON object")
	}
	if unknown := unknownFields(body, reflect.TypeOf(v).Elem(), ""); len(unknown) > 0 {
		names := make([]string, len(unknown))
		for i, f := range unknown {
			names[i] = strconv.Quote(f)
		}
		return fleet.Errorf(fleet.ErrInvalidInput, "request body: unknown field%s %s", plural(len(unknown)), strings.Join(names, ", "))
	}
	return nil
}

// maxUnknownFields bounds how many unknown fields a refusal names.
const maxUnknownFields = 20

// unknownFields returns the paths of the fields of the JSON object data that
// the struct type t does not have, nested objects included, sorted, at most
// maxUnknownFields. data has decoded into t already.
func unknownFields(data []byte, t reflect.Type, prefix string) []string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct || reflect.PointerTo(t).Implements(reflect.TypeFor[json.Unmarshaler]()) {
		return nil
	}
	var obj map[string]json.RawMessage
	if json.Unmarshal(data, &obj) != nil {
		return nil
	}
	fields := jsonFields(t)
	var out []string
	for name, raw := range obj {
		f, ok := fields[name]
		if !ok {
			// encoding/json matches names case-insensitively.
			for k, ft := range fields {
				if strings.EqualFold(k, name) {
					f, ok = ft, true
					break
				}
			}
		}
		if !ok {
			out = append(out, prefix+name)
			continue
		}
		out = append(out, unknownFields(raw, f, prefix+name+".")...)
	}
	slices.Sort(out)
	if len(out) > maxUnknownFields {
		out = out[:maxUnknownFields]
	}
	return out
}

// jsonFields maps the JSON names of struct t's fields, embedded structs'
// included, to their types.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for _, f := range reflect.VisibleFields(t) {
		if !f.IsExported() || f.Anonymous && f.Type.Kind() == reflect.Struct {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = f.Name
		}
		out[name] = f.Type
	}
	return out
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// writeJSON writes v with status. Encoding errors are a bug in the types.
func writeJSON(w http.ResponseWriter, status int, v any) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		status = http.StatusInternalServerError
		buf.Reset()
		fmt.Fprintf(&buf, `{"code":%q,"message":"encode response"}`+"\n", CodeInternal)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(buf.Len()))
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes()) // the client went away; nothing to do
}

// nonNil turns a nil slice into an empty one so lists encode as [].
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// statusRecorder remembers the status a handler wrote.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(status int) {
	r.status = status
	r.ResponseWriter.WriteHeader(status)
}

func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// logRequests logs every request at debug level.
func (s *Server) logRequests(next http.Handler) http.Handler {
	log := s.logger()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(rec, r)
		log.Debug("http request", "method", r.Method, "path", r.URL.Path, "status", rec.status, "duration", time.Since(start))
	})
}

func (s *Server) fleetSummary(w http.ResponseWriter, r *http.Request) {
	sum, err := s.Store.FleetSummary(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, sum)
}

// retryFailed queues the update's failed devices again with fresh attempts
// (an update that ended with failures or was aborted runs again) and
// answers with how many and the update's summary.
func (s *Server) retryFailed(w http.ResponseWriter, r *http.Request) {
	if !s.engineReady(w, r) {
		return
	}
	id := r.PathValue("id")
	n, err := s.Engine.RetryFailed(r.Context(), id)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	sum, err := s.Engine.Summary(r.Context(), id)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, RetryResult{Retried: n, Update: sum})
}
