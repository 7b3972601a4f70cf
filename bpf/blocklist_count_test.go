package bpf

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/connwarden/connwarden/internal/kerneltest"
)

// walkLen counts the block entries the slow way, as Len once did.
func walkLen(t testing.TB, b *Blocklist) int {
	t.Helper()
	n := 0
	if err := b.walk(func(netip.Prefix, *blocklistBlValue) bool { n++; return true }); err != nil {
		t.Fatalf("walk: %v", err)
	}
	return n
}

// checkLen fails unless Len, the kept count, and a walk of the maps agree
// on want.
func checkLen(t testing.TB, b *Blocklist, step string, want int) {
	t.Helper()
	got, err := b.Len()
	if err != nil {
		t.Fatalf("%s: Len: %v", step, err)
	}
	if walked := walkLen(t, b); got != want || walked != want {
		t.Errorf("%s: Len = %d, maps hold %d; want %d", step, got, walked, want)
	}
}

func v4(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 50, byte(i >> 8), byte(i)}), 32)
}

// Every writer keeps the count: new keys count, replaced ones do not, in
// both families and in the exact maps and the tries; expired entries count
// until GC deletes them.
func TestBlocklistLenKept(t *testing.T) {
	kerneltest.Require(t)
	b := openTestBlocklist(t, BlocklistOptions{MaxExact: 1 << 15, MaxCIDR: 1024})
	checkLen(t, b, "empty", 0)

	for _, s := range []string{"10.50.0.1", "fd00:50::1", "10.51.0.0/16", "fd00:51::/48"} {
		if err := b.Block(mustPrefix(t, s), time.Hour, ReasonManual); err != nil {
			t.Fatal(err)
		}
	}
	checkLen(t, b, "four blocks", 4)
	for _, s := range []string{"10.50.0.1", "::ffff:10.50.0.1", "fd00:50::1", "10.51.0.0/16", "fd00:51::/48"} {
		if err := b.Block(mustPrefix(t, s), 2*time.Hour, ReasonDetector); err != nil {
			t.Fatal(err)
		}
	}
	checkLen(t, b, "the same four again", 4)

	if err := b.Unblock(mustPrefix(t, "10.51.0.0/16")); err != nil {
		t.Fatal(err)
	}
	if err := b.Unblock(mustPrefix(t, "fd00:50::1")); err != nil {
		t.Fatal(err)
	}
	if err := b.Unblock(mustPrefix(t, "10.50.0.99")); !errors.Is(err, ErrNotBlocked) {
		t.Fatalf("Unblock of an absent entry: %v, want ErrNotBlocked", err)
	}
	checkLen(t, b, "two unblocked", 2)

	// A batch across more than one chunk, with keys already present in
	// the middle of chunks and twice in the batch itself, and CIDR
	// entries old and new.
	for _, i := range []int{5, batchChunk + 3} {
		if err := b.Block(v4(i), 0, ReasonManual); err != nil {
			t.Fatal(err)
		}
	}
	checkLen(t, b, "two more", 4)
	var entries []BlockEntry
	for i := range batchChunk + 100 {
		entries = append(entries, BlockEntry{Prefix: v4(i), Reason: ReasonFeed})
	}
	entries = append(entries,
		BlockEntry{Prefix: v4(7)},                                     // twice in the batch
		BlockEntry{Prefix: mustPrefix(t, "fd00:51::/48")},             // present
		BlockEntry{Prefix: mustPrefix(t, "10.52.0.0/24")},             // new
		BlockEntry{Prefix: mustPrefix(t, "10.52.0.0/24")},             // twice
		BlockEntry{Prefix: mustPrefix(t, "10.50.0.1"), TTL: 1},        // present, expires at once
		BlockEntry{Prefix: mustPrefix(t, "fd00:53::1"), TTL: 1},       // new, expires at once
		BlockEntry{Prefix: mustPrefix(t, "10.53.0.0/16"), TTL: 1},     // new, expires at once
		BlockEntry{Prefix: mustPrefix(t, "fd00:54::/64"), TTL: 1},     // new, expires at once
		BlockEntry{Prefix: mustPrefix(t, "fd00:55::1"), TTL: 0},       // new
		BlockEntry{Prefix: mustPrefix(t, "::ffff:10.50.0.2"), TTL: 0}, // v4(2), present in the batch
	)
	n, err := b.BlockBatch(entries)
	if err != nil || n != len(entries) {
		t.Fatalf("BlockBatch = %d, %v; want %d", n, err, len(entries))
	}
	// 10.50.0.1 (from Block) is v4(1), so the exact v4 keys are the
	// batch's range; plus fd00:51::/48, 10.52.0.0/24, fd00:53::1,
	// 10.53.0.0/16, fd00:54::/64 and fd00:55::1.
	want := batchChunk + 100 + 6
	checkLen(t, b, "batch", want)

	time.Sleep(10 * time.Millisecond) // the 1ns TTLs have passed
	checkLen(t, b, "expired entries still count", want)
	deleted, err := b.GC()
	if err != nil || deleted != 4 {
		t.Fatalf("GC = %d, %v; want 4", deleted, err)
	}
	checkLen(t, b, "after GC", want-4)
}

