package detector

import (
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/connwarden/connwarden/rules"
)

// BenchmarkProcess runs a realistic mixed stream through the default pack.
//
//   - steady: time runs on continuously from pass to pass, as on a live
//     host: keys persist, windows slide, rules fire now and then.
//   - churn: each pass starts an hour later, so every key of every rule
//     has expired and is dropped and re-created: the worst case for the
//     key tables.
//   - steady-small: steady with every population a tenth (30 processes,
//     300 clients, ...): a smaller host whose state stays in cache.
//   - graph: steady, with the exported flow graph (settings.graph) on.
//
// Besides wall time it reports process CPU time per event (getrusage):
// on a shared machine wall time includes waiting for a core, CPU time
// does not.
func BenchmarkProcess(b *testing.B) {
	for _, bc := range []struct {
		name  string
		graph bool
		churn bool
		div   int
	}{{"steady", false, false, 1}, {"steady-small", false, false, 10}, {"churn", false, true, 1}, {"graph", true, false, 1}} {
		b.Run(bc.name, func(b *testing.B) {
			set, err := rules.Default()
			if err != nil {
				b.Fatal(err)
			}
			set.Settings.Graph.Enabled = bc.graph
			e, err := New(set, Options{})
			if err != nil {
				b.Fatal(err)
			}
			evs := mixedStreamScaled(1<<16, bc.div)
			for i := range evs {
				e.Process(&evs[i])
			}
			b.ReportAllocs()
			cpu0 := cpuTime()
			b.ResetTimer()
			span := evs[len(evs)-1].Timestamp - evs[0].Timestamp + 2000
			var shift uint64
			for i := 0; i < b.N; i++ {
				j := i & (len(evs) - 1)
				if j == 0 {
					if bc.churn {
						shift += uint64(time.Hour)
					} else {
						shift += span
					}
				}
				ev := &evs[j]
				ev.Timestamp += shift
				e.Process(ev)
				ev.Timestamp -= shift
			}
			b.StopTimer()
			ns := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
			b.ReportMetric(ns, "ns/event")
			b.ReportMetric(1e9/ns, "events/s")
			b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/event")
			st := e.Stats()
			b.ReportMetric(float64(st.KeysTracked), "keys")
			b.ReportMetric(float64(st.Evictions)/float64(b.N), "evictions/event")
		})
	}
}

// cpuTime is the process's user+system CPU time in ns.
func cpuTime() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// BenchmarkStateBytesPerKey measures heap bytes per tracked key: 100k keys
// in one rule, measured with runtime.MemStats around their insertion.
func BenchmarkStateBytesPerKey(b *testing.B) {
	for _, bc := range []struct{ name, rule string }{
		{"threshold-count5", `{threshold: {count: 5, window: 10s, by: [tgid]}}`},
		{"distinct-count15", `{distinct: {field: remote_port, count: 15, window: 1m, by: [tgid]}}`},
	} {
		b.Run(bc.name, func(b *testing.B) {
			const keys = 100_000
			set := compile(b, `
settings: {max_keys_per_rule: 200000}
rules:
- name: r
  description: r
  mode: monitor
  severity: low
  filter: {kind: connect}
  detection: `+bc.rule+"\n")
			var perKey float64
			for i := 0; i < b.N; i++ {
				e, _ := New(set, Options{})
				var before, after runtime.MemStats
				runtime.GC()
				runtime.ReadMemStats(&before)
				ev := connect(1e12, 0, "192.0.2.1:22")
				for k := range uint32(keys) {
					ev.TGID = k + 1
					e.Process(ev)
				}
				runtime.GC()
				runtime.ReadMemStats(&after)
				perKey = float64(after.HeapAlloc-before.HeapAlloc) / keys
				runtime.KeepAlive(e)
			}
			b.ReportMetric(perKey, "bytes/key")
		})
	}
}
