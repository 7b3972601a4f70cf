package bpf

import (
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/connwarden/connwarden/internal/kerneltest"
	"github.com/google/go-cmp/cmp"
)

const (
	xdpDrop = 1
	xdpPass = 2
)

// TestXDPRun runs the XDP program on crafted frames with BPF_PROG_TEST_RUN and
// checks the verdict, the counters and the per-entry hits of each case.
func TestXDPRun(t *testing.T) {
	kerneltest.Require(t)
	b := openTestBlocklist(t, BlocklistOptions{})

	for _, e := range []BlockEntry{
		{Prefix: mustPrefix(t, "10.1.0.1"), Reason: ReasonManual},
		{Prefix: mustPrefix(t, "fd00:1::1")},
		{Prefix: mustPrefix(t, "10.2.0.0/16")},
		{Prefix: mustPrefix(t, "fd00:2::/32")},
		{Prefix: mustPrefix(t, "10.3.0.1"), TTL: time.Nanosecond},
		{Prefix: mustPrefix(t, "fd00:3::/48"), TTL: time.Nanosecond},
		// An expired /24 inside a live /16: the /16 still drops.
		{Prefix: mustPrefix(t, "10.4.0.0/16")},
		{Prefix: mustPrefix(t, "10.4.1.0/24"), TTL: time.Nanosecond},
		// An expired exact entry inside a live CIDR: the CIDR drops.
		{Prefix: mustPrefix(t, "10.4.2.2"), TTL: time.Nanosecond},
		// Blocked, but allowlisted below.
		{Prefix: mustPrefix(t, "10.5.0.1")},
		{Prefix: mustPrefix(t, "10.6.0.0/16")},
		{Prefix: mustPrefix(t, "fd00:5::/64")},
		// Stored as IPv4.
		{Prefix: mustPrefix(t, "::ffff:10.7.0.1/128")},
		// Live, far in the future.
		{Prefix: mustPrefix(t, "10.8.0.1"), TTL: time.Hour},
	} {
		if err := b.Block(e.Prefix, e.TTL, e.Reason); err != nil {
			t.Fatalf("block %s: %v", e.Prefix, err)
		}
	}
	for _, s := range []string{"10.5.0.0/24", "10.6.7.8", "fd00:5::/80"} {
		if err := b.Allow(mustPrefix(t, s)); err != nil {
			t.Fatalf("allow %s: %v", s, err)
		}
	}
	// Past the 1ns TTLs by more than a tick: the program reads the coarse
	// monotonic clock.
	time.Sleep(30 * time.Millisecond)

	vlan := func(inner []byte) []byte {
		f := ethernet(etherTypeVLAN)
		f = append(f, 0x00, 0x64, inner[12], inner[13]) // VID 100, inner type
		return append(f, inner[14:]...)
	}
	src := netip.MustParseAddr

	for _, tc := range []struct {
		name  string
		frame []byte
		want  uint32
		stats Stats
		entry string // whose hit count must be 1 afterwards
	}{
		{"v4 exact hit", frameFrom(src("10.1.0.1")), xdpDrop, Stats{Dropped: 1, DroppedExact: 1}, "10.1.0.1/32"},
		{"v6 exact hit", frameFrom(src("fd00:1::1")), xdpDrop, Stats{Dropped: 1, DroppedExact: 1}, "fd00:1::1/128"},
		{"v4 cidr hit", frameFrom(src("10.2.33.44")), xdpDrop, Stats{Dropped: 1, DroppedCIDR: 1}, "10.2.0.0/16"},
		{"v6 cidr hit", frameFrom(src("fd00:2:abcd::1")), xdpDrop, Stats{Dropped: 1, DroppedCIDR: 1}, "fd00:2::/32"},
		{"v4 miss", frameFrom(src("10.9.0.1")), xdpPass, Stats{Passed: 1}, ""},
		{"v6 miss", frameFrom(src("fd00:9::1")), xdpPass, Stats{Passed: 1}, ""},
		{"v4 exact expired", frameFrom(src("10.3.0.1")), xdpPass, Stats{Passed: 1, ExpiredPassed: 1}, ""},
		{"v6 cidr expired", frameFrom(src("fd00:3::7")), xdpPass, Stats{Passed: 1, ExpiredPassed: 1}, ""},
		{"expired cidr inside live cidr", frameFrom(src("10.4.1.9")), xdpDrop, Stats{Dropped: 1, DroppedCIDR: 1}, "10.4.0.0/16"},
		{"expired exact inside live cidr", frameFrom(src("10.4.2.2")), xdpDrop, Stats{Dropped: 1, DroppedCIDR: 1}, ""},
		{"v4 live ttl", frameFrom(src("10.8.0.1")), xdpDrop, Stats{Dropped: 1, DroppedExact: 1}, "10.8.0.1/32"},
		{"v4 exact allowlisted", frameFrom(src("10.5.0.1")), xdpPass, Stats{Passed: 1, AllowlistedPassed: 1}, ""},
		{"v4 cidr allowlisted", frameFrom(src("10.6.7.8")), xdpPass, Stats{Passed: 1, AllowlistedPassed: 1}, ""},
		{"v4 cidr beside allowlist", frameFrom(src("10.6.7.9")), xdpDrop, Stats{Dropped: 1, DroppedCIDR: 1}, "10.6.0.0/16"},
		{"v6 cidr allowlisted", frameFrom(src("fd00:5::1")), xdpPass, Stats{Passed: 1, AllowlistedPassed: 1}, ""},
		{"v4-mapped entry", frameFrom(src("10.7.0.1")), xdpDrop, Stats{Dropped: 1, DroppedExact: 1}, "10.7.0.1/32"},
		{"vlan v4 hit", vlan(frameFrom(src("10.1.0.1"))), xdpDrop, Stats{Dropped: 1, DroppedExact: 1}, ""},
		{"vlan v6 miss", vlan(frameFrom(src("fd00:9::1"))), xdpPass, Stats{Passed: 1}, ""},
		{"arp", append(ethernet(etherTypeARP), make([]byte, 28)...), xdpPass, Stats{Passed: 1, NonIP: 1}, ""},
		{"truncated ipv4", append(ethernet(etherTypeIPv4), frameFrom(src("10.1.0.1"))[14:33]...), xdpPass, Stats{Passed: 1, Malformed: 1}, ""},
		{"truncated ipv6", append(ethernet(etherTypeIPv6), frameFrom(src("fd00:1::1"))[14:53]...), xdpPass, Stats{Passed: 1, Malformed: 1}, ""},
		{"truncated vlan", append(ethernet(etherTypeVLAN), 0x00, 0x64, 0x08), xdpPass, Stats{Passed: 1, Malformed: 1}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var hitsBefore uint64
			if tc.entry != "" {
				hitsBefore = entryHits(t, b, tc.entry)
			}
			before, err := b.Stats()
			if err != nil {
				t.Fatal(err)
			}
			got, err := b.xdp.Run(&ebpf.RunOptions{Data: tc.frame})
			if err != nil {
				t.Fatalf("run: %v", err)
			}
			if got != tc.want {
				t.Errorf("verdict %d, want %d", got, tc.want)
			}
			after, err := b.Stats()
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.stats, statsDelta(before, after)); diff != "" {
				t.Errorf("counter delta (-want +got):\n%s", diff)
			}
			if tc.entry != "" {
				if got := entryHits(t, b, tc.entry) - hitsBefore; got != 1 {
					t.Errorf("hits of %s grew by %d, want 1", tc.entry, got)
				}
			}
		})
	}

	// Allowlisted and expired entries never count hits.
	for _, s := range []string{"10.5.0.1/32", "10.3.0.1/32", "10.4.1.0/24"} {
		if h := entryHits(t, b, s); h != 0 {
			t.Errorf("hits of %s = %d, want 0", s, h)
		}
	}
}

