// Package hostnet answers the agent's questions about the host's own network:
// which interfaces carry a default route (where the XDP blocklist attaches by
// default), and which addresses must never be blocked (the host's own and its
// default gateways), so no rule can cut the host off from its network.
//
// It reads /proc/net/route and /proc/net/ipv6_route (the kernel's own view,
// no netlink dependency) and the interface list from package net.
package hostnet

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
)

// Route is one default route: the interface and its gateway (invalid when the
// route has none, e.g. a point-to-point link).
type Route struct {
	Iface   string
	Gateway netip.Addr
}

// DefaultRoutes returns the host's IPv4 and IPv6 default routes.
func DefaultRoutes() ([]Route, error) {
	var out []Route
	f, err := os.Open("/proc/net/route")
	if err != nil {
		return nil, fmt.Errorf("default routes: %w", err)
	}
	r4, err := parseRoute4(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("parse /proc/net/route: %w", err)
	}
	out = append(out, r4...)
	f, err = os.Open("/proc/net/ipv6_route")
	if err == nil { // a host without IPv6 has no such file
		r6, err := parseRoute6(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("parse /proc/net/ipv6_route: %w", err)
		}
		out = append(out, r6...)
	}
	return out, nil
}

// parseRoute4 reads /proc/net/route: addresses are the network-order u32
// printed as a native (little-endian on the machines we run on) hex number.
func parseRoute4(r io.Reader) ([]Route, error) {
	var out []Route
	sc := bufio.NewScanner(r)
	for line := 0; sc.Scan(); line++ {
		f := strings.Fields(sc.Text())
		if line == 0 || len(f) < 8 {
			continue // header
		}
		dst, err1 := strconv.ParseUint(f[1], 16, 32)
		gw, err2 := strconv.ParseUint(f[2], 16, 32)
		flags, err3 := strconv.ParseUint(f[3], 16, 32)
		mask, err4 := strconv.ParseUint(f[7], 16, 32)
		if err1 != nil || err2 != nil || err3 != nil || err4 != nil {
			return nil, fmt.Errorf("line %d: malformed %q", line+1, sc.Text())
		}
		const rtfUp = 0x1
		if dst != 0 || mask != 0 || flags&rtfUp == 0 {
			continue
		}
		rt := Route{Iface: f[0]}
		if gw != 0 {
			var b [4]byte
			binary.LittleEndian.PutUint32(b[:], uint32(gw))
			rt.Gateway = netip.AddrFrom4(b)
		}
		out = append(out, rt)
	}
	return out, sc.Err()
}

// parseRoute6 reads /proc/net/ipv6_route: dst, dst_len, src, src_len, gateway,
// metric, refcnt, use, flags, iface.
func parseRoute6(r io.Reader) ([]Route, error) {
	var out []Route
	sc := bufio.NewScanner(r)
	for line := 1; sc.Scan(); line++ {
		f := strings.Fields(sc.Text())
		if len(f) < 10 {
			continue
		}
		if f[1] != "00" || strings.Trim(f[0], "0") != "" || f[9] == "lo" {
			continue // not ::/0, or the loopback "unreachable" catch-all
		}
		flags, err := strconv.ParseUint(f[8], 16, 32)
		if err != nil {
			return nil, fmt.Errorf("line %d: malformed flags %q", line, f[8])
		}
		const rtfUp, rtfReject = 0x1, 0x200
		if flags&rtfUp == 0 || flags&rtfReject != 0 {
			continue
		}
		gwb, err := hex.DecodeString(f[4])
		if err != nil || len(gwb) != 16 {
			return nil, fmt.Errorf("line %d: malformed gateway %q", line, f[4])
		}
		rt := Route{Iface: f[9]}
		if gw := netip.AddrFrom16([16]byte(gwb)); !gw.IsUnspecified() {
			rt.Gateway = gw
		}
		out = append(out, rt)
	}
	return out, sc.Err()
}

// DefaultRouteInterfaces returns, sorted and without repeats, the interfaces
// that carry a default route.
func DefaultRouteInterfaces() ([]string, error) {
	routes, err := DefaultRoutes()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, r := range routes {
		out = append(out, r.Iface)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// ProtectedPrefixes returns what the agent must never block: loopback, every
// address configured on the host, and every default gateway.
func ProtectedPrefixes() ([]netip.Prefix, error) {
	out := []netip.Prefix{
		netip.MustParsePrefix("127.0.0.0/8"),
		netip.MustParsePrefix("::1/128"),
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, fmt.Errorf("host addresses: %w", err)
	}
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(ipn.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		out = append(out, netip.PrefixFrom(ip, ip.BitLen()))
	}
	routes, err := DefaultRoutes()
	if err != nil {
		return nil, err
	}
	for _, r := range routes {
		if r.Gateway.IsValid() {
			out = append(out, netip.PrefixFrom(r.Gateway, r.Gateway.BitLen()))
		}
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return slices.Compact(out), nil
}
