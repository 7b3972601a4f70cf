package bpf

import (
	"errors"
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/connwarden/connwarden/internal/kerneltest"
)

func TestSlotSpan(t *testing.T) {
	for _, tc := range []struct {
		prefix   string
		first, n int
	}{
		{"10.2.0.0/16", 10<<8 | 2, 1},
		{"10.2.3.0/24", 10<<8 | 2, 1},
		{"10.0.0.0/8", 10 << 8, 256},
		{"10.128.0.0/9", 10<<8 | 128, 128},
		{"0.0.0.0/0", 0, 1 << 16},
		{"fd00:1::/32", 0xfd00, 1},
		{"fe80::/10", 0xfe80, 64},
	} {
		first, n := slotSpan(netip.MustParsePrefix(tc.prefix))
		if first != tc.first || n != tc.n {
			t.Errorf("slotSpan(%s) = %#x, %d; want %#x, %d", tc.prefix, first, n, tc.first, tc.n)
		}
	}
}

// slotBit reads the summary bit the kernel tests for address a in set.
func slotBit(t testing.TB, b *Blocklist, set blocklistBlSlotSet, a netip.Addr) bool {
	t.Helper()
	var bits blocklistBlSlotBits
	if err := b.slots.Lookup(uint32(set), &bits); err != nil {
		t.Fatal(err)
	}
	slot, _ := slotSpan(netip.PrefixFrom(a, a.BitLen()))
	return bits.Words[slot>>6]>>(slot&63)&1 == 1
}

func verdict(t testing.TB, b *Blocklist, src string) uint32 {
	t.Helper()
	ret, err := b.xdp.Run(&ebpf.RunOptions{Data: frameFrom(netip.MustParseAddr(src))})
	if err != nil {
		t.Fatal(err)
	}
	return ret
}

// TestSlots checks that the summaries follow the tries: a bit stays set
// while any entry overlaps its /16 and clears when the last one goes.
func TestSlots(t *testing.T) {
	kerneltest.Require(t)
	b := openTestBlocklist(t, BlocklistOptions{})
	const cidr4 = blocklistBlSlotSetBL_SLOTS_CIDR_V4
	addr := netip.MustParseAddr("10.2.5.9")

	if slotBit(t, b, cidr4, addr) {
		t.Fatal("slot set in an empty blocklist")
	}
	for _, p := range []string{"10.0.0.0/8", "10.2.5.0/24"} {
		if err := b.Block(mustPrefix(t, p), 0, ReasonManual); err != nil {
			t.Fatal(err)
		}
	}
	// Blocking the same prefix again must not count it twice.
	if err := b.Block(mustPrefix(t, "10.2.5.0/24"), 0, ReasonManual); err != nil {
		t.Fatal(err)
	}
	if err := b.Unblock(mustPrefix(t, "10.0.0.0/8")); err != nil {
		t.Fatal(err)
	}
	if !slotBit(t, b, cidr4, addr) || verdict(t, b, "10.2.5.9") != xdpDrop {
		t.Error("/24 not enforced after unblocking the /8 that covered it")
	}
	if slotBit(t, b, cidr4, netip.MustParseAddr("10.3.0.1")) {
		t.Error("slot of 10.3/16 still set after its only entry went")
	}
	if err := b.Unblock(mustPrefix(t, "10.2.5.0/24")); err != nil {
		t.Fatal(err)
	}
	if slotBit(t, b, cidr4, addr) {
		t.Error("slot still set after the last overlapping entry went")
	}

	// GC lowers the bits of the expired entries it deletes.
	if err := b.Block(mustPrefix(t, "10.4.0.0/16"), 1, ReasonManual); err != nil {
		t.Fatal(err)
	}
	if n, err := b.GC(); err != nil || n != 1 {
		t.Fatalf("GC = %d, %v; want 1", n, err)
	}
	if slotBit(t, b, cidr4, netip.MustParseAddr("10.4.0.1")) {
		t.Error("slot still set after GC deleted its entry")
	}

	// Allowlist summaries: allowlisted while listed, dropped after.
	if err := b.Block(mustPrefix(t, "fd00:6::/32"), 0, ReasonManual); err != nil {
		t.Fatal(err)
	}
	if err := b.Allow(mustPrefix(t, "fd00:6::1")); err != nil {
		t.Fatal(err)
	}
	if verdict(t, b, "fd00:6::1") != xdpPass {
		t.Error("allowlisted address dropped")
	}
	if err := b.Disallow(mustPrefix(t, "fd00:6::1")); err != nil {
		t.Fatal(err)
	}
	if slotBit(t, b, blocklistBlSlotSetBL_SLOTS_ALLOW_V6, netip.MustParseAddr("fd00:6::1")) || verdict(t, b, "fd00:6::1") != xdpDrop {
		t.Error("address still passes after Disallow")
	}

	// BlockBatch raises the bits of what it writes.
	if n, err := b.BlockBatch([]BlockEntry{{Prefix: mustPrefix(t, "10.9.0.0/20")}, {Prefix: mustPrefix(t, "fd00:9::/48")}}); err != nil || n != 2 {
		t.Fatalf("BlockBatch = %d, %v", n, err)
	}
	if verdict(t, b, "10.9.15.1") != xdpDrop || verdict(t, b, "fd00:9::1") != xdpDrop {
		t.Error("batch-loaded CIDR entries not enforced")
	}
}

