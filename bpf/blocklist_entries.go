package bpf

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// ErrFull: a block or allow map is at capacity.
var ErrFull = errors.New("map full")

// lpmMaxSteps mirrors BL_LPM_MAX_STEPS in blocklist.bpf.c: how many expired
// CIDR entries a lookup steps over towards shorter prefixes.
const lpmMaxSteps = 8

// batchChunk bounds the keys and values marshalled per BatchUpdate call.
const batchChunk = 16384

// normalise returns the canonical form of p: zone dropped, IPv4-mapped IPv6
// turned into IPv4 (::ffff:10.0.0.0/104 is 10.0.0.0/8), host bits cleared.
// This is the form stored in the maps and reported by List.
func normalise(p netip.Prefix) (netip.Prefix, error) {
	if !p.IsValid() {
		return netip.Prefix{}, fmt.Errorf("prefix %q: %w", p, ErrInvalidPrefix)
	}
	a, bits := p.Addr().WithZone(""), p.Bits()
	if a.Is4In6() && bits >= 96 {
		a, bits = a.Unmap(), bits-96
	}
	return netip.PrefixFrom(a, bits).Masked(), nil
}

// normaliseAddr is normalise for a single address.
func normaliseAddr(a netip.Addr) (netip.Addr, error) {
	if !a.IsValid() {
		return netip.Addr{}, fmt.Errorf("address %q: %w", a, ErrInvalidPrefix)
	}
	return a.WithZone("").Unmap(), nil
}

func lpmV4(p netip.Prefix) blocklistBlLpmV4Key {
	return blocklistBlLpmV4Key{Prefixlen: uint32(p.Bits()), Addr: p.Addr().As4()}
}

func lpmV6(p netip.Prefix) blocklistBlLpmV6Key {
	return blocklistBlLpmV6Key{Prefixlen: uint32(p.Bits()), Addr: p.Addr().As16()}
}

// locate returns the block map holding normalised prefix p and its key there:
// full-length prefixes live in the exact hashes, never in the tries, so that a
// /32 has exactly one place and the fast path finds it.
func (b *Blocklist) locate(p netip.Prefix) (*ebpf.Map, any) {
	a := p.Addr()
	switch {
	case a.Is4() && p.Bits() == 32:
		return b.exactV4, a.As4()
	case a.Is4():
		return b.cidrV4, lpmV4(p)
	case p.Bits() == 128:
		return b.exactV6, blocklistBlV6Addr{Addr: a.As16()}
	default:
		return b.cidrV6, lpmV6(p)
	}
}

func blockValue(p netip.Prefix, ttl time.Duration, reason Reason, clk clockPair) blocklistBlValue {
	return blocklistBlValue{
		ExpiresNs: clk.deadline(ttl),
		Reason:    uint32(reason),
		Prefixlen: uint8(p.Bits()),
	}
}

// mapFull translates the kernel's "no room" errors (E2BIG from a hash,
// ENOSPC from a trie) into ErrFull.
func mapFull(err error) error {
	if errors.Is(err, unix.E2BIG) || errors.Is(err, unix.ENOSPC) {
		return fmt.Errorf("%w: %w", ErrFull, err)
	}
	return err
}

// Block adds or replaces the entry for p. A full-length prefix (/32, /128)
// goes to the exact map, a shorter one to the CIDR trie; IPv4-mapped IPv6 is
// stored as IPv4. ttl 0 means the entry never expires. Replacing an entry
// resets its hit count.
func (b *Blocklist) Block(p netip.Prefix, ttl time.Duration, reason Reason) error {
	np, err := normalise(p)
	if err != nil {
		return fmt.Errorf("block: %w", err)
	}
	if ttl < 0 {
		return fmt.Errorf("block %s: %w: %s", np, ErrInvalidTTL, ttl)
	}
	clk, err := readClock()
	if err != nil {
		return fmt.Errorf("block %s: %w", np, err)
	}
	m, key := b.locate(np)
	val := blockValue(np, ttl, reason, clk)

	b.writeMu.Lock()
	defer b.writeMu.Unlock()
	var added, raced bool
	if isCIDR(np) {
		added, err = b.trieInsert(m, cidrSlots(np), np, key, &val)
	} else {
		added, raced, err = insert(m, key, &val)
	}
	if raced {
		b.countForget()
	}
	if err != nil {
		return fmt.Errorf("block %s: %w", np, mapFull(err))
	}
	if added {
		b.countAdd(1)
	}
	return nil
}

