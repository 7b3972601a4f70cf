package detector

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/connwarden/connwarden/detector/event"
)

// TestThresholdBoundaries pins the closed window: Count events spread over
// exactly Window fire; spread over Window + 1ns they do not.
func TestThresholdBoundaries(t *testing.T) {
	const T = 10 * sec
	base := uint64(1_000_000_000_000)
	tests := []struct {
		name  string
		count int
		ts    []uint64 // offsets from base, one pid
		want  []int    // indexes of events that alert
	}{
		{"N-1 events never fire", 5, []uint64{0, 1, 2, 3}, nil},
		{"N events at one instant", 5, []uint64{0, 0, 0, 0, 0}, []int{4}},
		{"N events within T", 5, []uint64{0, 1, 2, 3, 4}, []int{4}},
		{"N events spread over exactly T", 5, []uint64{0, 1, 2, 3, T}, []int{4}},
		{"N events spread over T+1ns", 5, []uint64{0, 1, 2, 3, T + 1}, nil},
		{"sliding: the window moves on", 3, []uint64{0, T / 2, T + 1, T + T/2}, []int{3}},
		{"one alert per window", 3, []uint64{0, 1, 2, 3, 4, T + 1}, []int{2}},
		{"re-fires once the window has passed since the alert", 3, []uint64{0, 1, 2, T + 1, T + 2}, []int{2, 4}},
		{"count 1 alerts once per window", 1, []uint64{0, T - 1, T, 2 * T}, []int{0, 2, 3}},
		{"late event joins its place in time", 3, []uint64{0, 20 * sec, 19 * sec, 18 * sec}, []int{3}},
		{"event older than the kept N changes nothing", 2, []uint64{100 * sec, 101 * sec, 1 * sec}, []int{1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, c := newEngine(t, compile(t, thresholdRule(tt.count, time.Duration(T), "")), Options{})
			var got []int
			for i, off := range tt.ts {
				n := len(c.alerts)
				e.Process(connect(base+off, 42, "192.0.2.1:22"))
				if len(c.alerts) > n {
					got = append(got, i)
				}
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("alerting events (-want +got):\n%s", diff)
			}
		})
	}
}

func TestThresholdAlertFields(t *testing.T) {
	e, c := newEngine(t, compile(t, thresholdRule(3, 10*time.Second, "")), Options{})
	e.RecordLoss(500, 7)    // before the window: not counted
	e.RecordLoss(10*sec, 2) // inside
	for _, ts := range []uint64{9 * sec, 10 * sec, 11 * sec} {
		e.Process(connect(ts, 42, "192.0.2.1:22"))
	}
	if len(c.alerts) != 1 {
		t.Fatalf("got %d alerts, want 1", len(c.alerts))
	}
	a := c.alerts[0]
	got := fmt.Sprintf("%s key=%q count=%d first=%d last=%d lost=%d window=%s ts=%d",
		a.Rule, a.Key, a.Count, a.First, a.Last, a.Lost, a.Window, a.Event.Timestamp)
	want := fmt.Sprintf("burst key=\"pid=42\" count=3 first=%d last=%d lost=2 window=10s ts=%d", 9*sec, 11*sec, 11*sec)
	if got != want {
		t.Errorf("alert\n got %s\nwant %s", got, want)
	}
}

