package protocol

import (
	"math"

	"github.com/flotaio/flota/internal/fleet"
)

// The orchestrator decodes an ack or a report per few chunks a device
// receives. Devices that encode them as AppendJSON does (the Go agent)
// write one canonical form, which scanAck and scanReport read without
// reflection; anything else goes to encoding/json. What they accept,
// encoding/json reads into the same message (FuzzCanonical_SameAsEncodingJSON).

// canonical reads AppendJSON's form: keys in order, no whitespace, strings
// of printable ASCII without `"` or `\` (which encoding/json takes as they
// are), integers without sign, leading zero, fraction or exponent. Each key
// is its field's exact name and comes once, so encoding/json's matching of
// keys regardless of case makes no difference.
type canonical struct {
	b  []byte // what is left to read
	ok bool   // false once the input left the form
}

// newCanonical starts reading b, a message of at most MaxControlSize bytes
// that opens with the v field of the protocol Version.
func newCanonical(b []byte) canonical {
	c := canonical{b: b, ok: len(b) <= MaxControlSize}
	c.lit(`{"v":`)
	if c.num(Version) != Version {
		c.ok = false
	}
	return c
}

// has reads s if the input continues with it.
func (c *canonical) has(s string) bool {
	if c.ok && len(c.b) >= len(s) && string(c.b[:len(s)]) == s {
		c.b = c.b[len(s):]
		return true
	}
	return false
}

// lit reads s, which must follow.
func (c *canonical) lit(s string) { c.ok = c.has(s) }

// num reads an integer of at most max.
func (c *canonical) num(max uint64) uint64 {
	n, v := 0, uint64(0)
	for n < len(c.b) && n < 20 && '0' <= c.b[n] && c.b[n] <= '9' {
		v = v*10 + uint64(c.b[n]-'0')
		n++
	}
	// Up to 19 digits, v has not wrapped around.
	if !c.ok || n == 0 || n > 19 || (n > 1 && c.b[0] == '0') || v > max {
		c.ok = false
		return 0
	}
	c.b = c.b[n:]
	return v
}

// str reads a string, which it returns without its quotes.
func (c *canonical) str() []byte {
	if !c.ok || len(c.b) == 0 || c.b[0] != '"' {
		c.ok = false
		return nil
	}
	for i := 1; i < len(c.b); i++ {
		switch ch := c.b[i]; {
		case ch == '"':
			s := c.b[1:i]
			c.b = c.b[i+1:]
			return s
		case ch < ' ' || ch > '~' || ch == '\\':
			c.ok = false
			return nil
		}
	}
	c.ok = false
	return nil
}

// end reads the closing brace, which must end the input.
func (c *canonical) end() bool {
	c.lit("}")
	return c.ok && len(c.b) == 0
}

// scanAck reads an ack in the canonical form of Ack.AppendJSON and protocol
// Version; false for any other input.
func scanAck(b []byte) (Ack, bool) {
	c := newCanonical(b)
	m := Ack{V: Version}
	c.lit(`,"handle":`)
	m.Handle = uint32(c.num(math.MaxUint32))
	c.lit(`,"offset":`)
	m.Offset = int64(c.num(math.MaxInt64))
	if !c.end() {
		return Ack{}, false
	}
	return m, true
}

// scanReport reads a report in the canonical form of Report.AppendJSON and
// protocol Version; false for any other input.
func scanReport(b []byte) (Report, bool) {
	c := newCanonical(b)
	m := Report{V: Version}
	c.lit(`,"update":`)
	m.Update = string(c.str())
	c.lit(`,"handle":`)
	m.Handle = uint32(c.num(math.MaxUint32))
	c.lit(`,"state":`)
	m.State = deviceState(c.str())
	c.lit(`,"offset":`)
	m.Offset = int64(c.num(math.MaxInt64))
	if c.has(`,"reason":`) {
		m.Reason = fleet.Reason(c.str())
	}
	if c.has(`,"version":`) {
		m.Version = string(c.str())
	}
	if !c.end() {
		return Report{}, false
	}
	return m, true
}

// deviceState returns the state s spells, without allocating for a known one.
func deviceState(s []byte) fleet.DeviceState {
	for _, st := range fleet.AllDeviceStates {
		if string(st) == string(s) {
			return st
		}
	}
	return fleet.DeviceState(s)
}
