package httpapi

import (
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/sqlite"
)

// deleteFirmware removes a firmware no update refers to (409
// firmware_in_use otherwise) and answers 204.
func (s *Server) deleteFirmware(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := s.Store.DeleteFirmware(r.Context(), id); err != nil {
		s.writeError(w, r, fmt.Errorf("delete firmware: %w", err))
		return
	}
	s.logger().Info("firmware deleted", "firmware", id, "by", requester(r))
	w.WriteHeader(http.StatusNoContent)
}

// deleteDevice removes a device and its MQTT account, ending its
// connection (409 device_busy while an active update may still change it)
// and answers 204. Its progress rows and events stay in the updates'
// history.
func (s *Server) deleteDevice(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := s.Store.DeleteDevice(r.Context(), id); err != nil {
		s.writeError(w, r, fmt.Errorf("delete device: %w", err))
		return
	}
	if s.Accounts != nil {
		s.Accounts.Forget(id) // after the store: a login in flight cannot re-cache it
	}
	s.logger().Warn("device deleted", "device", id, "by", requester(r))
	w.WriteHeader(http.StatusNoContent)
}

// checkQuery refuses a query parameter the route does not take, naming the
// ones it does: a misspelt filter (?devce=) would otherwise return
// everything as if it had matched.
func checkQuery(q url.Values, known ...string) error {
	var unknown []string
	for k := range q {
		if !slices.Contains(known, k) {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) == 0 {
		return nil
	}
	slices.Sort(unknown)
	if len(unknown) > maxUnknownFields {
		unknown = unknown[:maxUnknownFields]
	}
	return fleet.Errorf(fleet.ErrInvalidInput, "unknown query parameter%s %s; this route takes %s",
		plural(len(unknown)), strings.Join(unknown, ", "), strings.Join(known, ", "))
}

// eventFilter reads ?device= and ?type= of the events route.
func eventFilter(q url.Values) (sqlite.EventFilter, error) {
	f := sqlite.EventFilter{Device: q.Get("device"), Type: q.Get("type")}
	if f.Type != "" && !slices.Contains(fleet.EventTypes, f.Type) {
		return f, fleet.Errorf(fleet.ErrInvalidInput, "type=%q: the event types are %s", f.Type, strings.Join(fleet.EventTypes, ", "))
	}
	if f.Device != "" {
		if err := fleet.CheckDeviceID(f.Device); err != nil {
			return f, fmt.Errorf("device=: %w", err)
		}
	}
	return f, nil
}

// updateStates is every update state, for messages.
var updateStates = fleet.UpdateStates

// updateStateParam reads ?state= of the update list: "" for every state.
func updateStateParam(v string) (fleet.UpdateState, error) {
	st := fleet.UpdateState(v)
	if v == "" || slices.Contains(updateStates, st) {
		return st, nil
	}
	names := make([]string, len(updateStates))
	for i, s := range updateStates {
		names[i] = string(s)
	}
	return "", fleet.Errorf(fleet.ErrInvalidInput, "state=%q: the update states are %s", v, strings.Join(names, ", "))
}

// tagParams reads the repeatable ?tag=KEY=VALUE of the device list.
func tagParams(vals []string) (map[string]string, error) {
	if len(vals) == 0 {
		return nil, nil
	}
	if len(vals) > fleet.MaxSelectorTags {
		return nil, fleet.Errorf(fleet.ErrInvalidInput, "%d tag= parameters: at most %d", len(vals), fleet.MaxSelectorTags)
	}
	tags := map[string]string{}
	for _, kv := range vals {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fleet.Errorf(fleet.ErrInvalidInput, "tag=%q: want KEY=VALUE", kv)
		}
		if old, dup := tags[k]; dup && old != v {
			return nil, fleet.Errorf(fleet.ErrInvalidInput, "tag=%q: tag %q already wanted as %q", kv, k, old)
		}
		tags[k] = v
	}
	return tags, nil
}