func TestDistinctBoundaries(t *testing.T) {
	const T = 60 * sec
	rule := `
rules:
- name: scan
  description: scan
  mode: monitor
  severity: high
  filter: {kind: [reset_sent, inbound_accept]}
  detection: {distinct: {field: local_port, count: 3, window: 1m, by: [remote_ip]}}
`
	type in struct {
		ts    uint64
		lport uint16
	}
	tests := []struct {
		name string
		evs  []in
		want []int
	}{
		{"N-1 distinct never fire", []in{{0, 1}, {1, 2}, {2, 1}, {3, 2}}, nil},
		{"N distinct within T", []in{{0, 1}, {1, 2}, {2, 3}}, []int{2}},
		{"N distinct spread over exactly T", []in{{0, 1}, {1, 2}, {T, 3}}, []int{2}},
		{"N distinct spread over T+1ns", []in{{0, 1}, {1, 2}, {T + 1, 3}}, nil},
		{"a repeat refreshes the value", []in{{0, 1}, {T - 1, 2}, {T, 1}, {T + 1, 3}}, []int{3}},
		{"repeats do not count twice", []in{{0, 1}, {1, 1}, {2, 1}, {3, 2}}, nil},
		{"one alert per window", []in{{0, 1}, {1, 2}, {2, 3}, {3, 4}, {4, 5}}, []int{2}},
		{"re-fires after the window", []in{{0, 1}, {1, 2}, {2, 3}, {T + 2, 4}, {T + 3, 5}, {T + 4, 6}}, []int{2, 5}},
		{"more values than count keep the newest", []in{{0, 1}, {1, 2}, {2, 3}, {3, 4}, {4, 5}, {T + 2, 6}}, []int{2, 5}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, c := newEngine(t, compile(t, rule), Options{})
			var got []int
			for i, x := range tt.evs {
				n := len(c.alerts)
				e.Process(inbound(1e12+x.ts, event.KindResetSent, "203.0.113.9:50000", x.lport))
				if len(c.alerts) > n {
					got = append(got, i)
				}
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("alerting events (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDistinctAlertValues(t *testing.T) {
	e, c := newEngine(t, compile(t, `
rules:
- name: sweep
  description: sweep
  mode: monitor
  severity: high
  filter: {kind: connect}
  detection: {distinct: {field: remote_endpoint, count: 3, window: 1m, by: [tgid]}}
`), Options{})
	for i, r := range []string{"192.0.2.10:22", "192.0.2.9:22", "[2001:db8::1]:80", "192.0.2.9:22"} {
		e.Process(connect(uint64(i)*sec, 7, r))
	}
	if len(c.alerts) != 1 {
		t.Fatalf("got %d alerts, want 1", len(c.alerts))
	}
	want := []string{"192.0.2.9:22", "192.0.2.10:22", "[2001:db8::1]:80"}
	if diff := cmp.Diff(want, c.alerts[0].Values); diff != "" {
		t.Errorf("values (-want +got):\n%s", diff)
	}
}

// naive is the reference: it keeps every timestamp of every key and
// applies the documented definitions literally.
type naive struct {
	count  int
	window uint64
	seen   map[uint32][]uint64
	alert  map[uint32]uint64
}

func (n *naive) observe(key uint32, ts uint64) bool {
	n.seen[key] = append(n.seen[key], ts)
	now := slices.Max(n.seen[key])
	c := 0
	for _, x := range n.seen[key] {
		if x+n.window >= now {
			c++
		}
	}
	if c < n.count {
		return false
	}
	if at, ok := n.alert[key]; ok && now < at+n.window {
		return false
	}
	n.alert[key] = now
	return true
}

// TestThresholdMatchesReference runs random streams, in order and with
// small reordering, through the engine and the naive reference.
func TestThresholdMatchesReference(t *testing.T) {
	for seed := range uint64(200) {
		rng := rand.New(rand.NewPCG(seed, 99))
		// Time moves in steps of unit and the window is a whole number of
		// units give or take 1ns, so streams hit "exactly T" and "T+1ns".
		const unit = 100_000
		count := 1 + rng.IntN(6)
		window := uint64(11+rng.IntN(5))*unit + uint64(rng.IntN(3)) - 1
		jitter := seed%2 == 1
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			e, c := newEngine(t, compile(t, thresholdRule(count, time.Duration(window), "")), Options{})
			ts := uint64(100 * unit)
			ref := &naive{count: count, window: window, seen: map[uint32][]uint64{}, alert: map[uint32]uint64{}}
			var want, got []string
			for i := range 300 {
				ts += uint64(rng.IntN(6)) * unit
				at := ts
				if jitter && rng.IntN(4) == 0 {
					at -= uint64(rng.IntN(12)) * unit
				}
				pid := uint32(1 + rng.IntN(3))
				if ref.observe(pid, at) {
					want = append(want, fmt.Sprintf("#%d pid=%d", i, pid))
				}
				n := len(c.alerts)
				e.Process(connect(at, pid, "192.0.2.1:22"))
				if len(c.alerts) > n {
					got = append(got, fmt.Sprintf("#%d pid=%d", i, pid))
				}
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("count=%d window=%d jitter=%v: alerts (-reference +engine):\n%s", count, window, jitter, diff)
			}
		})
	}
}

// TestDistinctMatchesReference does the same for distinct (in-order streams).
func TestDistinctMatchesReference(t *testing.T) {
	rule := `
rules:
- name: d
  description: d
  mode: monitor
  severity: low
  filter: {kind: connect}
  detection: {distinct: {field: remote_port, count: %d, window: %dns, by: [pid]}}
`
	for seed := range uint64(200) {
		rng := rand.New(rand.NewPCG(seed, 7))
		const unit = 100_000
		count := 2 + rng.IntN(5)
		window := uint64(11+rng.IntN(5))*unit + uint64(rng.IntN(3)) - 1
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			e, c := newEngine(t, compile(t, fmt.Sprintf(rule, count, window)), Options{})
			last := map[uint32]map[uint16]uint64{}
			alertAt := map[uint32]uint64{}
			ts := uint64(1000)
			var want, got []string
			for i := range 300 {
				ts += uint64(rng.IntN(6)) * unit
				pid, port := uint32(1+rng.IntN(2)), uint16(1+rng.IntN(count+2))
				if last[pid] == nil {
					last[pid] = map[uint16]uint64{}
				}
				last[pid][port] = ts
				n := 0
				for _, at := range last[pid] {
					if at+window >= ts {
						n++
					}
				}
				if at, ok := alertAt[pid]; n >= count && (!ok || ts >= at+window) {
					alertAt[pid] = ts
					want = append(want, fmt.Sprintf("#%d pid=%d", i, pid))
				}
				k := len(c.alerts)
				e.Process(connect(ts, pid, fmt.Sprintf("192.0.2.1:%d", port)))
				if len(c.alerts) > k {
					got = append(got, fmt.Sprintf("#%d pid=%d", i, pid))
				}
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("count=%d window=%d: alerts (-reference +engine):\n%s", count, window, diff)
			}
		})
	}
}
