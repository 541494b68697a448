package main

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// rateUnits are the suffixes --bandwidth accepts, longest first: decimal
// (KB, MB: 1000, 1000²), as network rates are given, and binary (KiB, MiB).
var rateUnits = []struct {
	suffix string
	mult   int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9},
	{"kB", 1e3}, {"K", 1e3}, {"k", 1e3}, {"M", 1e6}, {"G", 1e9},
	{"B", 1},
}

// parseRate parses a byte rate such as 20000, 20KB, 20KiB, 1MB or 2.5MB,
// with an optional "/s". It returns bytes per second.
func parseRate(s string) (int64, error) {
	num := strings.TrimSuffix(strings.TrimSpace(s), "/s")
	mult := int64(1)
	for _, u := range rateUnits {
		if n, ok := strings.CutSuffix(num, u.suffix); ok {
			num, mult = strings.TrimSpace(n), u.mult
			break
		}
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || num == "" || strings.ContainsAny(num, "xXpPinfINFaA_") {
		return 0, fmt.Errorf("%q: want bytes per second such as 20000, 20KB, 20KiB or 1MB", s)
	}
	v := f * float64(mult)
	if !(v >= 0) || (v > 0 && v < 1) || v > math.MaxInt64/2 {
		return 0, fmt.Errorf("%q: must be 0 (unlimited) or a positive rate", s)
	}
	return int64(v), nil
}

// keepAlive maps --keepalive (0: none) to agent.Config.KeepAlive (zero:
// the default, negative: none).
func keepAlive(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}

// rateFlag is a --bandwidth value in bytes per second.
type rateFlag int64

func (f *rateFlag) String() string {
	if f == nil || *f == 0 {
		return "0"
	}
	return strconv.FormatInt(int64(*f), 10)
}

func (f *rateFlag) Set(s string) error {
	n, err := parseRate(s)
	if err != nil {
		return err
	}
	*f = rateFlag(n)
	return nil
}
