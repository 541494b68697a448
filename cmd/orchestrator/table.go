package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/flotaio/flota/internal/fleet"
)

// table writes aligned columns for people. Every cell goes through
// termSafe: models, versions, tags and reasons come from devices or from
// requests, and none of them may move the cursor, recolour, retitle or
// clear an operator's terminal, or add a column or a row to the table.
type table struct{ tw *tabwriter.Writer }

// newTable starts a table on w with a header row (written as it is).
func newTable(w io.Writer, header ...string) *table {
	t := &table{tw: tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)}
	if len(header) > 0 {
		fmt.Fprintln(t.tw, strings.Join(header, "\t"))
	}
	return t
}

// row writes one row: each cell as fmt.Sprint prints it, escaped.
func (t *table) row(cells ...any) { fmt.Fprintln(t.tw, cellsLine(cells, "\t")) }

// flush aligns and writes the rows.
func (t *table) flush() error { return t.tw.Flush() }

// cellsLine returns the cells, printed and escaped, joined by sep.
func cellsLine(cells []any, sep string) string {
	var b strings.Builder
	for i, c := range cells {
		if i > 0 {
			b.WriteString(sep)
		}
		s, ok := c.(string)
		if !ok {
			s = fmt.Sprint(c)
		}
		b.WriteString(termSafe(s))
	}
	return b.String()
}

// termSafe returns s unchanged when it is valid UTF-8 of printable
// characters only (unicode.IsPrint: letters, marks, numbers, punctuation,
// symbols and the ASCII space), and else s quoted as strconv.Quote does:
// in double quotes, with control characters (C0, DEL, C1: ESC, CSI...),
// other invisible or bidirectional-formatting characters and invalid
// UTF-8 bytes written as escapes (\x1b, \u009b, \u202e, \xff). The quotes
// tell a reader that the value held something the terminal did not show.
func termSafe(s string) string {
	for _, r := range s {
		if r == utf8.RuneError || !unicode.IsPrint(r) {
			return strconv.Quote(s)
		}
	}
	return s
}

// writeJSON writes v as JSON, indented by indent (none: one line), with
// jsonTermSafe's escapes.
func writeJSON(w io.Writer, v any, indent string) error {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetIndent("", indent)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return err
	}
	_, err := w.Write(jsonTermSafe(b.Bytes()))
	return err
}

// jsonTermSafe returns the JSON text b with the characters a terminal acts
// on that encoding/json leaves raw — DEL, the C1 controls and the
// bidirectional overrides — written as \u escapes. They can only be inside
// strings, so the JSON decodes to the same values.
func jsonTermSafe(b []byte) []byte {
	unsafe := func(r rune) bool {
		return r >= 0x7f && r <= 0x9f || r >= 0x202a && r <= 0x202e || r >= 0x2066 && r <= 0x2069
	}
	if !bytes.ContainsFunc(b, unsafe) {
		return b
	}
	out := make([]byte, 0, len(b)+32)
	for len(b) > 0 {
		r, n := utf8.DecodeRune(b)
		if unsafe(r) {
			out = fmt.Appendf(out, `\u%04x`, r)
		} else {
			out = append(out, b[:n]...)
		}
		b = b[n:]
	}
	return out
}

// tableTime formats t for a table: fleet.TextTimeLayout in local time
// (with its offset), "never" for the zero time. Every time a table shows
// goes through it; --json output keeps RFC 3339 in UTC.
func tableTime(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return t.Local().Format(fleet.TextTimeLayout)
}
