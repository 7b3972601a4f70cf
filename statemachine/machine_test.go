package statemachine

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/connwarden/connwarden/detector/event"
	"github.com/google/go-cmp/cmp"
)

var (
	authOK = MatchFunc(func(ev *event.Event) bool {
		return ev.Direction == event.DirOutbound && ev.Remote.Port() == 9000 &&
			ev.Outcome() == event.OutcomeSuccess
	})
	apiOpen = MatchFunc(func(ev *event.Event) bool {
		return ev.Kind == event.KindTCPAttempt && ev.Remote.Port() == 8443
	})
	never = MatchFunc(func(*event.Event) bool { return false })
)

// seedSpec is the seed rule: an API connection (port 8443) is a violation
// unless the process completed an auth connection (port 9000) in the last
// five minutes.
func seedSpec() Spec {
	return Spec{
		Name:    "api-requires-auth",
		States:  []string{"unauthenticated", "authenticated"},
		Initial: "unauthenticated",
		Transitions: []Transition{
			{Name: "login", From: "unauthenticated", To: "authenticated", Match: authOK},
			{Name: "refresh", From: "authenticated", To: "authenticated", Match: authOK},
		},
		Timeouts:    []Timeout{{State: "authenticated", After: 5 * time.Minute, To: "unauthenticated"}},
		Forbidden:   []Forbidden{{Name: "api-without-auth", State: "unauthenticated", Match: apiOpen}},
		MaxSessions: 1024,
		IdleTimeout: 10 * time.Minute,
	}
}

const (
	unauth State = 0
	authd  State = 1
)

type step struct {
	tgid   uint32
	at     time.Duration
	kind   event.Kind
	port   uint16
	result int32
}

func (s step) event() *event.Event {
	return &event.Event{
		Timestamp: uint64(s.at), Kind: s.kind, Direction: event.DirOutbound,
		TGID: s.tgid, PID: s.tgid, Result: s.result,
		Remote: netip.AddrPortFrom(netip.MustParseAddr("10.0.0.9"), s.port),
	}
}

// Results for the seed spec, by name.
var (
	nothingUnauth = Result{Prev: unauth, State: unauth, Transition: -1, Forbidden: -1}
	apiViolation  = Result{Prev: unauth, State: unauth, Transition: -1, Forbidden: 0, Violation: true}
	login         = Result{Prev: unauth, State: authd, Transition: 0, Forbidden: -1}
	refresh       = Result{Prev: authd, State: authd, Transition: 1, Forbidden: -1}
	apiAllowed    = Result{Prev: authd, State: authd, Transition: -1, Forbidden: -1}
)

func TestSeedAuthRule(t *testing.T) {
	const (
		api      = 8443
		auth     = 9000
		attempt  = event.KindTCPAttempt
		est      = event.KindTCPEstablished
		conn     = event.KindConnect
		closed   = event.KindTCPClose
		fiveMin  = 5 * time.Minute
		refused  = -event.ECONNREFUSED
		inprogrs = -event.EINPROGRESS
	)
	timedOut := apiViolation
	timedOut.TimedOut = true
	tests := []struct {
		name  string
		steps []step
		want  []Result
	}{
		{
			name:  "api without auth is a violation",
			steps: []step{{tgid: 1, at: time.Second, kind: attempt, port: api}},
			want:  []Result{apiViolation},
		},
		{
			name: "api after successful auth is fine",
			steps: []step{
				{tgid: 1, at: time.Second, kind: attempt, port: auth},
				{tgid: 1, at: 2 * time.Second, kind: est, port: auth},
				{tgid: 1, at: 3 * time.Second, kind: attempt, port: api},
			},
			want: []Result{nothingUnauth, login, apiAllowed},
		},
		{
			name: "blocking connect returning 0 authenticates",
			steps: []step{
				{tgid: 1, at: time.Second, kind: conn, port: auth},
				{tgid: 1, at: 2 * time.Second, kind: attempt, port: api},
			},
			want: []Result{login, apiAllowed},
		},
		{
			name: "pending or refused auth does not authenticate",
			steps: []step{
				{tgid: 1, at: time.Second, kind: conn, port: auth, result: inprogrs},
				{tgid: 1, at: 2 * time.Second, kind: closed, port: auth, result: refused},
				{tgid: 1, at: 3 * time.Second, kind: attempt, port: api},
			},
			want: []Result{nothingUnauth, nothingUnauth, apiViolation},
		},
		{
			name: "exactly five minutes after auth is still authenticated",
			steps: []step{
				{tgid: 1, at: time.Second, kind: est, port: auth},
				{tgid: 1, at: time.Second + fiveMin, kind: attempt, port: api},
			},
			want: []Result{login, apiAllowed},
		},
		{
			name: "five minutes and 1ns after auth is a violation again",
			steps: []step{
				{tgid: 1, at: time.Second, kind: est, port: auth},
				{tgid: 1, at: time.Second + fiveMin + 1, kind: attempt, port: api},
			},
			want: []Result{login, timedOut},
		},
		{
			name: "re-auth restarts the five minutes",
			steps: []step{
				{tgid: 1, at: time.Second, kind: est, port: auth},
				{tgid: 1, at: 4 * time.Minute, kind: est, port: auth},
				{tgid: 1, at: 8 * time.Minute, kind: attempt, port: api},
				{tgid: 1, at: 4*time.Minute + fiveMin + 1, kind: attempt, port: api},
			},
			want: []Result{login, refresh, apiAllowed, timedOut},
		},
		{
			name: "sessions are per key",
			steps: []step{
				{tgid: 1, at: time.Second, kind: est, port: auth},
				{tgid: 2, at: 2 * time.Second, kind: attempt, port: api},
				{tgid: 1, at: 3 * time.Second, kind: attempt, port: api},
			},
			want: []Result{login, apiViolation, apiAllowed},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := New[uint32](seedSpec())
			if err != nil {
				t.Fatal(err)
			}
			var got []Result
			for _, s := range tt.steps {
				got = append(got, m.Step(s.tgid, s.event()))
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("results (-want +got):\n%s", diff)
			}
		})
	}
}