// TestSlotsRebuiltAtOpen writes trie entries behind the blocklist's back, as
// a crashed writer could have left them, and checks Open recounts them.
func TestSlotsRebuiltAtOpen(t *testing.T) {
	kerneltest.Require(t)
	dir := testPinDir(t)
	b, err := OpenBlocklist(BlocklistOptions{PinDir: dir, MaxExact: 64, MaxCIDR: 64})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}

	trie, err := ebpf.LoadPinnedMap(filepath.Join(dir, "maps", "bl_cidr_v4"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer trie.Close()
	p := mustPrefix(t, "10.77.0.0/16")
	if err := trie.Update(lpmV4(p), blockValue(p, 0, ReasonManual, clockPair{}), ebpf.UpdateAny); err != nil {
		t.Fatal(err)
	}

	b = openTestBlocklist(t, BlocklistOptions{PinDir: dir, MaxExact: 64, MaxCIDR: 64})
	if verdict(t, b, "10.77.1.1") != xdpDrop {
		t.Error("entry written while no blocklist was open is not enforced after Open")
	}
}

// TestBlocklistConcurrent blocks and unblocks CIDR entries from several
// goroutines while others read, then checks that every summary bit agrees
// with the tries and the program enforces exactly what is left.
func TestBlocklistConcurrent(t *testing.T) {
	kerneltest.Require(t)
	b := openTestBlocklist(t, BlocklistOptions{})
	const (
		workers = 4
		rounds  = 150
	)
	// Worker w owns 10.(100+w).x.0/24 for x in 0..7, all in one /16.
	prefix := func(w, x int) netip.Prefix {
		return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(100 + w), byte(x), 0}), 24)
	}
	errc := make(chan error, workers+1)
	done := make(chan struct{})
	for w := range workers {
		go func() {
			for r := range rounds {
				x := r % 8
				var err error
				if r%3 == 2 {
					err = b.Unblock(prefix(w, x))
					if errors.Is(err, ErrNotBlocked) {
						err = nil
					}
				} else {
					err = b.Block(prefix(w, x), 0, ReasonDetector)
				}
				if err != nil {
					errc <- err
					return
				}
			}
			errc <- nil
		}()
	}
	go func() {
		for {
			select {
			case <-done:
				errc <- nil
				return
			default:
			}
			if _, err := b.List(); err != nil {
				errc <- err
				return
			}
			if _, err := b.Stats(); err != nil {
				errc <- err
				return
			}
			if _, err := b.GC(); err != nil {
				errc <- err
				return
			}
		}
	}()
	for range workers {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	close(done)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}

	list, err := b.List()
	if err != nil {
		t.Fatal(err)
	}
	left := map[netip.Prefix]bool{}
	for _, e := range list {
		left[e.Prefix] = true
	}
	for w := range workers {
		anyLeft := false
		for x := range 8 {
			p := prefix(w, x)
			anyLeft = anyLeft || left[p]
			want := uint32(xdpPass)
			if left[p] {
				want = xdpDrop
			}
			if got := verdict(t, b, p.Addr().Next().String()); got != want {
				t.Errorf("%s: verdict %d, want %d", p, got, want)
			}
		}
		if got := slotBit(t, b, blocklistBlSlotSetBL_SLOTS_CIDR_V4, prefix(w, 0).Addr()); got != anyLeft {
			t.Errorf("slot of worker %d: %v, want %v", w, got, anyLeft)
		}
	}
}
