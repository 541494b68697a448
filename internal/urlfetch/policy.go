// Package urlfetch downloads firmware images from an artifact store for the
// orchestrator, against servers and URLs that may be hostile: only http and
// https, a size limit enforced while reading, connect and idle timeouts, few
// redirects and none from https to http, and no connection to loopback,
// link-local, private or unspecified addresses unless allowed (the address
// is checked as the socket is dialled, after DNS, so neither a redirect nor
// a rebinding name escapes the check).
package urlfetch

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"strings"
)

// ErrForbiddenAddress is returned when a fetch would connect to an address
// the policy refuses.
var ErrForbiddenAddress = errors.New("address not allowed as a fetch target")

// Policy says which hosts and networks a fetch may reach beyond the public
// internet. The zero Policy allows public addresses only.
type Policy struct {
	Nets  []netip.Prefix // allowed networks, whatever their kind
	Hosts []string       // allowed host names, lower case, matched exactly
}

// ParsePolicy parses a comma-separated list of networks (10.0.0.0/8),
// addresses (192.168.1.5, ::1) and host names (artifacts.internal).
func ParsePolicy(s string) (Policy, error) {
	var p Policy
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		if pfx, err := netip.ParsePrefix(item); err == nil {
			p.Nets = append(p.Nets, pfx.Masked())
			continue
		}
		if a, err := netip.ParseAddr(item); err == nil {
			p.Nets = append(p.Nets, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
			continue
		}
		if strings.ContainsAny(item, "/:@ ") {
			return Policy{}, fmt.Errorf("fetch allow list: %q is neither a network, an address nor a host name", item)
		}
		p.Hosts = append(p.Hosts, strings.ToLower(strings.TrimSuffix(item, ".")))
	}
	return p, nil
}

// Forbidden reports whether ip is an address a fetch refuses by default:
// loopback, link-local, private (RFC 1918, RFC 4193), shared (RFC 6598),
// unspecified or multicast. IPv4-mapped IPv6 addresses are judged as IPv4.
func Forbidden(ip netip.Addr) bool {
	ip = ip.Unmap()
	return !ip.IsValid() || ip.IsLoopback() || ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() ||
		ip.IsPrivate() || ip.IsUnspecified() || ip.IsMulticast() || ip.IsInterfaceLocalMulticast() ||
		sharedNet.Contains(ip) || thisNet.Contains(ip) || nat64Net.Contains(ip)
}

var (
	sharedNet = netip.MustParsePrefix("100.64.0.0/10") // carrier-grade NAT
	thisNet   = netip.MustParsePrefix("0.0.0.0/8")     // "this network"
	// nat64Net embeds IPv4 addresses, which a NAT64 gateway would reach.
	nat64Net = netip.MustParsePrefix("64:ff9b::/96")
)

// Check returns nil when a connection to ip, dialled for host, is allowed:
// host is listed, or ip is in a listed network, or ip is not Forbidden.
func (p Policy) Check(host string, ip netip.Addr) error {
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	for _, h := range p.Hosts {
		if h == host {
			return nil
		}
	}
	ip = ip.Unmap()
	for _, n := range p.Nets {
		if n.Contains(ip) {
			return nil
		}
	}
	if Forbidden(ip) {
		return fmt.Errorf("%w: %s (allow it with serve --fetch-allow)", ErrForbiddenAddress, ip)
	}
	return nil
}

// Redact returns u without its user information, query or fragment, for
// logs, events and API answers: a pre-signed URL carries its credentials in
// the query.
func Redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	u.User = nil
	if u.RawQuery != "" {
		u.RawQuery = "…"
	}
	u.Fragment, u.RawFragment = "", ""
	return u.String()
}
