// Package logsafe keeps what clients send from flooding or forging the logs.
// Clean bounds and escapes a client-supplied string before it is logged, and
// Limiter is a slog.Handler wrapper that passes a bounded number of lines per
// client and summarises the rest. The broker and the engine both log lines
// caused by device input, so both use it; it depends on nothing of flota's.
package logsafe

import (
	"strconv"
	"unicode/utf8"
)

// Clean returns s with control characters, quotes, backslashes and
// invalid UTF-8 escaped as in a Go string literal (so a line cannot be
// forged or a terminal controlled, whatever the log handler), and cut to at
// most max bytes of s, followed by "+NB" for the N bytes cut. Use it for any
// client-supplied string that is not validated where it enters (a topic, a
// reason, a version, an error naming one). slog's handlers add the quotes.
func Clean(s string, max int) string {
	if max < 0 {
		max = 0
	}
	cut := len(s)
	if cut > max {
		cut = max
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
	}
	q := strconv.Quote(s[:cut])
	q = q[1 : len(q)-1]
	if cut < len(s) {
		q += "+" + strconv.Itoa(len(s)-cut) + "B"
	}
	return q
}