// isCIDR reports whether normalised p lives in a trie rather than a hash.
func isCIDR(p netip.Prefix) bool { return p.Bits() < p.Addr().BitLen() }

// BlockBatch adds or replaces many entries, with one BatchUpdate per map and
// chunk where the kernel supports it. All entries are validated before any
// is written; on a write error it returns how many were written.
func (b *Blocklist) BlockBatch(entries []BlockEntry) (_ int, err error) {
	clk, err := readClock()
	if err != nil {
		return 0, fmt.Errorf("block batch: %w", err)
	}
	var (
		exact4 batch[[4]byte]
		exact6 batch[blocklistBlV6Addr]
		cidr4  batch[blocklistBlLpmV4Key]
		cidr6  batch[blocklistBlLpmV6Key]
		cidrs  []netip.Prefix
	)
	for i, e := range entries {
		p, err := normalise(e.Prefix)
		if err != nil {
			return 0, fmt.Errorf("block batch: entry %d: %w", i, err)
		}
		if e.TTL < 0 {
			return 0, fmt.Errorf("block batch: entry %d (%s): %w: %s", i, p, ErrInvalidTTL, e.TTL)
		}
		v := blockValue(p, e.TTL, e.Reason, clk)
		if isCIDR(p) {
			cidrs = append(cidrs, p)
		}
		switch _, key := b.locate(p); key := key.(type) {
		case [4]byte:
			exact4.add(key, v)
		case blocklistBlV6Addr:
			exact6.add(key, v)
		case blocklistBlLpmV4Key:
			cidr4.add(key, v)
		case blocklistBlLpmV6Key:
			cidr6.add(key, v)
		}
	}

	b.writeMu.Lock()
	defer b.writeMu.Unlock()
	// Raise the summaries for every new CIDR entry before writing any. If a
	// write fails, recount from the tries: the counts of entries that did
	// not make it in would otherwise keep their bits set for good.
	var sets []blocklistBlSlotSet
	defer func() {
		if err == nil {
			return
		}
		for _, set := range sets {
			if rerr := b.rebuildSlotSet(set); rerr != nil {
				err = errors.Join(err, fmt.Errorf("block batch: %w", rerr))
			}
		}
	}()
	seen := make(map[netip.Prefix]bool, len(cidrs))
	for _, p := range cidrs {
		if seen[p] {
			continue
		}
		seen[p] = true
		m, key := b.locate(p)
		exists, err := b.trieHas(m, p, key)
		if err != nil {
			return 0, fmt.Errorf("block batch: %s: %w", p, err)
		}
		if !exists {
			b.slotAdd(cidrSlots(p), p, 1)
			if !slices.Contains(sets, cidrSlots(p)) {
				sets = append(sets, cidrSlots(p))
			}
		}
	}
	for _, set := range sets {
		if err := b.flushSlots(set); err != nil {
			return 0, fmt.Errorf("block batch: %w", err)
		}
	}
	// The batch interface cannot tell a new key from a replaced one (it
	// takes no BPF_NOEXIST), so the count is learnt again by the next Len.
	b.countForget()
	total := 0
	for _, w := range []func() (int, error){
		func() (int, error) { return exact4.write(b.exactV4) },
		func() (int, error) { return exact6.write(b.exactV6) },
		func() (int, error) { return cidr4.write(b.cidrV4) },
		func() (int, error) { return cidr6.write(b.cidrV6) },
	} {
		n, err := w()
		total += n
		if err != nil {
			return total, fmt.Errorf("block batch: %w", mapFull(err))
		}
	}
	return total, nil
}

// batch collects keys and values bound for one map.
type batch[K any] struct {
	keys []K
	vals []blocklistBlValue
}

func (bt *batch[K]) add(k K, v blocklistBlValue) {
	bt.keys = append(bt.keys, k)
	bt.vals = append(bt.vals, v)
}

