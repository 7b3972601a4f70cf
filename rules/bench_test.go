package rules

import (
	"testing"

	"github.com/connwarden/connwarden/detector/event"
)

// BenchmarkFilterMatch measures the default pack's busiest filter (the
// outbound burst rule: kind, direction, three exclusions with comm globs)
// on an event that passes every test, the longest path.
func BenchmarkFilterMatch(b *testing.B) {
	set, err := Default()
	if err != nil {
		b.Fatal(err)
	}
	f := set.Rule("outbound-connect-burst").Filter
	e := ev(event.KindTCPAttempt, "python3", "192.0.2.1:22", 0)
	if !f.Match(e) {
		b.Fatal("benchmark event does not match")
	}
	b.ReportAllocs()
	for b.Loop() {
		f.Match(e)
	}
}
