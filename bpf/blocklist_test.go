package bpf

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/connwarden/connwarden/internal/kerneltest"
	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
)

// randSuffix returns n random hex characters for names no other test uses.
func randSuffix(t testing.TB, n int) string {
	t.Helper()
	buf := make([]byte, (n+1)/2)
	if _, err := rand.Read(buf); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(buf)[:n]
}

// testPinDir returns a fresh pin directory on bpffs, removed after the test.
func testPinDir(t testing.TB) string {
	t.Helper()
	dir := filepath.Join("/sys/fs/bpf", "connwarden-test-"+randSuffix(t, 12))
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove pin dir: %v", err)
		}
	})
	return dir
}

// openTestBlocklist opens a blocklist with its own pin directory; the test's
// cleanup removes it (detaching anything attached) whatever the outcome.
func openTestBlocklist(t testing.TB, opts BlocklistOptions) *Blocklist {
	t.Helper()
	if opts.PinDir == "" {
		opts.PinDir = testPinDir(t)
	}
	if opts.MaxExact == 0 {
		opts.MaxExact = 1024
	}
	if opts.MaxCIDR == 0 {
		opts.MaxCIDR = 1024
	}
	if opts.Logger == nil {
		opts.Logger = zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel)).Named("blocklist")
	}
	b, err := OpenBlocklist(opts)
	if err != nil {
		t.Fatalf("open blocklist: %v", err)
	}
	t.Cleanup(func() {
		if err := b.Remove(); err != nil && !errors.Is(err, ErrClosed) {
			t.Errorf("remove blocklist: %v", err)
		}
	})
	return b
}

func mustPrefix(t testing.TB, s string) netip.Prefix {
	t.Helper()
	if !strings.Contains(s, "/") {
		a := netip.MustParseAddr(s)
		return netip.PrefixFrom(a, a.BitLen())
	}
	return netip.MustParsePrefix(s)
}

// Frames, built by hand so the tests say exactly which bytes the program sees.

var (
	macA = [6]byte{0x02, 0, 0, 0, 0, 0x01}
	macB = [6]byte{0x02, 0, 0, 0, 0, 0x02}
)

const (
	etherTypeIPv4 = 0x0800
	etherTypeIPv6 = 0x86dd
	etherTypeARP  = 0x0806
	etherTypeVLAN = 0x8100
)

func ethernet(etherType uint16) []byte {
	f := make([]byte, 14)
	copy(f[0:6], macB[:])
	copy(f[6:12], macA[:])
	binary.BigEndian.PutUint16(f[12:14], etherType)
	return f
}

