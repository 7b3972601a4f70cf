package detector

import (
	"math/rand/v2"

	"github.com/connwarden/connwarden/rules"
)

// table is one rule's bounded key index: a Go map from key to a slot number,
// plus a doubly linked recency list threaded through slot-indexed slices.
// Per-key detection state lives in the detection's own slot-indexed slices,
// so that the table knows nothing about what is tracked.
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
	idx        map[uint64]int32 // key hash -> slot; keys[slot] holds the key itself
	seed       uint64
	by         rules.KeyFields // the fields keys use, so hashing skips the rest
	keys       []groupKey
	last       []uint64 // last event time per slot
	prev, next []int32  // recency list; newest at head
	head, tail int32
	free       []int32
	max        int

	evictions uint64
	expired   uint64
}

const nilSlot = -1

func newTable(max int, by rules.KeyFields) *table {
	return &table{idx: make(map[uint64]int32), seed: rand.Uint64() | 1, by: by, head: nilSlot, tail: nilSlot, max: max}
}

func (t *table) len() int { return len(t.idx) }

// get returns k's slot, inserting it when absent (fresh reports that, and
// the caller must reset the slot's detection state). It marks the slot as
// most recently used at time now.
//
// The map is keyed by a 64-bit seeded hash of the key rather than by the
// 64-byte key: hashing and comparing the full struct dominated the hot path.
// The slot keeps the full key, so a hash collision is detected, and the
// older key gives way (its state is reset, as if evicted): with a random
// seed per table that costs one key's state with probability about
// keys/2^64, and an attacker cannot aim for it.
func (t *table) get(k groupKey, now uint64) (slot int32, fresh bool) {
	h := k.hash(t.by, t.seed)
	if s, ok := t.idx[h]; ok {
		t.last[s] = now
		if t.head != s {
			t.unlink(s)
			t.pushHead(s)
		}
		if t.keys[s] == k {
			return s, false
		}
		t.keys[s] = k // collision: the slot now belongs to k
		t.evictions++
		return s, true
	}
	switch {
	case len(t.free) > 0:
		slot = t.free[len(t.free)-1]
		t.free = t.free[:len(t.free)-1]
	case len(t.keys) < t.max:
		slot = int32(len(t.keys))
		t.keys = append(t.keys, groupKey{})
		t.last = append(t.last, 0)
		t.prev = append(t.prev, nilSlot)
		t.next = append(t.next, nilSlot)
	default:
		slot = t.tail
		t.unlink(slot)
		delete(t.idx, t.keys[slot].hash(t.by, t.seed))
		t.evictions++
	}
	t.keys[slot] = k
	t.last[slot] = now
	t.idx[h] = slot
	t.pushHead(slot)
	return slot, true
}

// expire drops up to limit keys not seen for longer than idle before now.
func (t *table) expire(now, idle uint64, limit int) {
	for ; limit > 0 && t.tail != nilSlot; limit-- {
		s := t.tail
		if now <= t.last[s] || now-t.last[s] <= idle {
			return
		}
		t.remove(s)
		t.expired++
	}
}

func (t *table) remove(s int32) {
	t.unlink(s)
	delete(t.idx, t.keys[s].hash(t.by, t.seed))
	t.free = append(t.free, s)
}

// shrink evicts least recently used keys until at most max remain (after a
// reload lowered the bound).
func (t *table) shrink(max int) {
	t.max = max
	for len(t.idx) > max {
		t.remove(t.tail)
		t.evictions++
	}
}

func (t *table) unlink(s int32) {
	p, n := t.prev[s], t.next[s]
	if p != nilSlot {
		t.next[p] = n
	} else {
		t.head = n
	}
	if n != nilSlot {
		t.prev[n] = p
	} else {
		t.tail = p
	}
	t.prev[s], t.next[s] = nilSlot, nilSlot
}

func (t *table) pushHead(s int32) {
	t.prev[s] = nilSlot
	t.next[s] = t.head
	if t.head != nilSlot {
		t.prev[t.head] = s
	}
	t.head = s
	if t.tail == nilSlot {
		t.tail = s
	}
}
