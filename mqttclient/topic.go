package mqttclient

import "strings"

// match reports whether an MQTT topic matches a subscription filter with the
// "+" and "#" wildcards of MQTT 3.1.1 (section 4.7). Topics starting with "$"
// match no filter that starts with a wildcard.
func match(filter, topic string) bool {
	if strings.HasPrefix(topic, "$") && (strings.HasPrefix(filter, "+") || strings.HasPrefix(filter, "#")) {
		return false
	}
	for {
		fl, frest, fmore := strings.Cut(filter, "/")
		if fl == "#" {
			return true
		}
		tl, trest, tmore := strings.Cut(topic, "/")
		if fl != "+" && fl != tl {
			return false
		}
		switch {
		case !fmore && !tmore:
			return true
		case !tmore:
			// "a/#" also matches "a".
			return frest == "#"
		case !fmore:
			return false
		}
		filter, topic = frest, trest
	}
}

// covers reports whether every topic that filter b matches is also matched by
// filter a, so that a broker subscription to a makes one to b redundant.
func covers(a, b string) bool {
	for {
		al, arest, amore := strings.Cut(a, "/")
		if al == "#" {
			return true
		}
		bl, brest, bmore := strings.Cut(b, "/")
		switch {
		case bl == "#":
			return false // b matches deeper topics than a's remaining levels
		case al == "+":
		case al != bl || bl == "+":
			return false
		}
		switch {
		case !amore && !bmore:
			return true
		case !bmore:
			return arest == "#"
		case !amore:
			return false
		}
		a, b = arest, brest
	}
}

// minimal returns the filters of fs that no other filter of fs covers, each
// once, in the order given: the broker subscriptions that deliver every
// message of fs exactly once.
func minimal(fs []string) []string {
	var out []string
	for i, f := range fs {
		redundant := false
		for j, g := range fs {
			if i == j {
				continue
			}
			// Of two equal filters keep the first.
			if covers(g, f) && (!covers(f, g) || j < i) {
				redundant = true
				break
			}
		}
		if !redundant {
			out = append(out, f)
		}
	}
	return out
}
