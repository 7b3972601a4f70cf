package statemachine

import (
	"github.com/connwarden/connwarden/detector/event"
	"github.com/connwarden/connwarden/internal/lru"
)

// State is a state's index in Spec.States.
type State int32

// None is the State, transition or forbidden index meaning "none".
const None State = -1

// Result is what one Step did.
type Result struct {
	// Prev is the session's state when the event was evaluated, after any
	// timeouts due by the event's timestamp were applied.
	Prev State
	// State is the session's state after the event.
	State State
	// Transition is the index in Spec.Transitions of the transition taken,
	// or -1.
	Transition int
	// Forbidden is the index in Spec.Forbidden of the condition the event
	// matched, or -1. A forbidden match is checked before transitions and
	// prevents them.
	Forbidden int
	// Violation is set when Forbidden >= 0 or the transition taken is marked
	// as a violation.
	Violation bool
	// TimedOut is set when a timeout moved the session before the event was
	// evaluated.
	TimedOut bool
}

// Stats are counters over the machine's life, for metrics.
type Stats struct {
	Sessions int    // held now
	Evicted  uint64 // removed because MaxSessions was reached
	Expired  uint64 // removed after IdleTimeout without a step
}

type session struct {
	state State
	since uint64 // when the session entered state (event ns)
	last  uint64 // latest event ns stepped
}

// Machine runs one Spec over sessions keyed by K (for example a TGID as
// uint32, a UID, or a netip.Addr). It is not safe for concurrent use: the
// caller (the detector) steps it from one goroutine.
//
// A session that is in the initial state, and would stay there with no
// timeout pending, is not stored: memory is spent only on keys that are
// somewhere else.
type Machine[K comparable] struct {
	c        *compiled
	transTo  []State
	sessions *lru.Map[K, session]
	expired  uint64
}

// New validates spec and returns a Machine for it. The spec's Matchers are
// retained; the slices are not modified.
func New[K comparable](spec Spec) (*Machine[K], error) {
	c, err := compile(&spec)
	if err != nil {
		return nil, err
	}
	m := &Machine[K]{c: c, transTo: make([]State, len(c.trans))}
	for i, t := range c.trans {
		for j, n := range c.states {
			if n == t.To {
				m.transTo[i] = State(j)
				break
			}
		}
	}
	m.sessions = lru.New[K, session](c.maxSessions, nil)
	return m, nil
}

// Name is the spec's name.
func (m *Machine[K]) Name() string { return m.c.name }

// Initial is the initial state.
func (m *Machine[K]) Initial() State { return m.c.initial }

// StateName returns the declared name of s, or "" for None or out of range.
func (m *Machine[K]) StateName(s State) string {
	if s < 0 || int(s) >= len(m.c.states) {
		return ""
	}
	return m.c.states[s]
}

// TransitionName returns the Name of Spec.Transitions[i], or "" when i is
// out of range (as -1 in a Result is).
func (m *Machine[K]) TransitionName(i int) string {
	if i < 0 || i >= len(m.c.trans) {
		return ""
	}
	return m.c.trans[i].Name
}

// ForbiddenName returns the Name of Spec.Forbidden[i], or "" when i is out of
// range.
func (m *Machine[K]) ForbiddenName(i int) string {
	if i < 0 || i >= len(m.c.forbidden) {
		return ""
	}
	return m.c.forbidden[i].Name
}

// Stats returns the machine's counters.
func (m *Machine[K]) Stats() Stats {
	return Stats{Sessions: m.sessions.Len(), Evicted: m.sessions.Evictions(), Expired: m.expired}
}

// idleExpiredPerStep bounds the amortised idle sweep in Step.
const idleExpiredPerStep = 2

