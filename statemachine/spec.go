package statemachine

import (
	"fmt"
	"strings"
	"time"

	"github.com/connwarden/connwarden/detector/event"
	"github.com/connwarden/connwarden/internal/fielderr"
)

// FieldError is one validation problem: Path is the field's location in the
// Spec with indexes only ("transitions[2].to"), Msg names the offending state
// or transition and says what would be valid. Spec.Validate returns every
// problem joined with errors.Join; unwrap with Unwrap() []error and errors.As.
type FieldError = fielderr.Error

// Matcher decides whether an event triggers a transition or a forbidden
// condition. The engine compiles rule filters into Matchers; they must not
// allocate, block, or keep the event pointer past the call.
type Matcher interface {
	Match(ev *event.Event) bool
}

// MatchFunc adapts a function to Matcher.
type MatchFunc func(ev *event.Event) bool

// Match calls f.
func (f MatchFunc) Match(ev *event.Event) bool { return f(ev) }

// Spec declares one state machine. Every name is case-sensitive.
type Spec struct {
	// Name identifies the rule in errors and results.
	Name string
	// States are the state names, each declared once.
	States []string
	// Initial is the state a session starts in (one of States). A session
	// that is absent, expired or evicted is in this state.
	Initial string
	// Transitions are tried in order; the first whose From is the session's
	// state and whose Match accepts the event is taken.
	Transitions []Transition
	// Timeouts return a session from State to To after After without a
	// transition. At most one timeout per state.
	Timeouts []Timeout
	// Forbidden are events that are violations while the session is in a
	// state. They are checked before transitions; a match reports the
	// violation and leaves the state unchanged.
	Forbidden []Forbidden

	// MaxSessions bounds the sessions held; when full, the least recently
	// stepped session is evicted (counted in Stats) and so returns to
	// Initial. Required, >= 1.
	MaxSessions int
	// IdleTimeout removes a session not stepped for longer than this, which
	// returns it to Initial. Zero means sessions leave only by eviction or by
	// returning to Initial. It may not be shorter than any Timeout's After,
	// or an idle session would return to Initial before the timeout fired.
	IdleTimeout time.Duration
}

// Transition moves a session From one state To another on a matching event.
type Transition struct {
	Name     string
	From, To string
	Match    Matcher
	// Violation marks taking this transition as a violation (the state still
	// changes to To).
	Violation bool
}

// Timeout returns a session from State to To once more than After has passed
// since the session entered State (any transition taken, including a
// self-transition, restarts the clock). An event exactly After later still
// sees State; one nanosecond later sees To. Timeouts are applied lazily, on
// the timestamps of the events stepped, and chain: if To has a timeout too,
// it runs from the instant the first one fired.
type Timeout struct {
	State string
	After time.Duration
	To    string
}

// Forbidden makes an event matching Match a violation while in State.
type Forbidden struct {
	Name  string
	State string
	Match Matcher
}

// Validate checks the spec and reports every problem as a FieldError.
func (s *Spec) Validate() error {
	_, err := compile(s)
	return err
}

// compiled is the Spec in the form Step uses: states as indexes, and for each
// state the transitions and forbidden conditions to try, in order.
type compiled struct {
	name        string
	states      []string
	initial     State
	trans       []Transition
	byState     [][]int32 // state -> transition indexes
	forbidden   []Forbidden
	forbByState [][]int32 // state -> forbidden indexes
	timeoutTo   []State   // state -> target, or None
	timeoutNS   []uint64  // state -> ns
	maxSessions int
	idleNS      uint64
}

