package bpf

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/connwarden/connwarden/internal/kerneltest"
)

// fuzzEntries is the blocklist FuzzXDP runs against; expired entries get a
// 1ns TTL.
var fuzzEntries = []struct {
	prefix  string
	expired bool
}{
	{"10.1.0.1/32", false},
	{"10.1.0.2/32", true},
	{"10.2.0.0/16", false},
	{"10.2.3.0/24", true},
	{"10.2.3.4/32", true},
	{"10.3.0.0/24", true},
	{"fd00:1::1/128", false},
	{"fd00:2::/32", false},
	{"fd00:2:1::/48", true},
}

var fuzzAllowed = []string{"10.2.9.0/24", "10.1.0.1/32", "fd00:2:5::/48"}

// xdpModel is what the XDP program should do with a frame, written from its
// documented behaviour rather than from its code.
type xdpModel struct {
	entries []struct {
		prefix  netip.Prefix
		expired bool
	}
	allowed []netip.Prefix
}

func (m *xdpModel) classify(frame []byte) (verdict uint32, stats Stats) {
	pass := func(s Stats) (uint32, Stats) { s.Passed = 1; return xdpPass, s }
	if len(frame) < 14 {
		return pass(Stats{Malformed: 1})
	}
	proto, off := binary.BigEndian.Uint16(frame[12:14]), 14
	if proto == 0x8100 || proto == 0x88a8 {
		if len(frame) < 18 {
			return pass(Stats{Malformed: 1})
		}
		proto, off = binary.BigEndian.Uint16(frame[16:18]), 18
	}
	var src netip.Addr
	switch proto {
	case etherTypeIPv4:
		if len(frame) < off+20 {
			return pass(Stats{Malformed: 1})
		}
		src = netip.AddrFrom4([4]byte(frame[off+12 : off+16]))
	case etherTypeIPv6:
		if len(frame) < off+40 {
			return pass(Stats{Malformed: 1})
		}
		src = netip.AddrFrom16([16]byte(frame[off+8 : off+24]))
	default:
		return pass(Stats{NonIP: 1})
	}

	// Exact entry first, then CIDR entries from the longest down; the first
	// live one decides.
	expired, hit := false, netip.Prefix{}
	for _, full := range []bool{true, false} {
		for bits := src.BitLen(); bits >= 0 && !hit.IsValid(); bits-- {
			for _, e := range m.entries {
				isFull := e.prefix.Bits() == src.BitLen()
				if isFull != full || e.prefix.Bits() != bits || !e.prefix.Contains(src) {
					continue
				}
				if e.expired {
					expired = true
				} else {
					hit = e.prefix
				}
			}
		}
	}
	if !hit.IsValid() {
		if expired {
			return pass(Stats{ExpiredPassed: 1})
		}
		return pass(Stats{})
	}
	for _, a := range m.allowed {
		if a.Contains(src) {
			return pass(Stats{AllowlistedPassed: 1})
		}
	}
	if hit.Bits() == src.BitLen() {
		return xdpDrop, Stats{Dropped: 1, DroppedExact: 1}
	}
	return xdpDrop, Stats{Dropped: 1, DroppedCIDR: 1}
}

// FuzzXDP runs the XDP program on arbitrary frames and compares its verdict
// and counters with xdpModel.
func FuzzXDP(f *testing.F) {
	kerneltest.Require(f)
	b := openTestBlocklist(f, BlocklistOptions{})
	model := &xdpModel{}
	for _, e := range fuzzEntries {
		p := netip.MustParsePrefix(e.prefix)
		ttl := time.Duration(0)
		if e.expired {
			ttl = time.Nanosecond
		}
		if err := b.Block(p, ttl, ReasonManual); err != nil {
			f.Fatal(err)
		}
		model.entries = append(model.entries, struct {
			prefix  netip.Prefix
			expired bool
		}{p, e.expired})
	}
	for _, s := range fuzzAllowed {
		p := netip.MustParsePrefix(s)
		if err := b.Allow(p); err != nil {
			f.Fatal(err)
		}
		model.allowed = append(model.allowed, p)
	}
	time.Sleep(30 * time.Millisecond) // past the 1ns TTLs by more than a coarse tick

	for _, src := range []string{
		"10.1.0.1", "10.1.0.2", "10.2.3.4", "10.2.3.5", "10.2.9.1", "10.2.200.1", "10.3.0.7",
		"192.0.2.1", "fd00:1::1", "fd00:2:1::1", "fd00:2:5::1", "fd00:2:6::1", "2001:db8::1",
	} {
		frame := frameFrom(netip.MustParseAddr(src))
		f.Add(frame)
		f.Add(append(append(ethernet(etherTypeVLAN), 0, 1, frame[12], frame[13]), frame[14:]...))
		f.Add(frame[:30])
	}
	f.Add(append(ethernet(etherTypeARP), make([]byte, 28)...))
	f.Add(append(ethernet(0x88a8), 0, 1))

	f.Fuzz(func(t *testing.T, frame []byte) {
		// The kernel wants at least an Ethernet header and at most what
		// fits a page (linear XDP test runs).
		if len(frame) < 14 || len(frame) > 1500 {
			return
		}
		wantVerdict, wantStats := model.classify(frame)
		before, err := b.Stats()
		if err != nil {
			t.Fatal(err)
		}
		got, err := b.xdp.Run(&ebpf.RunOptions{Data: frame})
		if err != nil {
			t.Fatal(err)
		}
		after, err := b.Stats()
		if err != nil {
			t.Fatal(err)
		}
		if got != wantVerdict || statsDelta(before, after) != wantStats {
			t.Errorf("frame %x: verdict %d, counters %+v; want %d, %+v", frame, got, statsDelta(before, after), wantVerdict, wantStats)
		}
	})
}
