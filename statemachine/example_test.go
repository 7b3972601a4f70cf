package statemachine_test

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/connwarden/connwarden/detector/event"
	"github.com/connwarden/connwarden/statemachine"
)

// A process must complete a connection to the auth service (port 9000) before
// it opens one to the API service (port 8443); authentication lasts five
// minutes. Sessions are keyed by TGID.
func Example() {
	authOK := statemachine.MatchFunc(func(ev *event.Event) bool {
		return ev.Direction == event.DirOutbound && ev.Remote.Port() == 9000 &&
			ev.Outcome() == event.OutcomeSuccess
	})
	apiOpen := statemachine.MatchFunc(func(ev *event.Event) bool {
		return ev.Kind == event.KindTCPAttempt && ev.Remote.Port() == 8443
	})
	m, err := statemachine.New[uint32](statemachine.Spec{
		Name:    "api-requires-auth",
		States:  []string{"unauthenticated", "authenticated"},
		Initial: "unauthenticated",
		Transitions: []statemachine.Transition{
			{Name: "login", From: "unauthenticated", To: "authenticated", Match: authOK},
			{Name: "refresh", From: "authenticated", To: "authenticated", Match: authOK},
		},
		Timeouts: []statemachine.Timeout{
			{State: "authenticated", After: 5 * time.Minute, To: "unauthenticated"},
		},
		Forbidden: []statemachine.Forbidden{
			{Name: "api-without-auth", State: "unauthenticated", Match: apiOpen},
		},
		MaxSessions: 1024,
		IdleTimeout: 10 * time.Minute,
	})
	if err != nil {
		fmt.Println(err)
		return
	}

	at := func(d time.Duration, kind event.Kind, port uint16) *event.Event {
		return &event.Event{
			Timestamp: uint64(d), Kind: kind, Direction: event.DirOutbound, TGID: 4242,
			Remote: netip.AddrPortFrom(netip.MustParseAddr("10.0.0.9"), port),
		}
	}
	for _, ev := range []*event.Event{
		at(0, event.KindTCPAttempt, 8443),                 // API first: violation
		at(1*time.Second, event.KindTCPEstablished, 9000), // auth succeeds
		at(2*time.Second, event.KindTCPAttempt, 8443),     // API: fine
		at(7*time.Minute, event.KindTCPAttempt, 8443),     // auth expired: violation
	} {
		r := m.Step(ev.TGID, ev)
		fmt.Printf("%v port %d: %s -> %s violation=%v\n",
			time.Duration(ev.Timestamp), ev.Remote.Port(), m.StateName(r.Prev), m.StateName(r.State), r.Violation)
	}
	// Output:
	// 0s port 8443: unauthenticated -> unauthenticated violation=true
	// 1s port 9000: unauthenticated -> authenticated violation=false
	// 2s port 8443: authenticated -> authenticated violation=false
	// 7m0s port 8443: unauthenticated -> unauthenticated violation=true
}
