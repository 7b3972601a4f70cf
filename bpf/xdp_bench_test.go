package bpf

import (
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/connwarden/connwarden/internal/kerneltest"
)

// BenchmarkXDP measures the XDP program's per-packet cost with
// BPF_PROG_TEST_RUN, with 1M exact IPv4 entries and 10k IPv4 /24 CIDR
// entries loaded, against an empty XDP program measured in the same run.
// Metrics: ns/pkt (the kernel's per-run time, whole ns) and x-empty (ratio
// to the empty program run right after with the same repeat count).
// Reported, never asserted.
//
//	go test -run '^$' -bench 'BenchmarkXDP$' -benchtime 5000000x ./bpf/
func BenchmarkXDP(b *testing.B) {
	kerneltest.Require(b)
	const (
		exactEntries = 1_000_000
		cidrEntries  = 10_000
	)
	bl := openTestBlocklist(b, BlocklistOptions{MaxExact: 1 << 20, MaxCIDR: 1 << 14})

	// Deterministic entries: exact addresses anywhere outside 10.0.0.0/8,
	// CIDR /24s inside it.
	rng := rand.New(rand.NewPCG(1, 2))
	miss := netip.MustParseAddr("192.0.2.1")
	entries := make([]BlockEntry, 0, exactEntries+cidrEntries)
	seen := make(map[uint32]bool, exactEntries)
	for len(entries) < exactEntries {
		v := rng.Uint32()
		a := netip.AddrFrom4([4]byte(binary.BigEndian.AppendUint32(nil, v)))
		if v>>24 == 10 || a == miss || seen[v] {
			continue
		}
		seen[v] = true
		entries = append(entries, BlockEntry{Prefix: netip.PrefixFrom(a, 32), Reason: ReasonFeed})
	}
	blocked24 := make(map[uint32]bool, cidrEntries)
	for len(blocked24) < cidrEntries {
		v := 10<<16 | rng.Uint32N(1<<16) // 10.x.y.0/24
		if blocked24[v] {
			continue
		}
		blocked24[v] = true
		a := netip.AddrFrom4([4]byte(binary.BigEndian.AppendUint32(nil, v<<8)))
		entries = append(entries, BlockEntry{Prefix: netip.PrefixFrom(a, 24), Reason: ReasonFeed})
	}
	start := time.Now()
	if n, err := bl.BlockBatch(entries); err != nil || n != len(entries) {
		b.Fatalf("BlockBatch = %d, %v", n, err)
	}
	b.Logf("loaded %d entries in %s", len(entries), time.Since(start))

	// One more exact entry with a TTL: its hits also read the clock.
	withTTL := netip.MustParseAddr("198.51.100.7")
	if err := bl.Block(netip.PrefixFrom(withTTL, 32), time.Hour, ReasonDetector); err != nil {
		b.Fatal(err)
	}

	var nearMiss netip.Addr // in 10.0.0.0/8 but in no blocked /24
	for v := uint32(10 << 16); ; v++ {
		if !blocked24[v] {
			nearMiss = netip.AddrFrom4([4]byte(binary.BigEndian.AppendUint32(nil, v<<8|9)))
			break
		}
	}

	var objs struct {
		Baseline *ebpf.Program `ebpf:"xdp_baseline"`
	}
	if err := bl.spec.LoadAndAssign(&objs, nil); err != nil {
		b.Fatal(err)
	}
	defer objs.Baseline.Close()

	missFrame := frameFrom(miss)
	for _, tc := range []struct {
		name  string
		prog  *ebpf.Program
		frame []byte
		want  uint32
	}{
		{"empty", objs.Baseline, missFrame, xdpPass},
		{"exact-hit", bl.xdp, frameFrom(entries[exactEntries/2].Prefix.Addr()), xdpDrop},
		{"exact-hit-ttl", bl.xdp, frameFrom(withTTL), xdpDrop},
		{"cidr-hit", bl.xdp, frameFrom(entries[exactEntries+cidrEntries/2].Prefix.Addr().Next()), xdpDrop},
		{"miss", bl.xdp, missFrame, xdpPass},
		{"miss-inside-cidr-space", bl.xdp, frameFrom(nearMiss), xdpPass},
		{"v6-miss", bl.xdp, frameFrom(netip.MustParseAddr("2001:db8::1")), xdpPass},
	} {
		b.Run(tc.name, func(b *testing.B) {
			ret, perRun, err := tc.prog.Benchmark(tc.frame, b.N, b.ResetTimer)
			if err != nil {
				b.Fatal(err)
			}
			if ret != tc.want {
				b.Fatalf("verdict %d, want %d", ret, tc.want)
			}
			// The empty program right after, same repeat count: on a
			// shared, noisy machine only a ratio taken at once means much.
			_, empty, err := objs.Baseline.Benchmark(missFrame, b.N, nil)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(perRun.Nanoseconds()), "ns/pkt")
			b.ReportMetric(float64(perRun)/float64(max(empty, 1)), "x-empty")
		})
	}
}

// BenchmarkBlockBatch measures how fast BlockBatch loads fresh entries, in
// batches of 65536. Reported as entries/s.
//
//	go test -run '^$' -bench 'BenchmarkBlockBatch' ./bpf/
func BenchmarkBlockBatch(b *testing.B) {
	kerneltest.Require(b)
	const n = 1 << 16
	for _, tc := range []struct {
		name string
		gen  func(i int) netip.Prefix
	}{
		{"exact-v4", func(i int) netip.Prefix {
			return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 32)
		}},
		{"exact-v6", func(i int) netip.Prefix {
			return netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 13: byte(i >> 16), 14: byte(i >> 8), 15: byte(i)}), 128)
		}},
		{"cidr-v4", func(i int) netip.Prefix {
			return netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(i >> 16), byte(i >> 8), byte(i), 0}), 24)
		}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			bl := openTestBlocklist(b, BlocklistOptions{MaxExact: n, MaxCIDR: n})
			entries := make([]BlockEntry, n)
			for i := range entries {
				entries[i] = BlockEntry{Prefix: tc.gen(i), TTL: time.Hour, Reason: ReasonFeed}
			}
			b.ResetTimer()
			for range b.N {
				if got, err := bl.BlockBatch(entries); err != nil || got != n {
					b.Fatalf("BlockBatch = %d, %v", got, err)
				}
				b.StopTimer()
				for _, e := range entries {
					if err := bl.Unblock(e.Prefix); err != nil {
						b.Fatal(err)
					}
				}
				b.StartTimer()
			}
			b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "entries/s")
		})
	}
}
