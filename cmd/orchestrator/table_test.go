package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
)

// assertTerminalSafe fails if out holds a byte or character a terminal
// acts on: C0 controls other than the line feed, DEL, C1 controls, or
// invalid UTF-8.
func assertTerminalSafe(t *testing.T, out string) {
	t.Helper()
	require.True(t, utf8.ValidString(out), "invalid UTF-8 in %q", out)
	for _, r := range out {
		if r == '\n' {
			continue
		}
		assert.False(t, r < 0x20 || (r >= 0x7f && r <= 0x9f) || r == 0x202e, "control character %U in %q", r, out)
	}
}

func TestTermSafe_EscapesWhatCanControlATerminal(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"esp32-c3", "esp32-c3"},
		{"1.4.2 (rc 1)", "1.4.2 (rc 1)"},
		{`a "quoted" \ path`, `a "quoted" \ path`},
		{"Zürich", "Zürich"},
		{"東京", "東京"},
		{"", ""},
		{"lyon\x1b[2J\x1b[H", `"lyon\x1b[2J\x1b[H"`},     // ESC: clear the screen
		{"x\x1b]0;owned\x07", `"x\x1b]0;owned\a"`},       // OSC: retitle the window
		{"a\u009b31mb", `"a\u009b31mb"`},                 // C1 CSI
		{"row\nd9  m1  forged", `"row\nd9  m1  forged"`}, // a forged row
		{"col\tforged", `"col\tforged"`},                 // a forged column
		{"back\rover", `"back\rover"`},                   // carriage return
		{"del\x7f", `"del\x7f"`},                         // DEL
		{"bad\xffutf8", `"bad\xffutf8"`},                 // invalid UTF-8
		{"txt.exe\u202egnp", `"txt.exe\u202egnp"`},       // bidi override
	} {
		got := termSafe(tc.in)
		assert.Equal(t, tc.want, got, "%q", tc.in)
		assertTerminalSafe(t, got)
	}
}

func TestCLI_TablesEscapeStringsThatReachTheStore(t *testing.T) {
	st, server := newAPI(t)
	ctx := context.Background()
	evil := "lyon\x1b[2J\x1b]0;owned\x07\nd9\tm1"
	// Devices refuse such strings at the protocol's door; the store may
	// still hold them from operators (registration, firmware metadata) or
	// from before the protocol checked them.
	require.NoError(t, st.SaveDevice(fleet.Device{ID: "d1", Model: "m1\x1b[31m", Version: "1.0\u009b2J", Online: true,
		Tags: map[string]string{"site": evil}}))
	require.NoError(t, st.Flush(ctx))
	fw, err := st.AddFirmware(ctx, fleet.Firmware{Version: "2.0"}, strings.NewReader("image"))
	require.NoError(t, err)
	u := fleet.Update{ID: "upd-1", FirmwareID: fw.ID, Policy: fleet.Policy{}.WithDefaults(), State: fleet.UpdateRunning}
	require.NoError(t, st.CreateUpdate(ctx, u, []fleet.Progress{{UpdateID: u.ID, DeviceID: "d1", State: fleet.StateQueued}}))
	require.NoError(t, st.SaveProgress(fleet.Progress{UpdateID: u.ID, DeviceID: "d1", State: fleet.StateFailed,
		Reason: fleet.Reason("bad\x1b[1A\rsucceeded"), Attempts: 1}, 1))
	require.NoError(t, st.AppendEvent(fleet.Event{Seq: 1, Time: time.Now(), Type: fleet.EventDevice,
		UpdateID: u.ID, DeviceID: "d1", From: "offered", State: "failed", Reason: fleet.Reason("x\x1b[2K")}))
	require.NoError(t, st.Flush(ctx))

	for _, tc := range []struct {
		args  []string
		lines int // a header and one row, whatever the strings hold
	}{
		{[]string{"device", "list"}, 2},
		{[]string{"device", "summary"}, 4}, // a total and a blank line first
		{[]string{"update", "devices", "upd-1"}, 2},
		{[]string{"update", "events", "upd-1"}, 2},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			r := runCLI(t, server, tc.args...)
			require.Equal(t, exitOK, r.code, r.stderr)
			assertTerminalSafe(t, r.stdout)
			assert.Equal(t, tc.lines, strings.Count(r.stdout, "\n"), "%s", r.stdout)
		})
	}
	r := runCLI(t, server, "device", "list")
	assert.Contains(t, r.stdout, `"m1\x1b[31m"`)
	assert.Contains(t, r.stdout, `"1.0\u009b2J"`)
	assert.Contains(t, r.stdout, `"site=lyon\x1b[2J\x1b]0;owned\a\nd9\tm1"`)

	// JSON stays raw JSON: the escapes are JSON's, and the value decodes
	// back to what is stored.
	r = runCLI(t, server, "device", "list", "--json")
	require.Equal(t, exitOK, r.code, r.stderr)
	assertTerminalSafe(t, r.stdout)
	var devs []fleet.Device
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &devs))
	require.Len(t, devs, 1)
	assert.Equal(t, evil, devs[0].Tags["site"])
	assert.Equal(t, "1.0\u009b2J", devs[0].Version)
}

func TestCLI_FirmwareListEscapesAnOperatorSetName(t *testing.T) {
	_, server := newAPI(t)
	file := filepath.Join(t.TempDir(), "app.bin")
	require.NoError(t, os.WriteFile(file, []byte("image"), 0o644))
	// Through the CLI, the API and the store: the name is valid UTF-8 and
	// short, so the API takes it.
	r := runCLI(t, server, "firmware", "add", file, "--version", "2.0", "--name", "app\x1b[2J\x1b[Hforged")
	require.Equal(t, exitOK, r.code, r.stderr)
	r = runCLI(t, server, "firmware", "list")
	require.Equal(t, exitOK, r.code, r.stderr)
	assertTerminalSafe(t, r.stdout)
	assert.Contains(t, r.stdout, `"app\x1b[2J\x1b[Hforged"`)
}