// write stores the batch in m, falling back to one update per entry when the
// map type has no batch operations on this kernel.
func (bt *batch[K]) write(m *ebpf.Map) (int, error) {
	done := 0
	for start := 0; start < len(bt.keys); start += batchChunk {
		end := min(start+batchChunk, len(bt.keys))
		n, err := m.BatchUpdate(bt.keys[start:end], bt.vals[start:end], nil)
		done += n
		if errors.Is(err, ebpf.ErrNotSupported) {
			for i := start + n; i < end; i++ {
				if err := m.Update(&bt.keys[i], &bt.vals[i], ebpf.UpdateAny); err != nil {
					return done, fmt.Errorf("update %s: %w", m, err)
				}
				done++
			}
			continue
		}
		if err != nil {
			return done, fmt.Errorf("batch update %s: %w", m, err)
		}
	}
	return done, nil
}

// Unblock deletes the entry for exactly p (normalised as in Block). It does
// not touch other entries that cover p. Returns ErrNotBlocked when absent.
func (b *Blocklist) Unblock(p netip.Prefix) error {
	np, err := normalise(p)
	if err != nil {
		return fmt.Errorf("unblock: %w", err)
	}
	m, key := b.locate(np)
	b.writeMu.Lock()
	defer b.writeMu.Unlock()
	deleted := false
	if isCIDR(np) {
		deleted, err = b.trieDelete(m, cidrSlots(np), np, key)
	} else {
		err = m.Delete(key)
		deleted = err == nil
	}
	if deleted {
		b.countAdd(-1)
	}
	if err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("unblock %s: %w", np, ErrNotBlocked)
		}
		return fmt.Errorf("unblock %s: %w", np, err)
	}
	return nil
}

// Lookup returns the entry the kernel applies to address a: a live exact
// entry, else the longest live CIDR entry. The allowlist is not consulted:
// an allowlisted address can have an entry and still pass (see Allowed).
func (b *Blocklist) Lookup(a netip.Addr) (Entry, bool, error) {
	na, err := normaliseAddr(a)
	if err != nil {
		return Entry{}, false, fmt.Errorf("lookup: %w", err)
	}
	clk, err := readClock()
	if err != nil {
		return Entry{}, false, fmt.Errorf("lookup %s: %w", na, err)
	}
	full := netip.PrefixFrom(na, na.BitLen())
	m, key := b.locate(full)
	var v blocklistBlValue
	switch err := m.Lookup(key, &v); {
	case err == nil && !clk.expired(v.ExpiresNs):
		return makeEntry(full, v, clk), true, nil
	case err != nil && !errors.Is(err, ebpf.ErrKeyNotExist):
		return Entry{}, false, fmt.Errorf("lookup %s: %w", na, err)
	}

	trie := b.cidrV6
	if na.Is4() {
		trie = b.cidrV4
	}
	bits := na.BitLen()
	for range lpmMaxSteps {
		var key any = lpmV6(netip.PrefixFrom(na, bits))
		if na.Is4() {
			key = lpmV4(netip.PrefixFrom(na, bits))
		}
		err := trie.Lookup(key, &v)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return Entry{}, false, nil
		}
		if err != nil {
			return Entry{}, false, fmt.Errorf("lookup %s: %w", na, err)
		}
		p := netip.PrefixFrom(na, int(v.Prefixlen)).Masked()
		if !clk.expired(v.ExpiresNs) {
			return makeEntry(p, v, clk), true, nil
		}
		if v.Prefixlen == 0 || int(v.Prefixlen) > bits {
			break
		}
		bits = int(v.Prefixlen) - 1
	}
	return Entry{}, false, nil
}

func makeEntry(p netip.Prefix, v blocklistBlValue, clk clockPair) Entry {
	return Entry{Prefix: p, Expires: clk.wallTime(v.ExpiresNs), Reason: Reason(v.Reason), Hits: v.Hits}
}

