package statemachine

import (
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/connwarden/connwarden/detector/event"
)

// BenchmarkStep runs the seed rule over a steady population of processes:
// each authenticates, opens API connections and re-authenticates, so every
// Step does timeout checks, forbidden checks and transitions on a warm table.
// Every fourth event is an auth connection; the other three are API ones.
func BenchmarkStep(b *testing.B) {
	for _, procs := range []int{100, 10_000} {
		b.Run(itoa(procs)+"procs", func(b *testing.B) {
			spec := seedSpec()
			spec.MaxSessions = procs
			m, err := New[uint32](spec)
			if err != nil {
				b.Fatal(err)
			}
			evs := make([]event.Event, 4*procs)
			for i := range evs {
				port := uint16(8443)
				kind := event.KindTCPAttempt
				if i%4 == 0 {
					port, kind = 9000, event.KindTCPEstablished
				}
				evs[i] = event.Event{
					Kind: kind, Direction: event.DirOutbound, TGID: uint32(i / 4 % procs),
					Remote: netip.AddrPortFrom(netip.MustParseAddr("10.0.0.9"), port),
				}
			}
			var ts uint64
			step := func(i int) {
				ev := &evs[i%len(evs)]
				ts += uint64(time.Millisecond)
				ev.Timestamp = ts
				m.Step(ev.TGID, ev)
			}
			for i := range 2 * len(evs) { // warm the table
				step(i)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				step(i)
			}
		})
	}
}

// BenchmarkSessionBytes reports the heap held per stored session.
func BenchmarkSessionBytes(b *testing.B) {
	const n = 100_000
	for range b.N {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		spec := seedSpec()
		spec.MaxSessions = n
		m, err := New[uint32](spec)
		if err != nil {
			b.Fatal(err)
		}
		ev := event.Event{
			Kind: event.KindTCPEstablished, Direction: event.DirOutbound,
			Remote: netip.AddrPortFrom(netip.MustParseAddr("10.0.0.9"), 9000),
		}
		for k := range uint32(n) {
			ev.Timestamp = uint64(k)
			m.Step(k, &ev)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		if m.Stats().Sessions != n {
			b.Fatalf("%d sessions, want %d", m.Stats().Sessions, n)
		}
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "bytes/session")
		runtime.KeepAlive(m)
	}
}

func itoa(n int) string {
	switch {
	case n >= 1000 && n%1000 == 0:
		return itoa(n/1000) + "k"
	case n < 10:
		return string(rune('0' + n))
	}
	return itoa(n/10) + string(rune('0'+n%10))
}
