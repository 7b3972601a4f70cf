package bpf

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
)

// The slot summaries (bl_slots in blocklist.bpf.c) hold one bit per /16 of
// each trie's address space, set when any entry overlaps that /16; the
// programs skip a trie whose bit is clear. Correctness rests on one rule:
// a bit is never clear while an entry overlaps its /16. So bits are set
// before an entry is inserted and cleared only after it is deleted.
//
// This process keeps, per set, how many entries overlap each /16, rebuilt
// from the tries at open. It assumes it is the only writer of the pins while
// it runs (the agent owns them; other tools go through it).

const slotCount = 1 << 16

// slotSpan returns the first /16 slot prefix p overlaps and how many.
func slotSpan(p netip.Prefix) (first, n int) {
	var top int
	if a := p.Addr(); a.Is4() {
		b := a.As4()
		top = int(b[0])<<8 | int(b[1])
	} else {
		b := a.As16()
		top = int(b[0])<<8 | int(b[1])
	}
	if p.Bits() >= 16 {
		return top, 1
	}
	n = 1 << (16 - p.Bits())
	return top &^ (n - 1), n
}

func cidrSlots(p netip.Prefix) blocklistBlSlotSet {
	if p.Addr().Is4() {
		return blocklistBlSlotSetBL_SLOTS_CIDR_V4
	}
	return blocklistBlSlotSetBL_SLOTS_CIDR_V6
}

func allowSlots(p netip.Prefix) blocklistBlSlotSet {
	if p.Addr().Is4() {
		return blocklistBlSlotSetBL_SLOTS_ALLOW_V4
	}
	return blocklistBlSlotSetBL_SLOTS_ALLOW_V6
}

// slotAdd adds delta to the counts of the slots p overlaps. writeMu held.
func (b *Blocklist) slotAdd(set blocklistBlSlotSet, p netip.Prefix, delta int) {
	counts := b.slotCounts[set]
	if counts == nil {
		counts = make([]uint32, slotCount)
		b.slotCounts[set] = counts
	}
	first, n := slotSpan(p)
	for i := first; i < first+n; i++ {
		counts[i] = uint32(int(counts[i]) + delta)
	}
}

// flushSlots writes the bitmap of set from its counts. writeMu held.
func (b *Blocklist) flushSlots(set blocklistBlSlotSet) error {
	var bits blocklistBlSlotBits
	for i, c := range b.slotCounts[set] {
		if c > 0 {
			bits.Words[i>>6] |= 1 << (i & 63)
		}
	}
	if err := b.slots.Update(uint32(set), &bits, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write slot summary %d: %w", set, err)
	}
	return nil
}

// rebuildSlots recounts every set from its trie and writes the bitmaps.
func (b *Blocklist) rebuildSlots() error {
	b.writeMu.Lock()
	defer b.writeMu.Unlock()
	for set := range blocklistBlSlotSetBL_SLOTS_MAX {
		if err := b.rebuildSlotSet(set); err != nil {
			return err
		}
	}
	return nil
}

// rebuildSlotSet recounts one set from its trie. writeMu held.
func (b *Blocklist) rebuildSlotSet(set blocklistBlSlotSet) error {
	b.slotCounts[set] = make([]uint32, slotCount)
	add := func(p netip.Prefix) bool {
		b.slotAdd(set, p, 1)
		return true
	}
	var err error
	switch set {
	case blocklistBlSlotSetBL_SLOTS_CIDR_V4:
		err = iterate(b.cidrV4, func(k blocklistBlLpmV4Key, _ *blocklistBlValue) bool { return add(v4KeyPrefix(k)) })
	case blocklistBlSlotSetBL_SLOTS_CIDR_V6:
		err = iterate(b.cidrV6, func(k blocklistBlLpmV6Key, _ *blocklistBlValue) bool { return add(v6KeyPrefix(k)) })
	case blocklistBlSlotSetBL_SLOTS_ALLOW_V4:
		err = iterate(b.allowV4, func(k blocklistBlLpmV4Key, _ *blocklistBlAllowValue) bool { return add(v4KeyPrefix(k)) })
	case blocklistBlSlotSetBL_SLOTS_ALLOW_V6:
		err = iterate(b.allowV6, func(k blocklistBlLpmV6Key, _ *blocklistBlAllowValue) bool { return add(v6KeyPrefix(k)) })
	}
	if err != nil {
		return fmt.Errorf("rebuild slot summary %d: %w", set, err)
	}
	return b.flushSlots(set)
}

func v4KeyPrefix(k blocklistBlLpmV4Key) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4(k.Addr), int(k.Prefixlen))
}

func v6KeyPrefix(k blocklistBlLpmV6Key) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom16(k.Addr), int(k.Prefixlen))
}

// trieHas reports whether trie m holds exactly the key of prefix p. An LPM
// lookup returns the longest entry covering the key, which may be shorter;
// the prefixlen stored in every value tells which one it was.
func (b *Blocklist) trieHas(m *ebpf.Map, p netip.Prefix, key any) (bool, error) {
	var (
		prefixlen uint8
		err       error
	)
	if m == b.allowV4 || m == b.allowV6 {
		var v blocklistBlAllowValue
		err, prefixlen = m.Lookup(key, &v), v.Prefixlen
	} else {
		var v blocklistBlValue
		err, prefixlen = m.Lookup(key, &v), v.Prefixlen
	}
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return int(prefixlen) == p.Bits(), nil
}

// trieInsert adds or replaces the entry key (prefix p) of trie m, whose
// summary is set, and reports whether the key is new: for a new key the slot
// bits go up before the entry does. writeMu held.
func (b *Blocklist) trieInsert(m *ebpf.Map, set blocklistBlSlotSet, p netip.Prefix, key, val any) (added bool, err error) {
	exists, err := b.trieHas(m, p, key)
	if err != nil {
		return false, err
	}
	if !exists {
		b.slotAdd(set, p, 1)
		if err := b.flushSlots(set); err != nil {
			b.slotAdd(set, p, -1)
			return false, err
		}
	}
	if err := m.Update(key, val, ebpf.UpdateAny); err != nil {
		if !exists {
			b.slotAdd(set, p, -1)
			err = errors.Join(err, b.flushSlots(set))
		}
		return false, err
	}
	return !exists, nil
}

// trieDelete deletes the entry key (prefix p) of trie m, then lowers its slot
// bits; deleted reports whether the entry went, even when the bits could not
// be written. writeMu held.
func (b *Blocklist) trieDelete(m *ebpf.Map, set blocklistBlSlotSet, p netip.Prefix, key any) (deleted bool, err error) {
	if err := m.Delete(key); err != nil {
		return false, err
	}
	b.slotAdd(set, p, -1)
	return true, b.flushSlots(set)
}
