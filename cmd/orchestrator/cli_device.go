package main

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/httpapi"
)

// deviceShowSpec is `device show`: one device, the updates it was in and
// its last events.
var deviceShowSpec = &spec{name: "device show", args: "ID [--limit N] [--json]",
	summary: "show a device: online, last seen, version, and every update it was in with its last events",
	example: "orchestrator device show sensor-0042"}

func (c *cli) deviceShow(ctx context.Context, args []string) error {
	fs, sp := c.newFlags("device show")
	server := c.serverFlag(fs)
	limit := fs.Int("limit", httpapi.DefaultHistoryEvents, "most updates and events to show")
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := c.parse(fs, sp, args, "ID")
	if err != nil {
		return err
	}
	if *limit < 1 || *limit > httpapi.MaxPageSize {
		return &usageError{msg: fmt.Sprintf("--limit %d: want 1 to %d", *limit, httpapi.MaxPageSize), spec: sp}
	}
	h, err := c.client(*server).DeviceHistory(ctx, pos[0], *limit)
	if err != nil {
		return err
	}
	if *asJSON {
		return c.printJSON(h)
	}
	d := h.Device
	t := newTable(c.stdout)
	t.row("device", d.ID)
	t.row("model", orDash(termSafe(d.Model)))
	t.row("version", orDash(termSafe(d.Version)))
	t.row("online", d.Online)
	t.row("last seen", tableTime(d.LastSeen))
	t.row("first seen", tableTime(d.FirstSeen))
	t.row("tags", orDash(termSafe(formatTags(d.Tags))))
	last := "-"
	if h.LastUpdate != "" {
		last = fmt.Sprintf("%s in %s", h.LastState, h.LastUpdate)
	}
	t.row("last status", last)
	if err := t.flush(); err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "\nupdates (%d of %d, newest first):\n", len(h.Updates), h.UpdatesTotal)
	t = newTable(c.stdout, "UPDATE", "UPDATE STATE", "FIRMWARE", "STATE", "ATTEMPTS", "REASON", "UPDATED")
	for _, u := range h.Updates {
		t.row(u.UpdateID, u.UpdateState, u.FirmwareID, u.State, u.Attempts, orDash(string(u.Reason)), tableTime(u.UpdatedAt))
	}
	if err := t.flush(); err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "\nevents (last %d, newest first):\n", len(h.Events))
	t = newTable(c.stdout, "SEQ", "TIME", "UPDATE", "FROM", "STATE", "REASON", "ATTEMPT")
	for _, e := range h.Events {
		t.row(e.Seq, tableTime(e.Time), orDash(e.UpdateID), orDash(e.From), e.State, orDash(string(e.Reason)), e.Attempt)
	}
	return t.flush()
}

// formatSelector prints a selector as its JSON, which names every field.
func formatSelector(sel fleet.Selector) string {
	b, err := json.Marshal(sel)
	if err != nil {
		return "?"
	}
	return termSafe(string(b))
}
