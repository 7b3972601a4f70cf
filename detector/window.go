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
	ts     []uint64
	meta   []thMeta
}

type thMeta struct {
	start, cnt uint32
	alertAt    uint64
	alerted    bool
}

func newThresholdState(t *rules.Threshold) *thresholdState {
	return &thresholdState{n: t.Count, window: uint64(t.Window)}
}

func (s *thresholdState) ensure(slot int32) {
	for int(slot) >= len(s.meta) {
		s.meta = append(s.meta, thMeta{})
		s.ts = append(s.ts, make([]uint64, s.n)...)
	}
}

func (s *thresholdState) reset(slot int32) { s.meta[slot] = thMeta{} }

// at returns the i-th oldest timestamp of slot's ring (i < n). The ring
// index wraps by subtraction: a division per access cost more than the
// rest of observe.
func (s *thresholdState) at(slot int32, i uint32) *uint64 {
	j := s.meta[slot].start + i
	if j >= uint32(s.n) {
		j -= uint32(s.n)
	}
	return &s.ts[int(slot)*s.n+int(j)]
}

// observe adds ts to slot's ring and reports whether the key fires now, or
// would have but is within a previous alert's window (suppressed).
func (s *thresholdState) observe(slot int32, ts uint64) (fire, suppressed bool) {
	m := &s.meta[slot]
	n := uint32(s.n)
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

// dval is one value a distinct detection counts.
type dval struct {
	addr [16]byte
	port uint16
}

type dent struct {
	v  dval
	ts uint64
}

// distinctState keeps, per slot, up to Count (value, last seen) pairs: the
// Count most recently seen distinct values. That is enough to decide "at
// least Count distinct values within Window" exactly: it holds iff the
// Count-th most recent value was last seen within the window.
type distinctState struct {
	n      int
	window uint64
	field  rules.DistinctField
	ents   []dent
	meta   []dsMeta
}

type dsMeta struct {
	cnt     uint32
	newest  uint64 // the key's own clock: newest timestamp seen
	oldest  uint64 // the oldest last-seen time among the values held
	alertAt uint64
	alerted bool
}

func newDistinctState(d *rules.Distinct) *distinctState {
	return &distinctState{n: d.Count, window: uint64(d.Window), field: d.Field}
}

func (s *distinctState) ensure(slot int32) {
	for int(slot) >= len(s.meta) {
		s.meta = append(s.meta, dsMeta{})
		s.ents = append(s.ents, make([]dent, s.n)...)
	}
}

func (s *distinctState) reset(slot int32) { s.meta[slot] = dsMeta{} }

func (s *distinctState) value(ev *event.Event) dval {
	var v dval
	switch s.field {
	case rules.DistinctRemoteIP:
		v.addr = ev.Remote.Addr().As16()
	case rules.DistinctRemotePort:
		v.port = ev.Remote.Port()
	case rules.DistinctRemoteEndpoint:
		v.addr = ev.Remote.Addr().As16()
		v.port = ev.Remote.Port()
	case rules.DistinctLocalPort:
		v.port = ev.Local.Port()
	}
	return v
}

// observe records v seen at ts and reports whether the key fires or is
// suppressed. The window ends at the key's newest timestamp. The common
// case is one scan for v; values leaving the window are swept out only when
// the oldest one has left it, and the oldest is looked for only when a new
// value meets a full set.
func (s *distinctState) observe(slot int32, v dval, ts uint64) (fire, suppressed bool) {
	m := &s.meta[slot]
	m.newest = max(m.newest, ts)
	now := m.newest
	ents := s.ents[int(slot)*s.n : int(slot+1)*s.n]
	if m.cnt > 0 && now > m.oldest && now-m.oldest > s.window {
		m.sweep(ents, now, s.window)
	}
	cnt := int(m.cnt)
	found := false
	for i := range ents[:cnt] {
		if ents[i].v == v {
			found = true
			ents[i].ts = max(ents[i].ts, ts)
			break
		}
	}
	switch {
	case found:
	case cnt < s.n:
		ents[cnt] = dent{v, ts}
		m.cnt++
		if cnt == 0 || ts < m.oldest {
			m.oldest = ts
		}
	default:
		// Full: the new value replaces the least recently seen one, unless
		// it is older still (a late event).
		o := 0
		for i := range ents {
			if ents[i].ts < ents[o].ts {
				o = i
			}
		}
		if ts > ents[o].ts {
			ents[o] = dent{v, ts}
		}
		m.oldest = ents[0].ts
		for i := range ents {
			m.oldest = min(m.oldest, ents[i].ts)
		}
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
func (m *dsMeta) sweep(ents []dent, now, window uint64) {
	cnt := int(m.cnt)
	m.oldest = ^uint64(0)
	for i := 0; i < cnt; {
		if now > ents[i].ts && now-ents[i].ts > window {
			cnt--
			ents[i] = ents[cnt]
			continue
		}
		m.oldest = min(m.oldest, ents[i].ts)
		i++
	}
	m.cnt = uint32(cnt)
}

// span returns the oldest sighting, the count and the values (rendered,
// sorted). It allocates; it runs only when the rule fires.
func (s *distinctState) span(slot int32) (first, last uint64, count int, values []string) {
	m := &s.meta[slot]
	ents := s.ents[int(slot)*s.n : int(slot)*s.n+int(m.cnt)]
	first = ^uint64(0)
	vs := make([]dval, 0, len(ents))
	for _, e := range ents {
		first = min(first, e.ts)
		vs = append(vs, e.v)
	}
	slices.SortFunc(vs, func(a, b dval) int {
		if c := bytes.Compare(a.addr[:], b.addr[:]); c != 0 {
			return c
		}
		return int(a.port) - int(b.port)
	})
	for _, v := range vs {
		values = append(values, s.render(v))
	}
	return first, m.newest, len(ents), values
}

func (s *distinctState) render(v dval) string {
	addr := netip.AddrFrom16(v.addr).Unmap()
	switch s.field {
	case rules.DistinctRemoteIP:
		return addr.String()
	case rules.DistinctRemoteEndpoint:
		return netip.AddrPortFrom(addr, v.port).String()
	}
	return strconv.Itoa(int(v.port))
}