func TestStateDoesNotChangeSessions(t *testing.T) {
	m, err := New[uint32](seedSpec())
	if err != nil {
		t.Fatal(err)
	}
	m.Step(7, step{tgid: 7, at: time.Second, kind: event.KindTCPEstablished, port: 9000}.event())
	tests := []struct {
		name string
		key  uint32
		now  time.Duration
		want State
	}{
		{"authenticated", 7, 2 * time.Second, authd},
		{"at the timeout", 7, time.Second + 5*time.Minute, authd},
		{"past the timeout", 7, time.Second + 5*time.Minute + 1, unauth},
		{"past idle expiry", 7, time.Second + 10*time.Minute + 1, unauth},
		{"unknown key", 8, 2 * time.Second, unauth},
		{"authenticated still, after the queries", 7, 3 * time.Second, authd},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := m.State(tt.key, uint64(tt.now)); got != tt.want {
				t.Errorf("State(%d, %v) = %s, want %s", tt.key, tt.now, m.StateName(got), m.StateName(tt.want))
			}
		})
	}
}

// A session that stays in (or returns to) an initial state without a timeout
// holds no memory.
func TestInitialStateIsNotStored(t *testing.T) {
	m, err := New[uint32](seedSpec())
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		step
		sessions int
	}{
		{step{tgid: 1, at: time.Second, kind: event.KindTCPAttempt, port: 8443}, 0},
		{step{tgid: 1, at: 2 * time.Second, kind: event.KindTCPEstablished, port: 9000}, 1},
		{step{tgid: 1, at: 10 * time.Minute, kind: event.KindTCPAttempt, port: 80}, 0},
	}
	for i, s := range steps {
		m.Step(s.tgid, s.event())
		if got := m.Stats().Sessions; got != s.sessions {
			t.Errorf("after step %d: %d sessions, want %d", i, got, s.sessions)
		}
	}
}

func TestEvictionAndIdleExpiry(t *testing.T) {
	spec := seedSpec()
	spec.MaxSessions = 2
	spec.IdleTimeout = 6 * time.Minute
	login := func(tgid uint32, at time.Duration) *event.Event {
		return step{tgid: tgid, at: at, kind: event.KindTCPEstablished, port: 9000}.event()
	}
	tests := []struct {
		name      string
		logins    []uint32 // one per second
		expireAt  time.Duration
		wantState map[uint32]State // at 10s
		want      Stats
	}{
		{
			name:      "least recently stepped session is evicted",
			logins:    []uint32{1, 2, 1, 3},
			wantState: map[uint32]State{1: authd, 2: unauth, 3: authd},
			want:      Stats{Sessions: 2, Evicted: 1},
		},
		{
			name:      "idle for exactly the timeout is kept",
			logins:    []uint32{1, 2},
			expireAt:  2*time.Second + 6*time.Minute,
			wantState: map[uint32]State{1: unauth, 2: authd},
			want:      Stats{Sessions: 1, Expired: 1},
		},
		{
			name:      "idle for 1ns more is expired",
			logins:    []uint32{1, 2},
			expireAt:  2*time.Second + 6*time.Minute + 1,
			wantState: map[uint32]State{1: unauth, 2: unauth},
			want:      Stats{Sessions: 0, Expired: 2},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := New[uint32](spec)
			if err != nil {
				t.Fatal(err)
			}
			for i, k := range tt.logins {
				m.Step(k, login(k, time.Duration(i+1)*time.Second))
			}
			if tt.expireAt != 0 {
				m.Expire(uint64(tt.expireAt))
			}
			got := map[uint32]State{}
			for k := range tt.wantState {
				// Query at the latest login time so no timeout interferes.
				got[k] = m.State(k, uint64(len(tt.logins))*uint64(time.Second))
			}
			if diff := cmp.Diff(tt.wantState, got); diff != "" {
				t.Errorf("states (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.want, m.Stats()); diff != "" {
				t.Errorf("stats (-want +got):\n%s", diff)
			}
		})
	}
}