// List returns every entry, expired ones included, sorted by prefix.
func (b *Blocklist) List() ([]Entry, error) {
	clk, err := readClock()
	if err != nil {
		return nil, fmt.Errorf("list: %w", err)
	}
	var out []Entry
	add := func(p netip.Prefix, v *blocklistBlValue) bool {
		out = append(out, makeEntry(p, *v, clk))
		return true
	}
	if err := b.walk(add); err != nil {
		return nil, fmt.Errorf("list: %w", err)
	}
	slices.SortFunc(out, func(x, y Entry) int { return comparePrefix(x.Prefix, y.Prefix) })
	return out, nil
}

func comparePrefix(x, y netip.Prefix) int {
	if c := x.Addr().Compare(y.Addr()); c != 0 {
		return c
	}
	return x.Bits() - y.Bits()
}

// walk calls fn for every entry of the four block maps until fn returns false.
func (b *Blocklist) walk(fn func(netip.Prefix, *blocklistBlValue) bool) error {
	if err := iterate(b.exactV4, func(k [4]byte, v *blocklistBlValue) bool {
		return fn(netip.PrefixFrom(netip.AddrFrom4(k), 32), v)
	}); err != nil {
		return err
	}
	if err := iterate(b.exactV6, func(k blocklistBlV6Addr, v *blocklistBlValue) bool {
		return fn(netip.PrefixFrom(netip.AddrFrom16(k.Addr), 128), v)
	}); err != nil {
		return err
	}
	if err := iterate(b.cidrV4, func(k blocklistBlLpmV4Key, v *blocklistBlValue) bool {
		return fn(v4KeyPrefix(k), v)
	}); err != nil {
		return err
	}
	return iterate(b.cidrV6, func(k blocklistBlLpmV6Key, v *blocklistBlValue) bool {
		return fn(v6KeyPrefix(k), v)
	})
}

// walkChunk is how many elements one batch lookup returns.
const walkChunk = 4096

// iterate calls fn for every element of m until fn returns false. It reads
// in batches where the map type allows (one syscall per walkChunk elements
// instead of two per element: a 1M-entry hash is read in well under a
// second) and falls back to key-by-key iteration.
func iterate[K, V any](m *ebpf.Map, fn func(K, *V) bool) error {
	var (
		cursor ebpf.MapBatchCursor
		keys   = make([]K, walkChunk)
		vals   = make([]V, walkChunk)
		first  = true
	)
	for {
		n, err := m.BatchLookup(&cursor, keys, vals, nil)
		if first && n == 0 && errors.Is(err, ebpf.ErrNotSupported) {
			break
		}
		first = false
		for i := range n {
			if !fn(keys[i], &vals[i]) {
				return nil
			}
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("batch lookup %s: %w", m, err)
		}
	}

	var (
		k K
		v V
	)
	it := m.Iterate()
	for it.Next(&k, &v) {
		if !fn(k, &v) {
			return nil
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("iterate %s: %w", m, err)
	}
	return nil
}

// GC deletes expired entries and returns how many it deleted. The kernel
// already ignores them; GC frees their room and lets a shorter live CIDR
// entry take over without the bounded step-over.
func (b *Blocklist) GC() (_ int, err error) {
	b.writeMu.Lock()
	defer b.writeMu.Unlock()
	clk, err := readClock()
	if err != nil {
		return 0, fmt.Errorf("gc: %w", err)
	}
	var dead []netip.Prefix
	seen := 0
	if err := b.walk(func(p netip.Prefix, v *blocklistBlValue) bool {
		seen++
		if clk.expired(v.ExpiresNs) {
			dead = append(dead, p)
		}
		return true
	}); err != nil {
		return 0, fmt.Errorf("gc: %w", err)
	}
	n, gone := 0, 0 // deleted here; found deleted already
	dirty := map[blocklistBlSlotSet]bool{}
	defer func() {
		for set := range dirty {
			if ferr := b.flushSlots(set); ferr != nil {
				err = errors.Join(err, fmt.Errorf("gc: %w", ferr))
			}
		}
	}()
	for _, p := range dead {
		m, key := b.locate(p)
		if err := m.Delete(key); err != nil {
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				gone++
				continue
			}
			b.countForget()
			return n, fmt.Errorf("gc: delete %s: %w", p, err)
		}
		if isCIDR(p) {
			b.slotAdd(cidrSlots(p), p, -1)
			dirty[cidrSlots(p)] = true
		}
		n++
	}
	b.countSet(seen - n - gone)
	return n, nil
}

