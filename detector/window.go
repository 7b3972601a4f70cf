package detector

import (
	"bytes"
	"net/netip"
	"slices"
	"strconv"

	"github.com/connwarden/connwarden/detector/event"
	"github.com/connwarden/connwarden/rules"
)

// Both detections share the alert suppression rule: once a key alerts at
// time a, it does not alert again before a + window. A steady attack thus
// raises one alert per window, not one per event.

// thresholdState keeps, per slot, the newest Count timestamps of the key in
// a ring (slot*n .. slot*n+n-1), oldest at start. Only the newest Count
// timestamps can decide "Count events within Window", so nothing else is
// kept. Events normally arrive in time order and take the O(1) path; an
// out-of-order timestamp (ring buffers of different CPUs) is inserted in
// order, so the ring always holds the Count largest timestamps seen.
type thresholdState struct {
	n      int
	window uint64
	meta   []thMeta
}

// thInline is how many timestamps a key keeps inline. Most keys of a busy
// host see a handful of events (one per scanning peer, say), so a key holds
// its ring inline until it needs more, and a rule with count 300 does not
// cost 2.4 KB for every peer that connected once.
const thInline = 4

type thMeta struct {
	start, cnt uint32
	alertAt    uint64
	alerted    bool
	small      [thInline]uint64
	// big is the full ring of n timestamps, allocated the first time the
	// slot's key needs more than thInline (only when n > thInline) and kept
	// when the slot is reset and reused, so a steady stream does not
	// allocate.
	big []uint64
}

func newThresholdState(t *rules.Threshold) *thresholdState {
	return &thresholdState{n: t.Count, window: uint64(t.Window)}
}

func (s *thresholdState) ensure(slot int32) {
	for int(slot) >= len(s.meta) {
		s.meta = append(s.meta, thMeta{})
	}
}

func (s *thresholdState) reset(slot int32) {
	m := &s.meta[slot]
	*m = thMeta{big: m.big}
}

// grow moves a key's timestamps from inline to the full ring before the
// ring holds more than thInline. The inline ring has not wrapped: it wraps
// only when full at n, and n > thInline here.
func (s *thresholdState) grow(m *thMeta) {
	m.big = make([]uint64, s.n)
	copy(m.big, m.small[:m.cnt])
	m.start = 0
}

// at returns the i-th oldest timestamp of slot's ring (i < n). The ring
// index wraps by subtraction: a division per access cost more than the
// rest of observe.
func (s *thresholdState) at(slot int32, i uint32) *uint64 {
	m := &s.meta[slot]
	j := m.start + i
	if j >= uint32(s.n) {
		j -= uint32(s.n)
	}
	if m.big != nil {
		return &m.big[j]
	}
	return &m.small[j]
}

// observe adds ts to slot's ring and reports whether the key fires now, or
// would have but is within a previous alert's window (suppressed).
func (s *thresholdState) observe(slot int32, ts uint64) (fire, suppressed bool) {
	m := &s.meta[slot]
	n := uint32(s.n)
	if m.big == nil && m.cnt == thInline && n > thInline {
		s.grow(m)
	}
	switch {
	case m.cnt == 0 || ts >= *s.at(slot, m.cnt-1):
		if m.cnt < n {
			*s.at(slot, m.cnt) = ts
			m.cnt++
		} else {
			*s.at(slot, 0) = ts
			if m.start++; m.start == n {
				m.start = 0
			}
		}
	case m.cnt == n && ts <= *s.at(slot, 0):
		// Older than every timestamp kept: the newest n are unchanged.
		return false, false
	default:
		s.insertSorted(slot, ts)
	}
	if m.cnt < n {
		return false, false
	}
	oldest, newest := *s.at(slot, 0), *s.at(slot, n-1)
	if newest-oldest > s.window {
		return false, false
	}
	if m.alerted && newest < m.alertAt+s.window {
		return false, true
	}
	m.alerted, m.alertAt = true, newest
	return true, false
}

// insertSorted puts an out-of-order ts into its place, dropping the oldest
// when the ring is full.
func (s *thresholdState) insertSorted(slot int32, ts uint64) {
	m := &s.meta[slot]
	n := uint32(s.n)
	if m.cnt == n { // drop the oldest to make room
		if m.start++; m.start == n {
			m.start = 0
		}
		m.cnt--
	}
	i := m.cnt
	for i > 0 && *s.at(slot, i-1) > ts {
		*s.at(slot, i) = *s.at(slot, i-1)
		i--
	}
	*s.at(slot, i) = ts
	m.cnt++
}

func (s *thresholdState) span(slot int32) (first, last uint64, count int) {
	m := &s.meta[slot]
	return *s.at(slot, 0), *s.at(slot, m.cnt-1), int(m.cnt)
}

// dval is one address value a distinct detection counts (remote_ip,
// remote_endpoint). Port fields count bare uint16 values.
type dval struct {
	addr [16]byte
	port uint16
}

// distinctCounter is a distinct detection's state, whatever its value type.
type distinctCounter interface {
	ensure(slot int32)
	reset(slot int32)
	observeEvent(slot int32, ev *event.Event) (fire, suppressed bool)
	span(slot int32) (first, last uint64, count int, values []string)
}

