package graph

import (
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/connwarden/connwarden/detector/event"
)

// benchEvents is a mixed stream: procs processes connecting to hosts remote
// hosts on a few ports, with one inbound accept in eight.
func benchEvents(n, procs, hosts int) []event.Event {
	evs := make([]event.Event, n)
	x := uint32(2463534242)
	for i := range evs {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		h := int(x>>4) % hosts
		addr := netip.AddrFrom4([4]byte{10, byte(h >> 16), byte(h >> 8), byte(h)})
		ev := &evs[i]
		if x%8 == 0 {
			ev.Kind, ev.Direction = event.KindInboundAccept, event.DirInbound
			ev.Local = netip.MustParseAddrPort("192.0.2.1:22")
			ev.Remote = netip.AddrPortFrom(addr, 40000)
			continue
		}
		ev.Kind, ev.Direction = event.KindTCPAttempt, event.DirOutbound
		p := int(x>>24) % procs
		ev.TGID = uint32(1000 + p)
		ev.SetComm("proc" + itoa(p))
		ev.Remote = netip.AddrPortFrom(addr, []uint16{22, 80, 443, 5432}[x>>30])
	}
	return evs
}

// run feeds evs round and round with advancing timestamps; it warms up for
// two passes before timing, so the tables are at their steady size.
func run(b *testing.B, evs []event.Event, observe func(*event.Event)) {
	var ts uint64
	step := func(i int) {
		ev := &evs[i%len(evs)]
		ts += uint64(time.Microsecond)
		ev.Timestamp = ts
		observe(ev)
	}
	for i := range 2 * len(evs) {
		step(i)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		step(i)
	}
}

func BenchmarkGraphObserve(b *testing.B) {
	for _, c := range []struct {
		name         string
		hosts        int
		nodes, edges int
	}{
		{"fits", 50, 4096, 16384},      // 50 procs × 50 hosts × 4 ports: no eviction
		{"churn", 100_000, 1024, 4096}, // far more flows than the caps
	} {
		b.Run(c.name, func(b *testing.B) {
			g, err := New(Config{MaxNodes: c.nodes, MaxEdges: c.edges, MaxAge: time.Second})
			if err != nil {
				b.Fatal(err)
			}
			run(b, benchEvents(1<<16, 50, c.hosts), g.Observe)
		})
	}
}

func BenchmarkFanOutObserve(b *testing.B) {
	d, err := NewFanOut(FanOutConfig{
		Name: "f", Direction: event.DirOutbound, Window: 10 * time.Millisecond,
		Threshold: 20, CountPorts: true, MaxSubjects: 1024,
	})
	if err != nil {
		b.Fatal(err)
	}
	var buf []Finding
	run(b, benchEvents(1<<16, 50, 1000), func(ev *event.Event) { buf = d.Observe(ev, buf[:0]) })
}

func BenchmarkNewEdgeObserve(b *testing.B) {
	d, err := NewNewEdge(NewEdgeConfig{Name: "n", Learning: time.Millisecond, PrefixV4: 24, MaxPairs: 1 << 14})
	if err != nil {
		b.Fatal(err)
	}
	var buf []Finding
	run(b, benchEvents(1<<16, 50, 100_000), func(ev *event.Event) { buf = d.Observe(ev, buf[:0]) })
}

func BenchmarkPivotObserve(b *testing.B) {
	d, err := NewPivot(PivotConfig{
		Name: "p", Window: time.Millisecond,
		Services: []PivotService{{Port: 22, Comms: []string{"proc1", "proc2"}}, {Port: 0}},
		Internal: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, MaxBindings: 64,
	})
	if err != nil {
		b.Fatal(err)
	}
	for i := range 64 {
		d.Bind(uint32(1000+i), 22)
	}
	var buf []Finding
	run(b, benchEvents(1<<16, 50, 1000), func(ev *event.Event) { buf = d.Observe(ev, buf[:0]) })
}

// heapPer reports the heap retained by build, divided by n, as unit.
func heapPer(b *testing.B, n int, unit string, build func() any) {
	for range b.N {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		v := build()
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(n), unit)
		runtime.KeepAlive(v)
	}
}

// BenchmarkGraphBytes reports heap per edge for a graph of one process node
// per 10 edges' worth of hosts: 100k edges, 10k processes, 100k hosts.
func BenchmarkGraphBytes(b *testing.B) {
	const edges = 100_000
	heapPer(b, edges, "bytes/edge", func() any {
		g, err := New(Config{MaxNodes: 2 * edges, MaxEdges: edges})
		if err != nil {
			b.Fatal(err)
		}
		var ev event.Event
		ev.Kind, ev.Direction = event.KindTCPAttempt, event.DirOutbound
		for i := range edges {
			ev.SetComm("p" + itoa(i%10_000))
			ev.Remote = netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 443)
			g.Observe(&ev)
		}
		if g.Stats().Edges != edges {
			b.Fatalf("%d edges", g.Stats().Edges)
		}
		return g
	})
}

// BenchmarkFanOutBytes reports heap per subject holding Threshold peers.
func BenchmarkFanOutBytes(b *testing.B) {
	const subjects, threshold = 10_000, 20
	heapPer(b, subjects, "bytes/subject", func() any {
		d, err := NewFanOut(FanOutConfig{
			Name: "f", Direction: event.DirInbound, Window: time.Hour,
			Threshold: threshold, CountPorts: true, MaxSubjects: subjects,
		})
		if err != nil {
			b.Fatal(err)
		}
		ev := event.Event{Kind: event.KindResetSent, Direction: event.DirInbound}
		for i := range subjects {
			ev.Remote = netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 1)
			for p := range threshold - 1 { // stay under the threshold
				ev.Local = netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), uint16(p+1))
				d.Observe(&ev, nil)
			}
		}
		return d
	})
}

// BenchmarkNewEdgeBytes reports heap per remembered pair.
func BenchmarkNewEdgeBytes(b *testing.B) {
	const pairs = 100_000
	heapPer(b, pairs, "bytes/pair", func() any {
		d, err := NewNewEdge(NewEdgeConfig{Name: "n", Learning: time.Hour, MaxPairs: pairs})
		if err != nil {
			b.Fatal(err)
		}
		var ev event.Event
		ev.Kind, ev.Direction = event.KindTCPAttempt, event.DirOutbound
		ev.SetComm("app")
		for i := range pairs {
			ev.Remote = netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 443)
			d.Observe(&ev, nil)
		}
		return d
	})
}
