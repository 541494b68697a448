package mqttclient

import (
	"fmt"
	"net/url"
	"strings"
)

// SplitURLs splits a comma-separated list of broker URLs, the nodes of one
// broker cluster ("tcp://a:1883,tcp://b:1883"), dropping blanks. paho tries
// them in order at every connection attempt, so a client fails over to the
// next node when one is down.
func SplitURLs(list string) []string {
	var urls []string
	for _, s := range strings.Split(list, ",") {
		if s = strings.TrimSpace(s); s != "" {
			urls = append(urls, s)
		}
	}
	return urls
}

// RotateURLs returns urls ordered for device i of a fleet: first node
// i mod len(urls), then the others, rotated by i / len(urls). A fleet whose
// device i takes RotateURLs(urls, i) spreads its first connections over
// the cluster's nodes, and when a node dies its devices spread over the
// others instead of all failing over to the next one; each device still
// tries every node.
func RotateURLs(urls []string, i int) []string {
	n := len(urls)
	if n == 0 {
		return nil
	}
	first := i % n
	rest := append(append([]string(nil), urls[first+1:]...), urls[:first]...)
	out := []string{urls[first]}
	if len(rest) > 0 {
		k := (i / n) % len(rest)
		out = append(append(out, rest[k:]...), rest[:k]...)
	}
	return out
}

// parseURLs checks every URL of list and returns them with their common
// scheme family: TLS or not (paho uses one TLS configuration for all).
func parseURLs(list string) (urls []string, tls bool, err error) {
	urls = SplitURLs(list)
	if len(urls) == 0 {
		return nil, false, fmt.Errorf("mqttclient: no broker URL in %q", redact(list))
	}
	for i, raw := range urls {
		u, err := url.Parse(raw)
		if err != nil {
			return nil, false, fmt.Errorf("mqttclient: broker URL: %w", err)
		}
		if u.Host == "" {
			return nil, false, fmt.Errorf("mqttclient: broker URL %q: want tcp://host:port or ssl://host:port", redact(raw))
		}
		var isTLS bool
		switch u.Scheme {
		case "tcp", "mqtt":
		case "ssl", "tls", "mqtts", "tcps":
			isTLS = true
		default:
			return nil, false, fmt.Errorf("mqttclient: broker URL scheme %q: want tcp or ssl", u.Scheme)
		}
		if i > 0 && isTLS != tls {
			return nil, false, fmt.Errorf("mqttclient: broker URLs %q mix TLS and plain TCP", redact(list))
		}
		tls = isTLS
	}
	return urls, tls, nil
}