func compile(s *Spec) (*compiled, error) {
	var errs fielderr.List
	c := &compiled{name: s.Name, states: s.States, initial: None}
	idx := make(map[string]State, len(s.States))
	declared := func() string { return strings.Join(s.States, ", ") }
	if len(s.States) == 0 {
		errs.Addf("states", "no states declared")
	}
	for i, n := range s.States {
		p := fmt.Sprintf("states[%d]", i)
		if n == "" {
			errs.Addf(p, "empty state name")
			continue
		}
		if j, dup := idx[n]; dup {
			errs.Addf(p, "state %q already declared as states[%d]", n, j)
			continue
		}
		idx[n] = State(i)
	}
	lookup := func(path, what, name string) State {
		if name == "" {
			errs.Addf(path, "%s: no state given; declared: %s", what, declared())
			return None
		}
		st, ok := idx[name]
		if !ok {
			errs.Addf(path, "%s: unknown state %q; declared: %s", what, name, declared())
			return None
		}
		return st
	}
	if s.Initial == "" {
		errs.Addf("initial", "no initial state; declared: %s", declared())
	} else {
		c.initial = lookup("initial", "initial", s.Initial)
	}

	n := len(s.States)
	c.byState = make([][]int32, n)
	c.forbByState = make([][]int32, n)
	c.timeoutTo = make([]State, n)
	c.timeoutNS = make([]uint64, n)
	for i := range c.timeoutTo {
		c.timeoutTo[i] = None
	}
	adj := make([][]State, n)

	for i, t := range s.Transitions {
		p := fmt.Sprintf("transitions[%d]", i)
		what := fmt.Sprintf("transition %d (%q)", i, t.Name)
		from := lookup(p+".from", what+" from", t.From)
		to := lookup(p+".to", what+" to", t.To)
		if t.Match == nil {
			errs.Addf(p+".match", "%s: no matcher", what)
		}
		if from != None && to != None {
			c.byState[from] = append(c.byState[from], int32(i))
			adj[from] = append(adj[from], to)
		}
	}
	for i, t := range s.Timeouts {
		p := fmt.Sprintf("timeouts[%d]", i)
		what := fmt.Sprintf("timeout %d (state %q)", i, t.State)
		st := lookup(p+".state", what+" state", t.State)
		to := lookup(p+".to", what+" to", t.To)
		bad := t.After <= 0
		if bad {
			errs.Addf(p+".after", "%s: after must be positive, got %v", what, t.After)
		}
		if st == None || to == None || bad {
			continue
		}
		if c.timeoutTo[st] != None {
			errs.Addf(p+".state", "%s: state %q already has a timeout", what, t.State)
			continue
		}
		c.timeoutTo[st], c.timeoutNS[st] = to, uint64(t.After)
		adj[st] = append(adj[st], to)
	}
	for i, f := range s.Forbidden {
		p := fmt.Sprintf("forbidden[%d]", i)
		what := fmt.Sprintf("forbidden %d (%q)", i, f.Name)
		st := lookup(p+".state", what+" state", f.State)
		if f.Match == nil {
			errs.Addf(p+".match", "%s: no matcher", what)
		}
		if st != None {
			c.forbByState[st] = append(c.forbByState[st], int32(i))
		}
	}
	if s.MaxSessions < 1 {
		errs.Addf("max_sessions", "must be at least 1, got %d", s.MaxSessions)
	}
	if s.IdleTimeout < 0 {
		errs.Addf("idle_timeout", "must not be negative, got %v", s.IdleTimeout)
	}
	for i, t := range s.Timeouts {
		if s.IdleTimeout > 0 && t.After > s.IdleTimeout {
			// An idle session would return to Initial before the timeout
			// could fire, changing what the rule means.
			errs.Addf("idle_timeout", "%v is shorter than timeouts[%d] (state %q, after %v); make it 0 or at least %v",
				s.IdleTimeout, i, t.State, t.After, t.After)
		}
	}

	if c.initial != None {
		for i, ok := range reachable(c.initial, adj) {
			// Duplicate names were reported above; only the first is indexed.
			if !ok && idx[s.States[i]] == State(i) && s.States[i] != "" {
				errs.Addf(fmt.Sprintf("states[%d]", i),
					"state %q is unreachable from initial state %q by transitions or timeouts", s.States[i], s.Initial)
			}
		}
	}
	if err := errs.Err(); err != nil {
		return nil, err
	}
	c.trans = s.Transitions
	c.forbidden = s.Forbidden
	c.maxSessions = s.MaxSessions
	c.idleNS = uint64(s.IdleTimeout)
	return c, nil
}

// reachable marks the states reachable from start along adj, breadth first.
func reachable(start State, adj [][]State) []bool {
	seen := make([]bool, len(adj))
	q := newStateQueue()
	seen[start] = true
	q.push(start)
	for {
		s, ok := q.pop()
		if !ok {
			return seen
		}
		for _, t := range adj[s] {
			if !seen[t] {
				seen[t] = true
				q.push(t)
			}
		}
	}
}