// Capacity returns how many block entries fit: the sum over the exact maps
// and CIDR tries of both families.
func (b *Blocklist) Capacity() int {
	n := 0
	for _, m := range []*ebpf.Map{b.exactV4, b.exactV6, b.cidrV4, b.cidrV6} {
		n += int(m.MaxEntries())
	}
	return n
}

// Allow puts p on the allowlist: no block entry, present or future, drops
// or refuses an address inside p.
func (b *Blocklist) Allow(p netip.Prefix) error {
	np, err := normalise(p)
	if err != nil {
		return fmt.Errorf("allow: %w", err)
	}
	m, key := b.allowKey(np)
	b.writeMu.Lock()
	defer b.writeMu.Unlock()
	if _, err := b.trieInsert(m, allowSlots(np), np, key, &blocklistBlAllowValue{Prefixlen: uint8(np.Bits())}); err != nil {
		return fmt.Errorf("allow %s: %w", np, mapFull(err))
	}
	return nil
}

// Disallow removes exactly p from the allowlist; ErrNotAllowed when absent.
func (b *Blocklist) Disallow(p netip.Prefix) error {
	np, err := normalise(p)
	if err != nil {
		return fmt.Errorf("disallow: %w", err)
	}
	m, key := b.allowKey(np)
	b.writeMu.Lock()
	defer b.writeMu.Unlock()
	if _, err := b.trieDelete(m, allowSlots(np), np, key); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("disallow %s: %w", np, ErrNotAllowed)
		}
		return fmt.Errorf("disallow %s: %w", np, err)
	}
	return nil
}

func (b *Blocklist) allowKey(p netip.Prefix) (*ebpf.Map, any) {
	if p.Addr().Is4() {
		return b.allowV4, lpmV4(p)
	}
	return b.allowV6, lpmV6(p)
}

// Allowed returns the allowlist, sorted.
func (b *Blocklist) Allowed() ([]netip.Prefix, error) {
	var out []netip.Prefix
	if err := iterate(b.allowV4, func(k blocklistBlLpmV4Key, _ *blocklistBlAllowValue) bool {
		out = append(out, v4KeyPrefix(k))
		return true
	}); err != nil {
		return nil, fmt.Errorf("allowed: %w", err)
	}
	if err := iterate(b.allowV6, func(k blocklistBlLpmV6Key, _ *blocklistBlAllowValue) bool {
		out = append(out, v6KeyPrefix(k))
		return true
	}); err != nil {
		return nil, fmt.Errorf("allowed: %w", err)
	}
	slices.SortFunc(out, comparePrefix)
	return out, nil
}

// Stats reads the counters, summed over CPUs.
func (b *Blocklist) Stats() (Stats, error) {
	var s Stats
	for idx, dst := range map[blocklistBlCounter]*uint64{
		blocklistBlCounterBL_CNT_PASS:             &s.Passed,
		blocklistBlCounterBL_CNT_DROP:             &s.Dropped,
		blocklistBlCounterBL_CNT_DROP_EXACT:       &s.DroppedExact,
		blocklistBlCounterBL_CNT_DROP_CIDR:        &s.DroppedCIDR,
		blocklistBlCounterBL_CNT_EXPIRED_PASS:     &s.ExpiredPassed,
		blocklistBlCounterBL_CNT_ALLOWLISTED_PASS: &s.AllowlistedPassed,
		blocklistBlCounterBL_CNT_NON_IP:           &s.NonIP,
		blocklistBlCounterBL_CNT_MALFORMED:        &s.Malformed,
		blocklistBlCounterBL_CNT_EGRESS_REFUSED:   &s.EgressRefused,
	} {
		var perCPU []uint64
		if err := b.counters.Lookup(uint32(idx), &perCPU); err != nil {
			return Stats{}, fmt.Errorf("stats: counter %d: %w", idx, err)
		}
		for _, v := range perCPU {
			*dst += v
		}
	}
	return s, nil
}
