package statemachine

import (
	"testing"
	"time"

	"github.com/connwarden/connwarden/detector/event"
)

// FuzzSpec builds a spec from arbitrary bytes (the YAML layer hands this
// package whatever a rule file says): validation must never panic, and a
// spec it accepts must step any events without panicking and only ever
// report declared states and in-range indexes.
func FuzzSpec(f *testing.F) {
	// Valid: states a, b; a --(kind%4==0, violation)--> b; b times out to a
	// after 5ns; forbidden in a on kind%4==1; two sessions, no idle expiry.
	f.Add([]byte{2, 0, 1, 0, 1, 0, 0, 1, 0, 0, 1, 1, 15, 0, 1, 0, 0, 1, 2, 5}, []byte{1, 2, 3, 200, 4, 7, 8})
	f.Add([]byte{3, 0, 0, 1, 1, 2, 0, 2, 5, 2, 0, 1}, []byte{1, 2, 3, 200, 4})
	f.Add([]byte{}, []byte{})
	f.Fuzz(func(t *testing.T, def, evs []byte) {
		next := func() int {
			if len(def) == 0 {
				return 0
			}
			b := def[0]
			def = def[1:]
			return int(b)
		}
		names := []string{"a", "b", "c", "d", "", "a"}
		name := func() string { return names[next()%len(names)] }
		var s Spec
		s.Name = "fuzz"
		for range next() % 5 {
			s.States = append(s.States, name())
		}
		s.Initial = name()
		match := func(k int) Matcher {
			if k%5 == 4 {
				return nil
			}
			return MatchFunc(func(ev *event.Event) bool { return int(ev.Kind)%4 == k%4 })
		}
		for range next() % 6 {
			s.Transitions = append(s.Transitions, Transition{
				Name: name(), From: name(), To: name(), Match: match(next()), Violation: next()%2 == 0,
			})
		}
		for range next() % 4 {
			s.Timeouts = append(s.Timeouts, Timeout{State: name(), After: time.Duration(next() - 10), To: name()})
		}
		for range next() % 3 {
			s.Forbidden = append(s.Forbidden, Forbidden{Name: name(), State: name(), Match: match(next())})
		}
		s.MaxSessions = next() % 4
		s.IdleTimeout = time.Duration(next() - 5)

		m, err := New[uint8](s)
		if err != nil {
			return
		}
		var ts uint64
		for i, b := range evs {
			ts += uint64(b) * uint64(b)
			ev := &event.Event{Timestamp: ts, Kind: event.Kind(b % 7)}
			r := m.Step(b%3, ev)
			if m.StateName(r.Prev) == "" || m.StateName(r.State) == "" {
				t.Fatalf("event %d: result names undeclared states: %+v", i, r)
			}
			if r.Transition >= len(s.Transitions) || r.Forbidden >= len(s.Forbidden) || r.Transition < -1 || r.Forbidden < -1 {
				t.Fatalf("event %d: index out of range: %+v", i, r)
			}
			if r.Violation != (r.Forbidden >= 0 || r.Transition >= 0 && s.Transitions[r.Transition].Violation) {
				t.Fatalf("event %d: violation flag inconsistent: %+v", i, r)
			}
			if m.Stats().Sessions > s.MaxSessions {
				t.Fatalf("%d sessions, cap %d", m.Stats().Sessions, s.MaxSessions)
			}
		}
	})
}