// TestXDPRunRepeat checks that counters add up over many runs.
func TestXDPRunRepeat(t *testing.T) {
	kerneltest.Require(t)
	b := openTestBlocklist(t, BlocklistOptions{})
	if err := b.Block(mustPrefix(t, "10.1.0.0/24"), 0, ReasonManual); err != nil {
		t.Fatal(err)
	}
	const n = 1000
	for _, f := range [][]byte{frameFrom(netip.MustParseAddr("10.1.0.5")), frameFrom(netip.MustParseAddr("10.1.1.5"))} {
		if _, err := b.xdp.Run(&ebpf.RunOptions{Data: f, Repeat: n}); err != nil {
			t.Fatal(err)
		}
	}
	s, err := b.Stats()
	if err != nil {
		t.Fatal(err)
	}
	// Repeat is a minimum: the kernel may rerun after an interruption.
	if s.Dropped < n || s.Passed < n || s.DroppedCIDR != s.Dropped {
		t.Errorf("stats %+v, want at least %d dropped (all cidr) and %d passed", s, n, n)
	}
	if h := entryHits(t, b, "10.1.0.0/24"); h != s.Dropped {
		t.Errorf("entry hits %d, want %d (= dropped)", h, s.Dropped)
	}
}

func entryHits(t testing.TB, b *Blocklist, prefix string) uint64 {
	t.Helper()
	list, err := b.List()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range list {
		if e.Prefix.String() == prefix {
			return e.Hits
		}
	}
	t.Fatalf("no entry %s", prefix)
	return 0
}
