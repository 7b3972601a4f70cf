// Package lru is the bounded, recency-ordered table that graph and
// statemachine keep their per-event state in: a Go map from key to slot, a
// slab of entries, and an intrusive doubly linked list threaded through the
// slab in least-recently-used order.
//
// It exists because the hot path must not allocate: entries live in one slice
// that grows only up to the capacity and is then reused through a free list,
// and the list links are slot indices, not pointers. (gods' linked lists and
// trees allocate a node per insert and box values in interface{}, which is why
// they are used only off the hot path.)
//
// Slots are stable while an entry lives, so callers may keep a slot as a
// handle (for example an edge naming its two node slots), provided they drop
// it when the entry is removed or evicted; the eviction callback is the place
// to do that. Not safe for concurrent use.
package lru

import "iter"

// Nil is the slot value meaning "no entry".
const Nil int32 = -1

type entry[K comparable, V any] struct {
	key        K
	val        V
	prev, next int32 // towards the newer / older end; Nil at the ends
	live       bool
}

// Map is a fixed-capacity map ordered by recency of Touch or Insert.
type Map[K comparable, V any] struct {
	index     map[K]int32
	ents      []entry[K, V]
	newest    int32
	oldest    int32
	free      int32 // free list threaded through next
	n         int
	capacity  int
	evictions uint64
	onEvict   func(slot int32)
}

// initialAlloc bounds what New reserves before entries arrive, so a large
// capacity costs memory only as it is used.
const initialAlloc = 1024

// New returns a Map holding at most capacity entries (capacity >= 1). When an
// Insert finds the map full, the least recently used entry is evicted: onEvict
// (if not nil) is called with its slot while its key and value are still
// readable, then the slot is reused.
func New[K comparable, V any](capacity int, onEvict func(slot int32)) *Map[K, V] {
	if capacity < 1 {
		capacity = 1
	}
	pre := min(capacity, initialAlloc)
	return &Map[K, V]{
		index:    make(map[K]int32, pre),
		ents:     make([]entry[K, V], 0, pre),
		newest:   Nil,
		oldest:   Nil,
		free:     Nil,
		capacity: capacity,
		onEvict:  onEvict,
	}
}

// Len is the number of live entries.
func (m *Map[K, V]) Len() int { return m.n }

// Cap is the capacity given to New.
func (m *Map[K, V]) Cap() int { return m.capacity }

// Evictions counts entries removed by Insert because the map was full.
func (m *Map[K, V]) Evictions() uint64 { return m.evictions }

// Lookup returns the slot of k without changing its recency.
func (m *Map[K, V]) Lookup(k K) (int32, bool) {
	s, ok := m.index[k]
	return s, ok
}

// Key returns the key in a live slot.
func (m *Map[K, V]) Key(slot int32) K { return m.ents[slot].key }

// Value returns a pointer to the value in a live slot. The pointer is valid
// until the next Insert (which may grow the slab) or the slot's removal.
func (m *Map[K, V]) Value(slot int32) *V { return &m.ents[slot].val }

// Touch makes slot the most recently used entry.
func (m *Map[K, V]) Touch(slot int32) {
	if m.newest == slot {
		return
	}
	m.unlink(slot)
	m.pushNewest(slot)
}

// Insert adds k, which must be absent, as the most recently used entry with a
// zero value, evicting the least recently used entry first if the map is full.
// It reports whether an eviction happened.
func (m *Map[K, V]) Insert(k K) (slot int32, evicted bool) {
	if m.n >= m.capacity {
		old := m.oldest
		if m.onEvict != nil {
			m.onEvict(old)
		}
		// The callback may itself have removed entries (even this one).
		if m.ents[old].live {
			m.Remove(old)
		}
		m.evictions++
		evicted = true
	}
	if m.free != Nil {
		slot = m.free
		m.free = m.ents[slot].next
	} else {
		m.ents = append(m.ents, entry[K, V]{})
		slot = int32(len(m.ents) - 1)
	}
	e := &m.ents[slot]
	var zero V
	e.key, e.val, e.live = k, zero, true
	m.index[k] = slot
	m.n++
	m.pushNewest(slot)
	return slot, evicted
}

// Remove deletes a live slot. The slot may be reused by a later Insert.
func (m *Map[K, V]) Remove(slot int32) {
	e := &m.ents[slot]
	delete(m.index, e.key)
	m.unlink(slot)
	var zk K
	var zv V
	e.key, e.val, e.live = zk, zv, false
	e.prev, e.next = Nil, m.free
	m.free = slot
	m.n--
}

// Oldest returns the least recently used slot.
func (m *Map[K, V]) Oldest() (int32, bool) { return m.oldest, m.oldest != Nil }

// Newer returns the slot used next after slot (towards the newest), or Nil.
func (m *Map[K, V]) Newer(slot int32) int32 { return m.ents[slot].prev }

// All yields live slots from the most to the least recently used. The map
// must not be modified during the iteration. It is for snapshots, not the hot
// path.
func (m *Map[K, V]) All() iter.Seq[int32] {
	return func(yield func(int32) bool) {
		for s := m.newest; s != Nil; s = m.ents[s].next {
			if !yield(s) {
				return
			}
		}
	}
}

func (m *Map[K, V]) unlink(slot int32) {
	e := &m.ents[slot]
	if e.prev != Nil {
		m.ents[e.prev].next = e.next
	} else {
		m.newest = e.next
	}
	if e.next != Nil {
		m.ents[e.next].prev = e.prev
	} else {
		m.oldest = e.prev
	}
	e.prev, e.next = Nil, Nil
}

func (m *Map[K, V]) pushNewest(slot int32) {
	e := &m.ents[slot]
	e.prev, e.next = Nil, m.newest
	if m.newest != Nil {
		m.ents[m.newest].prev = slot
	}
	m.newest = slot
	if m.oldest == Nil {
		m.oldest = slot
	}
}