// checksum is the Internet checksum (RFC 1071) of the concatenated parts.
func checksum(parts ...[]byte) uint16 {
	var sum uint32
	var odd []byte
	for _, p := range parts {
		if len(odd) == 1 && len(p) > 0 {
			sum += uint32(odd[0])<<8 | uint32(p[0])
			p, odd = p[1:], nil
		}
		for ; len(p) >= 2; p = p[2:] {
			sum += uint32(p[0])<<8 | uint32(p[1])
		}
		if len(p) == 1 {
			odd = p
		}
	}
	if len(odd) == 1 {
		sum += uint32(odd[0]) << 8
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// ipv4Packet returns an IPv4 header (no options, checksum filled) followed by
// payload.
func ipv4Packet(src, dst netip.Addr, proto uint8, payload []byte) []byte {
	h := make([]byte, 20, 20+len(payload))
	h[0] = 0x45
	binary.BigEndian.PutUint16(h[2:4], uint16(20+len(payload)))
	h[6] = 0x40 // DF
	h[8] = 64
	h[9] = proto
	s, d := src.As4(), dst.As4()
	copy(h[12:16], s[:])
	copy(h[16:20], d[:])
	binary.BigEndian.PutUint16(h[10:12], checksum(h))
	return append(h, payload...)
}

func ipv6Packet(src, dst netip.Addr, next uint8, payload []byte) []byte {
	h := make([]byte, 40, 40+len(payload))
	h[0] = 0x60
	binary.BigEndian.PutUint16(h[4:6], uint16(len(payload)))
	h[6] = next
	h[7] = 64
	s, d := src.As16(), dst.As16()
	copy(h[8:24], s[:])
	copy(h[24:40], d[:])
	return append(h, payload...)
}

const (
	protoICMP = 1
	protoTCP  = 6
)

// icmpEcho returns an ICMP echo request with a valid checksum.
func icmpEcho(id, seq uint16) []byte {
	m := make([]byte, 16)
	m[0] = 8
	binary.BigEndian.PutUint16(m[4:6], id)
	binary.BigEndian.PutUint16(m[6:8], seq)
	copy(m[8:], "cwblping")
	binary.BigEndian.PutUint16(m[2:4], checksum(m))
	return m
}

// tcpSYN returns a TCP SYN segment with a valid IPv4 checksum.
func tcpSYN(src, dst netip.Addr, sport, dport uint16, seq uint32) []byte {
	s := make([]byte, 20)
	binary.BigEndian.PutUint16(s[0:2], sport)
	binary.BigEndian.PutUint16(s[2:4], dport)
	binary.BigEndian.PutUint32(s[4:8], seq)
	s[12] = 5 << 4
	s[13] = 0x02 // SYN
	binary.BigEndian.PutUint16(s[14:16], 64240)
	sa, da := src.As4(), dst.As4()
	pseudo := make([]byte, 12)
	copy(pseudo[0:4], sa[:])
	copy(pseudo[4:8], da[:])
	pseudo[9] = protoTCP
	binary.BigEndian.PutUint16(pseudo[10:12], uint16(len(s)))
	binary.BigEndian.PutUint16(s[16:18], checksum(pseudo, s))
	return s
}

// frameFrom returns an Ethernet frame carrying a TCP SYN from src (IPv4 or
// IPv6) to a fixed destination of the same family.
func frameFrom(src netip.Addr) []byte {
	if src.Is4() {
		dst := netip.MustParseAddr("10.250.0.2")
		return append(ethernet(etherTypeIPv4), ipv4Packet(src, dst, protoTCP, tcpSYN(src, dst, 40000, 22, 1))...)
	}
	dst := netip.MustParseAddr("fd00:250::2")
	return append(ethernet(etherTypeIPv6), ipv6Packet(src, dst, protoTCP, make([]byte, 20))...)
}

func TestNormalise(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"10.1.2.3/32", "10.1.2.3/32"},
		{"10.1.2.3/24", "10.1.2.0/24"},
		{"::ffff:10.1.2.3/128", "10.1.2.3/32"},
		{"::ffff:10.1.2.3/120", "10.1.2.0/24"},
		{"::ffff:0.0.0.0/80", "::/80"},
		{"fd00::1/64", "fd00::/64"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := normalise(netip.MustParsePrefix(tc.in))
			if err != nil {
				t.Fatal(err)
			}
			if got.String() != tc.want {
				t.Errorf("normalise(%s) = %s, want %s", tc.in, got, tc.want)
			}
		})
	}
	if _, err := normalise(netip.Prefix{}); !errors.Is(err, ErrInvalidPrefix) {
		t.Errorf("normalise(zero) error = %v, want ErrInvalidPrefix", err)
	}
}

