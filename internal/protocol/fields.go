package protocol

import "github.com/flotaio/flota/internal/fleet"

// Rules for the strings a device sends (docs/PROTOCOL.md, "JSON rules").
// They are stored, shown by the CLI and the dashboard, and compared with
// selectors: a device must not be able to put a terminal escape, a line
// break or an unbounded label into any of them.
const (
	// MaxTags bounds the tags of a hello.
	MaxTags = 32
	// MaxReasonLen bounds a reason code.
	MaxReasonLen = 64
)

// ValidIdent reports whether s may be a model, a version, an update ID, a
// tag key or a tag value sent by a device: at most MaxIdentLen bytes of
// printable ASCII (space to '~'), so no control character, no escape
// sequence and no byte that is not ASCII.
func ValidIdent(s string) bool {
	if len(s) > MaxIdentLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

// ValidReason reports whether r may be a reason code a device sends: 1 to
// MaxReasonLen bytes of [a-z0-9_]. Unknown codes in this form are kept as
// sent (docs/PROTOCOL.md, "Reason codes").
func ValidReason(r fleet.Reason) bool {
	if len(r) == 0 || len(r) > MaxReasonLen {
		return false
	}
	for i := 0; i < len(r); i++ {
		c := r[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '_' {
			return false
		}
	}
	return true
}

// checkHelloFields returns which string field of h breaks the rules, or "".
func checkHelloFields(h *Hello) string {
	switch {
	case !ValidIdent(h.Model):
		return "model"
	case !ValidIdent(h.Version):
		return "version"
	case len(h.Tags) > MaxTags:
		return "tags"
	}
	for k, v := range h.Tags {
		if k == "" || !ValidIdent(k) || !ValidIdent(v) {
			return "tags"
		}
	}
	if h.Image != "" && !ValidSHA256(h.Image) {
		return "image"
	}
	if t := h.Transfer; t != nil {
		if !ValidIdent(t.Update) {
			return "transfer.update"
		}
		if t.Encoding != "" && t.Encoding != EncodingDeflate && t.Encoding != EncodingBSDiff {
			return "transfer.encoding"
		}
	}
	return ""
}

// ValidSHA256 reports whether s is a SHA-256 digest in lower-case hex.
func ValidSHA256(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// checkReportFields returns which string field of r breaks the rules, or "".
func checkReportFields(r *Report) string {
	switch {
	case !ValidIdent(r.Update):
		return "update"
	case r.Reason != "" && !ValidReason(r.Reason):
		return "reason"
	case !ValidIdent(r.Version):
		return "version"
	}
	return ""
}