// A reopened blocklist counts what the pins hold and keeps counting.
func TestBlocklistLenAdopted(t *testing.T) {
	kerneltest.Require(t)
	dir := testPinDir(t)
	b := openTestBlocklist(t, BlocklistOptions{PinDir: dir})
	for i := range 10 {
		if err := b.Block(v4(i), time.Hour, ReasonFeed); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Block(mustPrefix(t, "10.51.0.0/16"), time.Hour, ReasonFeed); err != nil {
		t.Fatal(err)
	}
	checkLen(t, b, "first agent", 11)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}

	b = openTestBlocklist(t, BlocklistOptions{PinDir: dir})
	checkLen(t, b, "adopted", 11)
	if err := b.Block(v4(10), time.Hour, ReasonFeed); err != nil {
		t.Fatal(err)
	}
	if err := b.Unblock(v4(0)); err != nil {
		t.Fatal(err)
	}
	checkLen(t, b, "adopted, then written", 11)
}

// Another process writing the same pins (unsupported, but possible) throws
// the count off, since Len no longer walks; GC sets it right.
func TestBlocklistLenMendedByGC(t *testing.T) {
	kerneltest.Require(t)
	dir := testPinDir(t)
	b := openTestBlocklist(t, BlocklistOptions{PinDir: dir})
	other := openTestBlocklist(t, BlocklistOptions{PinDir: dir})
	if err := b.Block(v4(1), time.Hour, ReasonFeed); err != nil {
		t.Fatal(err)
	}
	checkLen(t, b, "own write", 1)
	if err := other.Block(v4(2), time.Hour, ReasonFeed); err != nil {
		t.Fatal(err)
	}
	// Len keeps its count rather than walking: it cannot see the other
	// writer's entry until a walk.
	if n, err := b.Len(); err != nil || n != 1 {
		t.Errorf("Len after another writer's block = %d, %v; want the kept 1", n, err)
	}
	if _, err := b.GC(); err != nil {
		t.Fatal(err)
	}
	checkLen(t, b, "after GC", 2)
}

// BlockBatch forgets the count and the next Len learns it again, also when
// the batch fails part way with entries in.
func TestBlocklistLenAfterFailedBatch(t *testing.T) {
	kerneltest.Require(t)
	b := openTestBlocklist(t, BlocklistOptions{MaxExact: 64, MaxCIDR: 64})
	checkLen(t, b, "empty", 0)
	var entries []BlockEntry
	for i := range 100 {
		entries = append(entries, BlockEntry{Prefix: v4(i)})
	}
	n, err := b.BlockBatch(entries)
	if !errors.Is(err, ErrFull) {
		t.Fatalf("BlockBatch beyond capacity = %d, %v; want ErrFull", n, err)
	}
	checkLen(t, b, "after the failed batch", walkLen(t, b))
	if got := walkLen(t, b); got != n {
		t.Errorf("BlockBatch reported %d written, the map holds %d", n, got)
	}
	if err := b.Block(v4(200), 0, ReasonManual); !errors.Is(err, ErrFull) {
		t.Fatalf("Block into a full map: %v, want ErrFull", err)
	}
	if err := b.Block(v4(0), 0, ReasonManual); err != nil {
		t.Fatalf("Block replacing an entry of a full map: %v", err)
	}
	checkLen(t, b, "full", n)
}

// BenchmarkBlocklistLen compares Len, which keeps its count, with the walk
// of the maps it used to make, at 100k exact entries.
//
//	go test -run '^$' -bench BenchmarkBlocklistLen ./bpf/
func BenchmarkBlocklistLen(b *testing.B) {
	kerneltest.Require(b)
	const n = 100_000
	bl := openTestBlocklist(b, BlocklistOptions{MaxExact: 1 << 17})
	entries := make([]BlockEntry, n)
	for i := range entries {
		entries[i] = BlockEntry{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 32)}
	}
	if got, err := bl.BlockBatch(entries); err != nil || got != n {
		b.Fatalf("BlockBatch = %d, %v", got, err)
	}
	b.Run("kept", func(b *testing.B) {
		for b.Loop() {
			if got, err := bl.Len(); err != nil || got != n {
				b.Fatalf("Len = %d, %v", got, err)
			}
		}
	})
	b.Run("walk", func(b *testing.B) {
		for b.Loop() {
			if got := walkLen(b, bl); got != n {
				b.Fatalf("walk = %d", got)
			}
		}
	})
}
