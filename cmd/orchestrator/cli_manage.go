package main

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/flotaio/flota/internal/fleet"
)

// eventMatch is update events' --device and --type: the events printed.
// The CLI filters what it reads, rather than asking the API to, so that
// --follow still sees the update's own events and knows when it ended.
type eventMatch struct {
	device, typ string
}

func (m eventMatch) check() error {
	if m.typ != "" && !slices.Contains(fleet.EventTypes, m.typ) {
		return fmt.Errorf("--type %q: the event types are %s", m.typ, strings.Join(fleet.EventTypes, ", "))
	}
	if m.device != "" {
		if err := fleet.CheckDeviceID(m.device); err != nil {
			return fmt.Errorf("--device: %s", invalidInput(err))
		}
	}
	return nil
}

func (m eventMatch) match(e fleet.Event) bool {
	return (m.device == "" || e.DeviceID == m.device) && (m.typ == "" || e.Type == m.typ)
}

func (m eventMatch) filter(evs []fleet.Event) []fleet.Event {
	return slices.DeleteFunc(evs, func(e fleet.Event) bool { return !m.match(e) })
}

// deleteCommand runs firmware delete and device delete: DELETE prefix+ID.
func (c *cli) deleteCommand(ctx context.Context, name, prefix string, args []string) error {
	fs, sp := c.newFlags(name)
	server := c.serverFlag(fs)
	pos, err := c.parse(fs, sp, args, "ID")
	if err != nil {
		return err
	}
	if err := c.client(*server).do(ctx, http.MethodDelete, prefix+url.PathEscape(pos[0]), nil, nil, nil); err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "%s %s deleted\n", strings.Fields(name)[0], pos[0])
	return nil
}
