package fleet

import (
	"strings"

	"github.com/Masterminds/semver/v3"
)

// Selector chooses the target devices of an update. Empty fields match all;
// set fields must all match.
type Selector struct {
	Model string `json:"model,omitempty"`
	// Version is the device's current version: an exact version ("1.0.0")
	// or a semver range ("<1.2.0", ">=1.0.0 <2.0.0", "~1.4", "1.x"). A
	// device whose version is not semver matches only an exact version.
	Version string            `json:"version,omitempty"`
	Tags    map[string]string `json:"tags,omitempty"`    // every tag must match
	Devices []string          `json:"devices,omitempty"` // explicit IDs
	// Online takes only the devices connected (said hello) when the update
	// is created; the others are not targets at all.
	Online bool `json:"online,omitempty"`
}

// ExactVersion returns the version when the selector names one version
// rather than a range, so that a store can filter on it directly.
func (s Selector) ExactVersion() (string, bool) {
	v := strings.TrimSpace(s.Version)
	if v == "" || strings.ContainsAny(v, "<>=!~^*xX|, ") {
		return "", false
	}
	return v, true
}

// Limits of a selector. Each is far above what an update needs, and the
// store evaluates a selector at all of them at once (one query, whatever
// the number of tags or IDs): a larger selector is refused with
// ErrSelectorTooLarge, never left to fail in the store.
const (
	// MaxSelectorTags bounds the tags of a selector (a device that
	// registers itself holds at most 32).
	MaxSelectorTags = 256
	// MaxSelectorDevices bounds the explicit device IDs of a selector.
	MaxSelectorDevices = 10_000
	// MaxSelectorString bounds the model, the version or range, and each
	// tag key and value of a selector, in bytes.
	MaxSelectorString = 256
)

// Validate reports a selector that cannot match anything sensibly (a
// malformed version range or device ID: ErrInvalidInput) or that is over
// a limit (ErrSelectorTooLarge).
func (s Selector) Validate() error {
	if err := s.checkSize(); err != nil {
		return err
	}
	if _, err := s.Compile(); err != nil {
		return err
	}
	for _, id := range s.Devices {
		if !ValidDeviceID(id) {
			return Errorf(ErrInvalidInput, "device ID %q", id)
		}
	}
	return nil
}

// checkSize returns ErrSelectorTooLarge naming the first limit s is over.
func (s Selector) checkSize() error {
	tooLarge := func(what string, n, limit int) error {
		return Errorf(ErrSelectorTooLarge, "%s: %d, at most %d", what, n, limit)
	}
	switch {
	case len(s.Tags) > MaxSelectorTags:
		return tooLarge("tags", len(s.Tags), MaxSelectorTags)
	case len(s.Devices) > MaxSelectorDevices:
		return tooLarge("device IDs", len(s.Devices), MaxSelectorDevices)
	case len(s.Model) > MaxSelectorString:
		return tooLarge("model bytes", len(s.Model), MaxSelectorString)
	case len(s.Version) > MaxSelectorString:
		return tooLarge("version bytes", len(s.Version), MaxSelectorString)
	}
	for k, v := range s.Tags {
		if n := max(len(k), len(v)); n > MaxSelectorString {
			return tooLarge("bytes of a tag key or value", n, MaxSelectorString)
		}
	}
	return nil
}

// Matcher is a compiled selector: match many devices without parsing the
// version range again.
type Matcher struct {
	sel   Selector
	exact string
	rng   *semver.Constraints
	ids   map[string]bool
}

// Compile parses the selector's version range.
func (s Selector) Compile() (*Matcher, error) {
	m := &Matcher{sel: s}
	if v, ok := s.ExactVersion(); ok {
		m.exact = v
	} else if s.Version != "" {
		c, err := semver.NewConstraint(s.Version)
		if err != nil {
			return nil, Errorf(ErrInvalidInput, "version range %q: %v", s.Version, err)
		}
		m.rng = c
	}
	if len(s.Devices) > 0 {
		m.ids = make(map[string]bool, len(s.Devices))
		for _, id := range s.Devices {
			m.ids[id] = true
		}
	}
	return m, nil
}

// Match reports whether d is selected.
func (m *Matcher) Match(d Device) bool {
	s := m.sel
	if s.Model != "" && s.Model != d.Model {
		return false
	}
	switch {
	case m.exact != "":
		if d.Version != m.exact {
			return false
		}
	case m.rng != nil:
		v, err := semver.NewVersion(d.Version)
		if err != nil || !m.rng.Check(v) {
			return false
		}
	}
	for k, v := range s.Tags {
		if d.Tags[k] != v {
			return false
		}
	}
	if m.ids != nil && !m.ids[d.ID] {
		return false
	}
	return true
}

// Matches reports whether d is selected. A malformed version range matches
// nothing; Validate reports it. To match many devices, Compile once.
func (s Selector) Matches(d Device) bool {
	m, err := s.Compile()
	return err == nil && m.Match(d)
}

// CompareVersions compares two versions by semver precedence: -1, 0 or +1.
// ok is false when either is not a semantic version; then only equality is
// known (cmp 0 when the strings are equal).
func CompareVersions(a, b string) (cmp int, ok bool) {
	va, errA := semver.NewVersion(a)
	vb, errB := semver.NewVersion(b)
	if errA != nil || errB != nil {
		return 0, false
	}
	return va.Compare(vb), true
}
