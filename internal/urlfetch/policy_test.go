package urlfetch

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestForbidden_RefusesLocalAndPrivateAddressesOfBothFamilies(t *testing.T) {
	for _, a := range []string{
		"127.0.0.1", "127.255.0.9", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254",
		"0.0.0.0", "0.1.2.3", "100.64.0.1", "224.0.0.1",
		"::1", "::", "fe80::1", "fc00::1", "fd12:3456::1", "ff02::1",
		"::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254", "64:ff9b::a00:1",
	} {
		assert.True(t, Forbidden(netip.MustParseAddr(a)), a)
	}
	for _, a := range []string{"1.1.1.1", "93.184.216.34", "172.32.0.1", "2606:4700::1111", "::ffff:8.8.8.8"} {
		assert.False(t, Forbidden(netip.MustParseAddr(a)), a)
	}
}

func TestPolicy_AllowsListedNetworksAndHostsOnly(t *testing.T) {
	p, err := ParsePolicy(" 10.0.0.0/8, 127.0.0.1 ,artifacts.internal., fd00::/8")
	require.NoError(t, err)
	assert.NoError(t, p.Check("x", netip.MustParseAddr("10.9.9.9")))
	assert.NoError(t, p.Check("x", netip.MustParseAddr("::ffff:10.9.9.9")), "a mapped address is judged as IPv4")
	assert.NoError(t, p.Check("x", netip.MustParseAddr("127.0.0.1")))
	assert.ErrorIs(t, p.Check("x", netip.MustParseAddr("127.0.0.2")), ErrForbiddenAddress)
	assert.NoError(t, p.Check("Artifacts.Internal", netip.MustParseAddr("192.168.7.7")), "a listed host may resolve anywhere")
	assert.ErrorIs(t, p.Check("other.internal", netip.MustParseAddr("192.168.7.7")), ErrForbiddenAddress)
	assert.NoError(t, p.Check("x", netip.MustParseAddr("fd00::5")))
	assert.ErrorIs(t, p.Check("x", netip.MustParseAddr("::1")), ErrForbiddenAddress)
	assert.NoError(t, p.Check("x", netip.MustParseAddr("8.8.8.8")), "public addresses need no listing")

	var zero Policy
	assert.ErrorIs(t, zero.Check("localhost", netip.MustParseAddr("127.0.0.1")), ErrForbiddenAddress)

	_, err = ParsePolicy("http://host/")
	assert.Error(t, err)
}

func TestRedact_DropsUserInfoAndQuery(t *testing.T) {
	got := Redact("https://bob:s3cret@store.example/fw/a.bin?X-Amz-Signature=abc#frag")
	assert.NotContains(t, got, "s3cret")
	assert.NotContains(t, got, "bob")
	assert.NotContains(t, got, "abc")
	assert.Contains(t, got, "https://store.example/fw/a.bin")
}

func TestParseContentRange(t *testing.T) {
	for _, c := range []struct {
		in           string
		start, total int64
		ok           bool
	}{
		{"bytes 100-199/200", 100, 200, true},
		{"bytes 100-199/*", 100, -1, true},
		{"bytes 100-199/50", 0, 0, false},
		{"bytes */200", 0, 0, false},
		{"items 1-2/3", 0, 0, false},
	} {
		start, total, ok := parseContentRange(c.in)
		assert.Equal(t, c.ok, ok, c.in)
		if c.ok {
			assert.Equal(t, c.start, start, c.in)
			assert.Equal(t, c.total, total, c.in)
		}
	}
}

func TestParseCredentials_ErrorsNeverShowTheSecret(t *testing.T) {
	c, err := ParseCredentials("# store\nStore.Example bearer tok123\nother basic u:p\n")
	require.NoError(t, err)
	assert.Equal(t, "Bearer tok123", c["store.example"])
	assert.Equal(t, "Basic dTpw", c["other"])
	_, err = ParseCredentials("host digest hunter2")
	require.Error(t, err)
	assert.NotContains(t, err.Error(), "hunter2")
	_, err = ParseCredentials("host basic hunter2")
	require.Error(t, err)
	assert.NotContains(t, err.Error(), "hunter2")
}