func TestBlocklistEntries(t *testing.T) {
	kerneltest.Require(t)
	b := openTestBlocklist(t, BlocklistOptions{})

	start := time.Now()
	for _, e := range []BlockEntry{
		{mustPrefix(t, "10.1.0.1"), 0, ReasonManual},
		{mustPrefix(t, "10.2.0.0/16"), time.Hour, ReasonDetector},
		{mustPrefix(t, "fd00:1::1"), 0, ReasonFeed},
		{mustPrefix(t, "fd00:2::/32"), time.Minute, Reason(77)},
		{mustPrefix(t, "::ffff:10.3.0.9/128"), 0, ReasonManual},
	} {
		if err := b.Block(e.Prefix, e.TTL, e.Reason); err != nil {
			t.Fatalf("block %s: %v", e.Prefix, err)
		}
	}
	if err := b.Block(mustPrefix(t, "10.9.0.0/16"), -time.Second, ReasonManual); !errors.Is(err, ErrInvalidTTL) {
		t.Errorf("block with negative ttl: error %v, want ErrInvalidTTL", err)
	}

	list, err := b.List()
	if err != nil {
		t.Fatal(err)
	}
	type row struct {
		Prefix string
		Reason Reason
		TTL    time.Duration // rounded to a minute, 0 when never
	}
	var got []row
	for _, e := range list {
		r := row{Prefix: e.Prefix.String(), Reason: e.Reason}
		if !e.Expires.IsZero() {
			r.TTL = e.Expires.Sub(start).Round(time.Minute)
		}
		got = append(got, r)
	}
	want := []row{
		{"10.1.0.1/32", ReasonManual, 0},
		{"10.2.0.0/16", ReasonDetector, time.Hour},
		{"10.3.0.9/32", ReasonManual, 0},
		{"fd00:1::1/128", ReasonFeed, 0},
		{"fd00:2::/32", Reason(77), time.Minute},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("List (-want +got):\n%s", diff)
	}
	if n, err := b.Len(); err != nil || n != 5 {
		t.Errorf("Len = %d, %v; want 5", n, err)
	}
	if got, want := b.Capacity(), 4*1024; got != want {
		t.Errorf("Capacity = %d, want %d", got, want)
	}

	for _, tc := range []struct {
		addr   string
		want   string
		reason Reason
	}{
		{"10.1.0.1", "10.1.0.1/32", ReasonManual},
		{"10.2.200.1", "10.2.0.0/16", ReasonDetector},
		{"::ffff:10.2.0.7", "10.2.0.0/16", ReasonDetector},
		{"fd00:2:ffff::9", "fd00:2::/32", Reason(77)},
		{"10.4.0.1", "", 0},
		{"fd00:3::1", "", 0},
	} {
		e, ok, err := b.Lookup(netip.MustParseAddr(tc.addr))
		if err != nil {
			t.Fatalf("lookup %s: %v", tc.addr, err)
		}
		var got string
		if ok {
			got = e.Prefix.String()
		}
		if got != tc.want || e.Reason != tc.reason {
			t.Errorf("Lookup(%s) = %q %s, want %q %s", tc.addr, got, e.Reason, tc.want, tc.reason)
		}
	}

	if err := b.Unblock(mustPrefix(t, "10.2.0.0/16")); err != nil {
		t.Errorf("unblock: %v", err)
	}
	if err := b.Unblock(mustPrefix(t, "10.2.0.0/16")); !errors.Is(err, ErrNotBlocked) {
		t.Errorf("second unblock: error %v, want ErrNotBlocked", err)
	}
	if err := b.Unblock(mustPrefix(t, "::ffff:10.3.0.9/128")); err != nil {
		t.Errorf("unblock v4-mapped: %v", err)
	}
	if n, err := b.Len(); err != nil || n != 3 {
		t.Errorf("Len after unblock = %d, %v; want 3", n, err)
	}

	// Expired entries stay until GC removes them, and only them.
	if err := b.Block(mustPrefix(t, "10.5.0.1"), time.Nanosecond, ReasonManual); err != nil {
		t.Fatal(err)
	}
	if err := b.Block(mustPrefix(t, "fd00:5::/48"), time.Nanosecond, ReasonManual); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Millisecond)
	if _, ok, _ := b.Lookup(netip.MustParseAddr("10.5.0.1")); ok {
		t.Error("Lookup found an expired entry")
	}
	list, err = b.List()
	if err != nil {
		t.Fatal(err)
	}
	var expired []string
	for _, e := range list {
		if e.Expired(time.Now()) {
			expired = append(expired, e.Prefix.String())
		}
	}
	if diff := cmp.Diff([]string{"10.5.0.1/32", "fd00:5::/48"}, expired); diff != "" {
		t.Errorf("expired entries in List (-want +got):\n%s", diff)
	}
	if n, err := b.GC(); err != nil || n != 2 {
		t.Errorf("GC = %d, %v; want 2", n, err)
	}
	if n, err := b.Len(); err != nil || n != 3 {
		t.Errorf("Len after GC = %d, %v; want 3", n, err)
	}

	// Allowlist.
	for _, s := range []string{"10.7.0.0/24", "fd00:7::/64", "::ffff:10.8.0.1/128"} {
		if err := b.Allow(mustPrefix(t, s)); err != nil {
			t.Fatalf("allow %s: %v", s, err)
		}
	}
	if err := b.Disallow(mustPrefix(t, "10.7.0.0/24")); err != nil {
		t.Errorf("disallow: %v", err)
	}
	if err := b.Disallow(mustPrefix(t, "10.7.0.0/24")); !errors.Is(err, ErrNotAllowed) {
		t.Errorf("second disallow: error %v, want ErrNotAllowed", err)
	}
	allowed, err := b.Allowed()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]netip.Prefix{mustPrefix(t, "10.8.0.1/32"), mustPrefix(t, "fd00:7::/64")}, allowed, cmp.Comparer(func(x, y netip.Prefix) bool { return x == y })); diff != "" {
		t.Errorf("Allowed (-want +got):\n%s", diff)
	}
}

