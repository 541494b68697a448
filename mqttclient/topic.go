package mqttclient

import "strings"

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
