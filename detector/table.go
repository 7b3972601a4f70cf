package detector

import (
	"math/rand/v2"

	"github.com/connwarden/connwarden/rules"
)

// table is one rule's bounded key index: a Go map from a key's hash to its
// slot, plus a doubly linked recency list threaded through a slot-indexed
// slice. Per-key detection state lives in the detection's own slot-indexed
// slices, so the table knows nothing about what is tracked.
//
// Keys are not stored: a key is identified by two independent seeded 64-bit
// hashes of the fields its rule groups by. The first indexes the map; the
// map's value holds the slot and 32 bits of the second, checked on every
// lookup. A lookup thus touches the map and one 24-byte slot record instead
// of a 64-byte key, which is what the hot path spends its time on. Two
// keys are confused only if all 96 bits collide, with seeds drawn per table
// so an attacker cannot aim for it; if the first hash alone collides, the
// older key gives way (its state is reset, counted as an eviction).
//
// Bounds: at most max keys. Inserting into a full table evicts the least
// recently used key (counted in evictions). Keys idle for longer than the
// rule's window are dropped a few at a time from the old end of the list
// (counted in expired), so memory follows the live key count without any
// sweep over the map.
//
// Slots are reused after eviction or expiry; once the table has grown to its
// working size, get allocates nothing.
type table struct {
	idx         map[uint64]uint64 // hash -> slot | check<<32
	slots       []slotRec
	head, tail  int32
	free        []int32
	max         int
	seed, seed2 uint64
	by          rules.KeyFields // the fields keys use, so hashing skips the rest
	live        int
	evictions   uint64
	expired     uint64
}

type slotRec struct {
	hash       uint64 // the map key, to delete the slot's entry
	last       uint64 // last event time
	prev, next int32  // recency list; newest at head
}

const nilSlot = -1

func newTable(max int, by rules.KeyFields) *table {
	return &table{
		idx: make(map[uint64]uint64), seed: rand.Uint64() | 1, seed2: rand.Uint64() | 1,
		by: by, head: nilSlot, tail: nilSlot, max: max,
	}
}

func (t *table) len() int { return t.live }

// get returns k's slot, inserting it when absent (fresh reports that, and
// the caller must reset the slot's detection state). It marks the slot as
// most recently used at time now.
func (t *table) get(k groupKey, now uint64) (slot int32, fresh bool) {
	h, h2 := k.hash2(t.by, t.seed, t.seed2)
	check := uint32(h2)
	if v, ok := t.idx[h]; ok {
		s := int32(uint32(v))
		t.slots[s].last = now
		if t.head != s {
			t.unlink(s)
			t.pushHead(s)
		}
		if uint32(v>>32) == check {
			return s, false
		}
		t.idx[h] = uint64(uint32(s)) | uint64(check)<<32 // collision: the slot now belongs to k
		t.evictions++
		return s, true
	}
	switch {
	case len(t.free) > 0:
		slot = t.free[len(t.free)-1]
		t.free = t.free[:len(t.free)-1]
	case len(t.slots) < t.max:
		slot = int32(len(t.slots))
		t.slots = append(t.slots, slotRec{})
	default:
		slot = t.tail
		t.unlink(slot)
		delete(t.idx, t.slots[slot].hash)
		t.live--
		t.evictions++
	}
	t.slots[slot] = slotRec{hash: h, last: now, prev: nilSlot, next: nilSlot}
	t.idx[h] = uint64(uint32(slot)) | uint64(check)<<32
	t.live++
	t.pushHead(slot)
	return slot, true
}

// expire drops up to limit keys not seen for longer than idle before now.
func (t *table) expire(now, idle uint64, limit int) {
	for ; limit > 0 && t.tail != nilSlot; limit-- {
		s := t.tail
		last := t.slots[s].last
		if now <= last || now-last <= idle {
			return
		}
		t.remove(s)
		t.expired++
	}
}

func (t *table) remove(s int32) {
	t.unlink(s)
	delete(t.idx, t.slots[s].hash)
	t.live--
	t.free = append(t.free, s)
}

// shrink evicts least recently used keys until at most max remain (after a
// reload lowered the bound).
func (t *table) shrink(max int) {
	t.max = max
	for t.live > max {
		t.remove(t.tail)
		t.evictions++
	}
}

func (t *table) unlink(s int32) {
	r := &t.slots[s]
	p, n := r.prev, r.next
	if p != nilSlot {
		t.slots[p].next = n
	} else {
		t.head = n
	}
	if n != nilSlot {
		t.slots[n].prev = p
	} else {
		t.tail = p
	}
	r.prev, r.next = nilSlot, nilSlot
}

func (t *table) pushHead(s int32) {
	r := &t.slots[s]
	r.prev, r.next = nilSlot, t.head
	if t.head != nilSlot {
		t.slots[t.head].prev = s
	}
	t.head = s
	if t.tail == nilSlot {
		t.tail = s
	}
}