func TestBlocklistBatch(t *testing.T) {
	kerneltest.Require(t)
	b := openTestBlocklist(t, BlocklistOptions{MaxExact: 40000, MaxCIDR: 40000})

	var entries []BlockEntry
	for i := range 20000 {
		entries = append(entries, BlockEntry{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 20, byte(i >> 8), byte(i)}), 32), Reason: ReasonFeed})
	}
	for i := range 1000 {
		entries = append(entries, BlockEntry{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 30 + byte(i>>8), byte(i), 0}), 24), TTL: time.Hour})
		entries = append(entries, BlockEntry{Prefix: netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0, 0, 0x30, byte(i >> 8), byte(i)}), 48)})
		entries = append(entries, BlockEntry{Prefix: netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0, 0, 0x31, 15: byte(i), 14: byte(i >> 8)}), 128)})
	}
	n, err := b.BlockBatch(entries)
	if err != nil || n != len(entries) {
		t.Fatalf("BlockBatch = %d, %v; want %d", n, err, len(entries))
	}
	if got, err := b.Len(); err != nil || got != len(entries) {
		t.Errorf("Len = %d, %v; want %d", got, err, len(entries))
	}
	for _, tc := range []struct{ addr, want string }{
		{"10.20.78.31", "10.20.78.31/32"},
		{"10.33.231.77", "10.33.231.0/24"},
		{"fd00:30:3e7::1", "fd00:30:3e7::/48"},
		{"fd00:31::3e7", "fd00:31::3e7/128"},
	} {
		e, ok, err := b.Lookup(netip.MustParseAddr(tc.addr))
		if err != nil || !ok || e.Prefix.String() != tc.want {
			t.Errorf("Lookup(%s) = %v %v %v, want %s", tc.addr, e.Prefix, ok, err, tc.want)
		}
	}

	// Validation is total: one bad entry and nothing is written.
	bad := []BlockEntry{{Prefix: mustPrefix(t, "10.99.0.1")}, {}}
	if n, err := b.BlockBatch(bad); n != 0 || !errors.Is(err, ErrInvalidPrefix) {
		t.Errorf("BlockBatch(bad) = %d, %v; want 0, ErrInvalidPrefix", n, err)
	}
	if _, ok, _ := b.Lookup(netip.MustParseAddr("10.99.0.1")); ok {
		t.Error("BlockBatch wrote an entry of a rejected batch")
	}
}

func TestBlocklistFull(t *testing.T) {
	kerneltest.Require(t)
	b := openTestBlocklist(t, BlocklistOptions{MaxExact: 4, MaxCIDR: 4})
	var err error
	for i := range 6 {
		err = b.Block(netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 40, 0, byte(i)}), 32), 0, ReasonManual)
		if err != nil {
			break
		}
	}
	if !errors.Is(err, ErrFull) {
		t.Errorf("block beyond capacity: error %v, want ErrFull", err)
	}
	for i := range 6 {
		err = b.Block(netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 41, byte(i), 0}), 24), 0, ReasonManual)
		if err != nil {
			break
		}
	}
	if !errors.Is(err, ErrFull) {
		t.Errorf("cidr block beyond capacity: error %v, want ErrFull", err)
	}
}

// statsDelta returns after - before, field by field.
func statsDelta(before, after Stats) Stats {
	return Stats{
		Passed:            after.Passed - before.Passed,
		Dropped:           after.Dropped - before.Dropped,
		DroppedExact:      after.DroppedExact - before.DroppedExact,
		DroppedCIDR:       after.DroppedCIDR - before.DroppedCIDR,
		ExpiredPassed:     after.ExpiredPassed - before.ExpiredPassed,
		AllowlistedPassed: after.AllowlistedPassed - before.AllowlistedPassed,
		NonIP:             after.NonIP - before.NonIP,
		Malformed:         after.Malformed - before.Malformed,
		EgressRefused:     after.EgressRefused - before.EgressRefused,
	}
}