// Step applies ev to the session of key at ev.Timestamp: due timeouts first,
// then forbidden conditions of the resulting state, then the first matching
// transition. It does not allocate once the session table has reached its
// steady size.
func (m *Machine[K]) Step(key K, ev *event.Event) Result {
	now := ev.Timestamp
	c := m.c
	m.expireSome(now, idleExpiredPerStep)

	slot, ok := m.sessions.Lookup(key)
	st, since := c.initial, now
	if ok {
		s := m.sessions.Value(slot)
		if m.idle(s, now) {
			m.sessions.Remove(slot)
			m.expired++
			ok = false
		} else {
			st, since = s.state, s.since
		}
	}
	st, since, timedOut := m.applyTimeouts(st, since, now)

	res := Result{Prev: st, State: st, Transition: -1, Forbidden: -1, TimedOut: timedOut}
	for _, fi := range c.forbByState[st] {
		if c.forbidden[fi].Match.Match(ev) {
			res.Forbidden, res.Violation = int(fi), true
			break
		}
	}
	if res.Forbidden < 0 {
		for _, ti := range c.byState[st] {
			if c.trans[ti].Match.Match(ev) {
				st, since = m.transTo[ti], now
				res.Transition, res.Violation, res.State = int(ti), c.trans[ti].Violation, st
				break
			}
		}
	}

	if st == c.initial && c.timeoutTo[st] == None {
		// Equivalent to having no session.
		if ok {
			m.sessions.Remove(slot)
		}
		return res
	}
	if ok {
		m.sessions.Touch(slot)
	} else {
		slot, _ = m.sessions.Insert(key)
	}
	s := m.sessions.Value(slot)
	s.state, s.since = st, since
	s.last = max(s.last, now)
	return res
}

// State returns the state key's session would be in at now (applying due
// timeouts), without changing anything.
func (m *Machine[K]) State(key K, now uint64) State {
	slot, ok := m.sessions.Lookup(key)
	if !ok {
		st, _, _ := m.applyTimeouts(m.c.initial, now, now)
		return st
	}
	s := m.sessions.Value(slot)
	if m.idle(s, now) {
		return m.c.initial
	}
	st, _, _ := m.applyTimeouts(s.state, s.since, now)
	return st
}

// Forget removes key's session, returning it to the initial state.
func (m *Machine[K]) Forget(key K) {
	if slot, ok := m.sessions.Lookup(key); ok {
		m.sessions.Remove(slot)
	}
}

// Expire removes every session idle for longer than IdleTimeout at now and
// returns how many. Step already does this a little at a time; call Expire
// from a periodic tick to release memory when events stop. It visits only
// the expired sessions (plus one), oldest first.
func (m *Machine[K]) Expire(now uint64) int {
	return m.expireSome(now, -1)
}

func (m *Machine[K]) expireSome(now uint64, limit int) int {
	if m.c.idleNS == 0 {
		return 0
	}
	n := 0
	for limit < 0 || n < limit {
		slot, ok := m.sessions.Oldest()
		if !ok || !m.idle(m.sessions.Value(slot), now) {
			break
		}
		m.sessions.Remove(slot)
		m.expired++
		n++
	}
	return n
}

func (m *Machine[K]) idle(s *session, now uint64) bool {
	return m.c.idleNS != 0 && now > s.last && now-s.last > m.c.idleNS
}

// applyTimeouts follows timeouts from st, entered at since, up to now.
func (m *Machine[K]) applyTimeouts(st State, since, now uint64) (State, uint64, bool) {
	c := m.c
	timedOut := false
	for steps := 0; ; steps++ {
		to := c.timeoutTo[st]
		if to == None || now <= since || now-since <= c.timeoutNS[st] {
			return st, since, timedOut
		}
		if steps == len(c.states) {
			// A cycle of timeouts: skip whole turns of it instead of
			// walking a long gap one timeout at a time.
			var period uint64
			s := st
			for {
				period += c.timeoutNS[s]
				s = c.timeoutTo[s]
				if s == st {
					break
				}
			}
			if turns := (now - since) / period; turns > 1 {
				since += (turns - 1) * period
			}
		}
		since += c.timeoutNS[st]
		st = to
		timedOut = true
	}
}