// distinctState keeps, per slot, up to Count (value, last seen) pairs: the
// Count most recently seen distinct values. That is enough to decide "at
// least Count distinct values within Window" exactly: it holds iff the
// Count-th most recent value was last seen within the window.
//
// Values and times are held in separate slices, and port fields use bare
// uint16 values, because the common case is one scan for a value: for a
// port scan that reads one cache line instead of eight.
type distinctState[V comparable] struct {
	n      int
	window uint64
	vals   []V
	ts     []uint64
	meta   []dsMeta
	value  func(*event.Event) V
	render func(V) string
	cmp    func(a, b V) int
}

type dsMeta struct {
	cnt     uint32
	newest  uint64 // the key's own clock: newest timestamp seen
	oldest  uint64 // the oldest last-seen time among the values held
	alertAt uint64
	alerted bool
}

func newDistinctState(d *rules.Distinct) distinctCounter {
	switch d.Field {
	case rules.DistinctRemotePort, rules.DistinctLocalPort:
		s := &distinctState[uint16]{n: d.Count, window: uint64(d.Window)}
		s.value = func(ev *event.Event) uint16 { return ev.Remote.Port() }
		if d.Field == rules.DistinctLocalPort {
			s.value = func(ev *event.Event) uint16 { return ev.Local.Port() }
		}
		s.render = func(p uint16) string { return strconv.Itoa(int(p)) }
		s.cmp = func(a, b uint16) int { return int(a) - int(b) }
		return s
	}
	s := &distinctState[dval]{n: d.Count, window: uint64(d.Window)}
	s.value = func(ev *event.Event) dval { return dval{addr: ev.Remote.Addr().As16()} }
	s.render = func(v dval) string { return netip.AddrFrom16(v.addr).Unmap().String() }
	if d.Field == rules.DistinctRemoteEndpoint {
		s.value = func(ev *event.Event) dval { return dval{ev.Remote.Addr().As16(), ev.Remote.Port()} }
		s.render = func(v dval) string { return netip.AddrPortFrom(netip.AddrFrom16(v.addr).Unmap(), v.port).String() }
	}
	s.cmp = func(a, b dval) int {
		if c := bytes.Compare(a.addr[:], b.addr[:]); c != 0 {
			return c
		}
		return int(a.port) - int(b.port)
	}
	return s
}

func (s *distinctState[V]) ensure(slot int32) {
	for int(slot) >= len(s.meta) {
		s.meta = append(s.meta, dsMeta{})
		s.vals = append(s.vals, make([]V, s.n)...)
		s.ts = append(s.ts, make([]uint64, s.n)...)
	}
}

func (s *distinctState[V]) reset(slot int32) { s.meta[slot] = dsMeta{} }

func (s *distinctState[V]) observeEvent(slot int32, ev *event.Event) (fire, suppressed bool) {
	return s.observe(slot, s.value(ev), ev.Timestamp)
}

// observe records v seen at ts and reports whether the key fires or is
// suppressed. The window ends at the key's newest timestamp. The common
// case is one scan for v; values leaving the window are swept out only when
// the oldest one has left it, and the oldest is looked for only when a new
// value meets a full set.
func (s *distinctState[V]) observe(slot int32, v V, ts uint64) (fire, suppressed bool) {
	m := &s.meta[slot]
	m.newest = max(m.newest, ts)
	now := m.newest
	base := int(slot) * s.n
	vals, tss := s.vals[base:base+s.n], s.ts[base:base+s.n]
	if m.cnt > 0 && now > m.oldest && now-m.oldest > s.window {
		sweep(m, vals, tss, now, s.window)
	}
	cnt := int(m.cnt)
	found := -1
	for i, x := range vals[:cnt] {
		if x == v {
			found = i
			break
		}
	}
	switch {
	case found >= 0:
		tss[found] = max(tss[found], ts)
	case cnt < s.n:
		vals[cnt], tss[cnt] = v, ts
		m.cnt++
		if cnt == 0 || ts < m.oldest {
			m.oldest = ts
		}
	default:
		// Full: the new value replaces the least recently seen one, unless
		// it is older still (a late event).
		o := 0
		for i := range tss {
			if tss[i] < tss[o] {
				o = i
			}
		}
		if ts > tss[o] {
			vals[o], tss[o] = v, ts
		}
		m.oldest = slices.Min(tss)
	}
	if int(m.cnt) < s.n {
		return false, false
	}
	if m.alerted && now < m.alertAt+s.window {
		return false, true
	}
	m.alerted, m.alertAt = true, now
	return true, false
}

// sweep drops values last seen outside the window ending at now and
// recomputes oldest.
func sweep[V comparable](m *dsMeta, vals []V, tss []uint64, now, window uint64) {
	cnt := int(m.cnt)
	m.oldest = ^uint64(0)
	for i := 0; i < cnt; {
		if now > tss[i] && now-tss[i] > window {
			cnt--
			vals[i], tss[i] = vals[cnt], tss[cnt]
			continue
		}
		m.oldest = min(m.oldest, tss[i])
		i++
	}
	m.cnt = uint32(cnt)
}

// span returns the oldest sighting, the newest, the count and the values
// (rendered, sorted). It allocates; it runs only when the rule fires.
func (s *distinctState[V]) span(slot int32) (first, last uint64, count int, values []string) {
	m := &s.meta[slot]
	base := int(slot) * s.n
	vs := slices.Clone(s.vals[base : base+int(m.cnt)])
	first = slices.Min(s.ts[base : base+int(m.cnt)])
	slices.SortFunc(vs, s.cmp)
	for _, v := range vs {
		values = append(values, s.render(v))
	}
	return first, m.newest, len(vs), values
}
