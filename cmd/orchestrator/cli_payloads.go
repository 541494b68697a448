package main

import (
	"fmt"
	"strings"

	"github.com/flotaio/flota/internal/fleet"
)

// formatPayloads says a firmware's payloads in one cell: "deflate 1.2 MiB,
// delta from 1.0.0 80 KiB, delta from 0.9.0 pending".
func formatPayloads(ps []fleet.Payload) string {
	if len(ps) == 0 {
		return "-"
	}
	parts := make([]string, 0, len(ps))
	for _, p := range ps {
		s := p.Encoding
		if p.Encoding == fleet.EncodingDelta {
			s += " from " + termSafe(p.BaseVersion)
		}
		if p.State == fleet.PayloadReady {
			s += " " + humanBytes(p.Size)
		} else {
			s += " " + p.State
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, ", ")
}

// formatEncodings says how many devices got each payload: "delta 480,
// deflate 12, full 8".
func formatEncodings(counts map[string]int) string {
	var parts []string
	for _, enc := range []string{fleet.EncodingDelta, fleet.EncodingDeflate, fleet.EncodingFull} {
		if n := counts[enc]; n > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", enc, n))
		}
	}
	return strings.Join(parts, ", ")
}
