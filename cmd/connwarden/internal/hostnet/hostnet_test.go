package hostnet

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const route4 = `Iface	Destination	Gateway 	Flags	RefCnt	Use	Metric	Mask		MTU	Window	IRTT
eth0	00000000	010200C0	0003	0	0	0	00000000	0	0	0
eth0	000200C0	00000000	0001	0	0	0	00FFFFFF	0	0	0
wg0	00000000	00000000	0000	0	0	0	00000000	0	0	0
`

const route6 = `fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000400 00000002 00000000 00000003     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
`

func TestParseRoutes(t *testing.T) {
	got4, err := parseRoute4(strings.NewReader(route4))
	if err != nil {
		t.Fatal(err)
	}
	got6, err := parseRoute6(strings.NewReader(route6))
	if err != nil {
		t.Fatal(err)
	}
	want := []Route{
		{Iface: "eth0", Gateway: netip.MustParseAddr("192.0.2.1")},
		{Iface: "eth0", Gateway: netip.MustParseAddr("fd00::1")},
	}
	if d := cmp.Diff(want, append(got4, got6...), cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); d != "" {
		t.Errorf("routes (-want +got):\n%s", d)
	}
}

func TestParseRouteMalformed(t *testing.T) {
	if _, err := parseRoute4(strings.NewReader("h\neth0 zz 0 0 0 0 0 0\n")); err == nil {
		t.Error("malformed IPv4 route accepted")
	}
	if _, err := parseRoute6(strings.NewReader("0 00 0 00 nothex 0 0 0 00000003 eth0\n")); err == nil {
		t.Error("malformed IPv6 gateway accepted")
	}
}

// On the live host: loopback and every default gateway are protected.
func TestProtectedPrefixesLive(t *testing.T) {
	got, err := ProtectedPrefixes()
	if err != nil {
		t.Fatal(err)
	}
	has := func(p netip.Prefix) bool {
		for _, g := range got {
			if g == p {
				return true
			}
		}
		return false
	}
	for _, p := range []string{"127.0.0.0/8", "::1/128"} {
		if !has(netip.MustParsePrefix(p)) {
			t.Errorf("%s not protected: %v", p, got)
		}
	}
	routes, err := DefaultRoutes()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		if r.Gateway.IsValid() && !has(netip.PrefixFrom(r.Gateway, r.Gateway.BitLen())) {
			t.Errorf("gateway %v of %s not protected", r.Gateway, r.Iface)
		}
	}
}
