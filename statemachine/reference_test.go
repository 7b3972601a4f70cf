package statemachine

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/connwarden/connwarden/detector/event"
	"github.com/google/go-cmp/cmp"
)

// reference is the seed rule written the obvious way: per key, the time of
// the last successful auth connection; an API connection is a violation
// unless that time is at most five minutes ago. It knows nothing of states,
// lazy timeouts or session tables.
type reference struct {
	lastAuth map[uint32]uint64
}

func (r *reference) step(ev *event.Event) bool {
	at, ok := r.lastAuth[ev.TGID]
	authed := ok && ev.Timestamp-at <= uint64(5*time.Minute)
	switch {
	case apiOpen(ev):
		return !authed
	case authOK(ev):
		r.lastAuth[ev.TGID] = ev.Timestamp
	}
	return false
}

// The Machine running the seed spec agrees with the reference on random
// streams, including gaps around the five-minute boundary.
func TestSeedRuleMatchesReference(t *testing.T) {
	for seed := range uint64(20) {
		rng := rand.New(rand.NewPCG(seed, 1))
		spec := seedSpec()
		spec.IdleTimeout = 0 // the reference never forgets
		m, err := New[uint32](spec)
		if err != nil {
			t.Fatal(err)
		}
		ref := &reference{lastAuth: map[uint32]uint64{}}
		var ts uint64
		for i := range 5000 {
			switch rng.IntN(4) {
			case 0:
				ts += uint64(rng.IntN(1000))
			case 1:
				ts += uint64(5*time.Minute) - 2 + uint64(rng.IntN(4)) // straddle the boundary
			default:
				ts += uint64(rng.IntN(int(time.Minute)))
			}
			ev := step{
				tgid: uint32(rng.IntN(5)), at: time.Duration(ts),
				kind: []event.Kind{event.KindConnect, event.KindTCPAttempt, event.KindTCPEstablished, event.KindTCPClose}[rng.IntN(4)],
				port: []uint16{8443, 9000, 80}[rng.IntN(3)],
			}
			if ev.kind == event.KindConnect || ev.kind == event.KindTCPClose {
				ev.result = []int32{0, -event.EINPROGRESS, -event.ECONNREFUSED}[rng.IntN(3)]
			}
			e := ev.event()
			want := ref.step(e)
			got := m.Step(e.TGID, e)
			if got.Violation != want {
				t.Fatalf("seed %d event %d %+v: violation %v, reference says %v (result %+v)", seed, i, ev, got.Violation, want, got)
			}
		}
		if diff := cmp.Diff(Stats{Sessions: m.Stats().Sessions}, m.Stats()); diff != "" {
			t.Errorf("seed %d: unexpected evictions or expiries (-want +got):\n%s", seed, diff)
		}
	}
}