func TestViolatingTransitionAndOrder(t *testing.T) {
	any := MatchFunc(func(*event.Event) bool { return true })
	m, err := New[string](Spec{
		Name:    "t",
		States:  []string{"a", "b"},
		Initial: "a",
		Transitions: []Transition{
			{Name: "bad", From: "a", To: "b", Match: any, Violation: true},
			{Name: "shadowed", From: "a", To: "a", Match: any},
			{Name: "back", From: "b", To: "a", Match: any},
		},
		Forbidden:   []Forbidden{{Name: "off", State: "b", Match: never}},
		MaxSessions: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	ev := &event.Event{Timestamp: 1}
	got := []Result{m.Step("k", ev), m.Step("k", ev)}
	names := []string{m.TransitionName(got[0].Transition), m.TransitionName(got[1].Transition), m.TransitionName(-1), m.ForbiddenName(0), m.ForbiddenName(1)}
	if diff := cmp.Diff([]string{"bad", "back", "", "off", ""}, names); diff != "" {
		t.Errorf("names (-want +got):\n%s", diff)
	}
	want := []Result{
		{Prev: 0, State: 1, Transition: 0, Forbidden: -1, Violation: true},
		{Prev: 1, State: 0, Transition: 2, Forbidden: -1},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("results (-want +got):\n%s", diff)
	}
}

// Long gaps across a cycle of timeouts land where stepping one timeout at a
// time would.
func TestTimeoutCycle(t *testing.T) {
	spec := Spec{
		Name:    "cycle",
		States:  []string{"a", "b", "c"},
		Initial: "a",
		Transitions: []Transition{
			{Name: "go", From: "a", To: "b", Match: MatchFunc(func(ev *event.Event) bool { return ev.Kind == event.KindConnect })},
		},
		Timeouts: []Timeout{
			{State: "b", After: 3, To: "c"},
			{State: "c", After: 5, To: "b"},
		},
		MaxSessions: 1,
	}
	// Entered b at 100; the cycle b(3) -> c(5) -> b has period 8, so with
	// r = (now-100) mod 8, the session is in b for r in 1..3 and in c
	// otherwise (r = 0 is the last instant of c), except at 100 itself.
	want := func(now uint64) State {
		if now <= 103 {
			return 1
		}
		if r := (now - 100) % 8; r >= 1 && r <= 3 {
			return 1
		}
		return 2
	}
	for _, now := range []uint64{100, 103, 104, 108, 109, 111, 112, 1000, 1_000_003, 1_000_004, 1 << 40, 1<<40 + 5, 1<<62 + 7} {
		t.Run("", func(t *testing.T) {
			m, err := New[int](spec)
			if err != nil {
				t.Fatal(err)
			}
			m.Step(0, &event.Event{Timestamp: 100, Kind: event.KindConnect})
			if got, want := m.State(0, now), want(now); got != want {
				t.Errorf("at %d: state %s, want %s", now, m.StateName(got), m.StateName(want))
			}
		})
	}
}

func TestValidate(t *testing.T) {
	match := MatchFunc(func(*event.Event) bool { return true })
	base := func(edit func(*Spec)) Spec {
		s := Spec{
			Name:        "r",
			States:      []string{"a", "b"},
			Initial:     "a",
			Transitions: []Transition{{Name: "ab", From: "a", To: "b", Match: match}},
			MaxSessions: 10,
		}
		edit(&s)
		return s
	}
	tests := []struct {
		name string
		spec Spec
		want []FieldError
	}{
		{name: "valid", spec: base(func(*Spec) {})},
		{name: "seed rule", spec: seedSpec()},
		{
			name: "empty",
			spec: Spec{},
			want: []FieldError{
				{Path: "states", Msg: "no states declared"},
				{Path: "initial", Msg: "no initial state; declared: "},
				{Path: "max_sessions", Msg: "must be at least 1, got 0"},
			},
		},
		{
			name: "unknown initial",
			spec: base(func(s *Spec) { s.Initial = "z" }),
			want: []FieldError{{Path: "initial", Msg: `initial: unknown state "z"; declared: a, b`}},
		},
		{
			name: "duplicate and empty state names",
			spec: base(func(s *Spec) { s.States = []string{"a", "b", "a", ""} }),
			want: []FieldError{
				{Path: "states[2]", Msg: `state "a" already declared as states[0]`},
				{Path: "states[3]", Msg: "empty state name"},
			},
		},
		{
			name: "transition to and from undeclared states, no matcher",
			spec: base(func(s *Spec) {
				s.Transitions = append(s.Transitions, Transition{Name: "x", From: "q", To: "r"})
			}),
			want: []FieldError{
				{Path: "transitions[1].from", Msg: `transition 1 ("x") from: unknown state "q"; declared: a, b`},
				{Path: "transitions[1].to", Msg: `transition 1 ("x") to: unknown state "r"; declared: a, b`},
				{Path: "transitions[1].match", Msg: `transition 1 ("x"): no matcher`},
			},
		},
		{
			name: "bad timeouts",
			spec: base(func(s *Spec) {
				s.Timeouts = []Timeout{
					{State: "b", After: time.Second, To: "nowhere"},
					{State: "b", After: 0, To: "a"},
					{State: "b", After: time.Second, To: "a"},
					{State: "b", After: time.Minute, To: "a"},
				}
			}),
			want: []FieldError{
				{Path: "timeouts[0].to", Msg: `timeout 0 (state "b") to: unknown state "nowhere"; declared: a, b`},
				{Path: "timeouts[1].after", Msg: `timeout 1 (state "b"): after must be positive, got 0s`},
				{Path: "timeouts[3].state", Msg: `timeout 3 (state "b"): state "b" already has a timeout`},
			},
		},
		{
			name: "unreachable states",
			spec: base(func(s *Spec) {
				s.States = append(s.States, "island", "via-timeout", "orphan-source")
				s.Timeouts = []Timeout{{State: "b", After: time.Second, To: "via-timeout"}}
				s.Transitions = append(s.Transitions, Transition{Name: "o", From: "orphan-source", To: "island", Match: match})
			}),
			want: []FieldError{
				{Path: "states[2]", Msg: `state "island" is unreachable from initial state "a" by transitions or timeouts`},
				{Path: "states[4]", Msg: `state "orphan-source" is unreachable from initial state "a" by transitions or timeouts`},
			},
		},
		{
			name: "forbidden in undeclared state, no matcher; negative idle",
			spec: base(func(s *Spec) {
				s.Forbidden = []Forbidden{{Name: "f", State: "zz"}}
				s.IdleTimeout = -time.Second
			}),
			want: []FieldError{
				{Path: "forbidden[0].state", Msg: `forbidden 0 ("f") state: unknown state "zz"; declared: a, b`},
				{Path: "forbidden[0].match", Msg: `forbidden 0 ("f"): no matcher`},
				{Path: "idle_timeout", Msg: "must not be negative, got -1s"},
			},
		},
		{
			name: "idle timeout shorter than a timeout",
			spec: base(func(s *Spec) {
				s.Timeouts = []Timeout{{State: "b", After: time.Minute, To: "a"}}
				s.IdleTimeout = time.Minute - 1
			}),
			want: []FieldError{
				{Path: "idle_timeout", Msg: `59.999999999s is shorter than timeouts[0] (state "b", after 1m0s); make it 0 or at least 1m0s`},
			},
		},
		{
			name: "idle timeout equal to a timeout",
			spec: base(func(s *Spec) {
				s.Timeouts = []Timeout{{State: "b", After: time.Minute, To: "a"}}
				s.IdleTimeout = time.Minute
			}),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.spec.Validate()
			if diff := cmp.Diff(tt.want, fieldErrors(t, err)); diff != "" {
				t.Errorf("errors (-want +got):\n%s", diff)
			}
			if _, nerr := New[int](tt.spec); (nerr == nil) != (err == nil) {
				t.Errorf("New error %v disagrees with Validate error %v", nerr, err)
			}
		})
	}
}

func fieldErrors(t *testing.T, err error) []FieldError {
	t.Helper()
	if err == nil {
		return nil
	}
	var out []FieldError
	for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
		var fe *FieldError
		if !errors.As(e, &fe) {
			t.Fatalf("error %v is not a FieldError", e)
		}
		out = append(out, *fe)
	}
	return out
}
