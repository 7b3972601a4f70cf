package detector

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/connwarden/connwarden/detector/event"
	"github.com/connwarden/connwarden/rules"
)

// scanRule blocks a remote that probes 3 distinct local ports in a minute.
func scanRule(mode, settings, allow, target, escalation string) string {
	return fmt.Sprintf(`
settings: {%s}
allowlist: [%s]
rules:
- name: scan
  description: port scan
  mode: %s
  severity: high
  filter: {kind: [reset_sent, inbound_accept]}
  detection: {distinct: {field: local_port, count: 3, window: 1m, by: [remote_ip]}}
  actions:
    block: {target: %s, ttl: 10m %s}
`, settings, allow, mode, target, escalation)
}

// probe makes remote hit 3 local ports at ts, ts+1, ts+2 (one alert).
func probe(e *Engine, ts uint64, remote string) {
	for i := range uint64(3) {
		e.Process(inbound(ts+i, event.KindResetSent, remote+":40000", uint16(1000+i)))
	}
}

func TestBlockDecisions(t *testing.T) {
	tests := []struct {
		name  string
		rules string
		opts  Options
		run   func(e *Engine)
		want  []string
	}{
		{
			name:  "enforce blocks the remote",
			rules: scanRule("enforce", "", "", "remote_ip", ""),
			run:   func(e *Engine) { probe(e, 1e12, "203.0.113.9") },
			want:  []string{"scan key=remote_ip=203.0.113.9 count=3 block=203.0.113.9/32 ttl=10m0s repeat=0"},
		},
		{
			name:  "remote_net blocks the /24 and the /64",
			rules: scanRule("enforce", "", "", "remote_net", ""),
			run: func(e *Engine) {
				probe(e, 1e12, "203.0.113.9")
				probe(e, 1e12, "[2001:db8:1:2:3::9]")
			},
			want: []string{
				"scan key=remote_ip=203.0.113.9 count=3 block=203.0.113.0/24 ttl=10m0s repeat=0",
				"scan key=remote_ip=2001:db8:1:2:3::9 count=3 block=2001:db8:1:2::/64 ttl=10m0s repeat=0",
			},
		},
		{
			name:  "monitor mode does not block",
			rules: scanRule("monitor", "", "", "remote_ip", ""),
			run:   func(e *Engine) { probe(e, 1e12, "203.0.113.9") },
			want:  []string{"scan key=remote_ip=203.0.113.9 count=3 suppressed=monitor"},
		},
		{
			name:  "set dry_run",
			rules: scanRule("enforce", "dry_run: true", "", "remote_ip", ""),
			run:   func(e *Engine) { probe(e, 1e12, "203.0.113.9") },
			want:  []string{"scan key=remote_ip=203.0.113.9 count=3 suppressed=dry_run"},
		},
		{
			name:  "engine DryRun",
			rules: scanRule("enforce", "", "", "remote_ip", ""),
			opts:  Options{DryRun: true},
			run:   func(e *Engine) { probe(e, 1e12, "203.0.113.9") },
			want:  []string{"scan key=remote_ip=203.0.113.9 count=3 suppressed=dry_run"},
		},
		{
			name:  "set allowlist",
			rules: scanRule("enforce", "", "203.0.113.0/28", "remote_ip", ""),
			run:   func(e *Engine) { probe(e, 1e12, "203.0.113.9") },
			want:  []string{"scan key=remote_ip=203.0.113.9 count=3 suppressed=allowlisted"},
		},
		{
			name:  "allowlisted host inside a target /24",
			rules: scanRule("enforce", "", "203.0.113.200", "remote_net", ""),
			run:   func(e *Engine) { probe(e, 1e12, "203.0.113.9") },
			want:  []string{"scan key=remote_ip=203.0.113.9 count=3 suppressed=allowlisted"},
		},
		{
			name:  "extra allowlist",
			rules: scanRule("enforce", "", "", "remote_ip", ""),
			opts:  Options{ExtraAllowlist: []netip.Prefix{netip.MustParsePrefix("203.0.113.9/32")}},
			run:   func(e *Engine) { probe(e, 1e12, "203.0.113.9") },
			want:  []string{"scan key=remote_ip=203.0.113.9 count=3 suppressed=allowlisted"},
		},
		{
			name:  "extra allowlist set at runtime",
			rules: scanRule("enforce", "", "", "remote_ip", ""),
			run: func(e *Engine) {
				probe(e, 1e12, "203.0.113.9")
				e.SetExtraAllowlist([]netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")})
				probe(e, 1e12, "198.51.100.1")
			},
			want: []string{
				"scan key=remote_ip=203.0.113.9 count=3 block=203.0.113.9/32 ttl=10m0s repeat=0",
				"scan key=remote_ip=198.51.100.1 count=3 suppressed=allowlisted",
			},
		},
		{
			name:  "rate limit: burst then one per second",
			rules: scanRule("enforce", "block_rate: {per_second: 1, burst: 2}", "", "remote_ip", ""),
			run: func(e *Engine) {
				for i := range 4 {
					probe(e, 1e12+uint64(i)*1000, fmt.Sprintf("203.0.113.%d", i+1))
				}
				probe(e, 1e12+3000+sec, "203.0.113.50") // a second after the last try: one token back
			},
			want: []string{
				"scan key=remote_ip=203.0.113.1 count=3 block=203.0.113.1/32 ttl=10m0s repeat=0",
				"scan key=remote_ip=203.0.113.2 count=3 block=203.0.113.2/32 ttl=10m0s repeat=0",
				"scan key=remote_ip=203.0.113.3 count=3 suppressed=rate_limited",
				"scan key=remote_ip=203.0.113.4 count=3 suppressed=rate_limited",
				"scan key=remote_ip=203.0.113.50 count=3 block=203.0.113.50/32 ttl=10m0s repeat=0",
			},
		},
		{
			name:  "cap on active blocks",
			rules: scanRule("enforce", "max_active_blocks: 2", "", "remote_ip", ""),
			run: func(e *Engine) {
				for i := range 3 {
					probe(e, 1e12, fmt.Sprintf("203.0.113.%d", i+1))
				}
				// After the first two expire (10m), there is room again.
				probe(e, 1e12+uint64(11*time.Minute), "203.0.113.4")
			},
			want: []string{
				"scan key=remote_ip=203.0.113.1 count=3 block=203.0.113.1/32 ttl=10m0s repeat=0",
				"scan key=remote_ip=203.0.113.2 count=3 block=203.0.113.2/32 ttl=10m0s repeat=0",
				"scan key=remote_ip=203.0.113.3 count=3 suppressed=capped",
				"scan key=remote_ip=203.0.113.4 count=3 block=203.0.113.4/32 ttl=10m0s repeat=0",
			},
		},
		{
			name:  "escalation multiplies ttl for repeats within the period, capped",
			rules: scanRule("enforce", "", "", "remote_ip", ", escalation: {factor: 3, period: 2h, max: 1h}"),
			run: func(e *Engine) {
				at := uint64(1e12)
				for range 4 {
					probe(e, at, "203.0.113.9")
					at += uint64(time.Hour + time.Minute) // after the block ends, within the period
				}
				at += uint64(3 * time.Hour) // period passed: first offence again
				probe(e, at, "203.0.113.9")
			},
			want: []string{
				"scan key=remote_ip=203.0.113.9 count=3 block=203.0.113.9/32 ttl=10m0s repeat=0",
				"scan key=remote_ip=203.0.113.9 count=3 block=203.0.113.9/32 ttl=30m0s repeat=1",
				"scan key=remote_ip=203.0.113.9 count=3 block=203.0.113.9/32 ttl=1h0m0s repeat=2",
				"scan key=remote_ip=203.0.113.9 count=3 block=203.0.113.9/32 ttl=1h0m0s repeat=3",
				"scan key=remote_ip=203.0.113.9 count=3 block=203.0.113.9/32 ttl=10m0s repeat=0",
			},
		},
		{
			name:  "an active block is not repeated",
			rules: scanRule("enforce", "", "", "remote_ip", ""),
			run: func(e *Engine) {
				probe(e, 1e12, "203.0.113.9")
				probe(e, 1e12+uint64(2*time.Minute), "203.0.113.9")
			},
			want: []string{
				"scan key=remote_ip=203.0.113.9 count=3 block=203.0.113.9/32 ttl=10m0s repeat=0",
				"scan key=remote_ip=203.0.113.9 count=3 suppressed=already_blocked",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, c := newEngine(t, compile(t, tt.rules), tt.opts)
			tt.run(e)
			if diff := cmp.Diff(tt.want, c.summaries()); diff != "" {
				t.Errorf("alerts (-want +got):\n%s", diff)
			}
			var blocked []string
			for _, a := range c.alerts {
				if a.Decision != nil {
					blocked = append(blocked, a.Decision.Prefix.String())
				}
			}
			var called []string
			for _, d := range c.blocks {
				called = append(called, d.Prefix.String())
			}
			if diff := cmp.Diff(blocked, called); diff != "" {
				t.Errorf("Blocker.Block calls differ from alert decisions (-alerts +calls):\n%s", diff)
			}
		})
	}
}

func TestUnblockOnExpiry(t *testing.T) {
	e, c := newEngine(t, compile(t, scanRule("enforce", "", "", "remote_ip", "")), Options{})
	probe(e, 1e12, "203.0.113.9")
	e.Advance(1e12 + 2 + uint64(10*time.Minute) - 1)
	if len(c.unblocks) != 0 {
		t.Fatalf("unblocked %v before the ttl passed", c.unblocks)
	}
	e.Advance(1e12 + 2 + uint64(10*time.Minute))
	if diff := cmp.Diff([]netip.Prefix{netip.MustParsePrefix("203.0.113.9/32")}, c.unblocks, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
		t.Errorf("unblocks (-want +got):\n%s", diff)
	}
	if s := e.Stats(); s.ActiveBlocks != 0 || s.Blocks != 1 || s.Unblocks != 1 {
		t.Errorf("stats: active=%d blocks=%d unblocks=%d, want 0 1 1", s.ActiveBlocks, s.Blocks, s.Unblocks)
	}
}

func TestBlockErrorIsReported(t *testing.T) {
	c := &collector{fail: errors.New("map full")}
	e, got := newEngine(t, compile(t, scanRule("enforce", "", "", "remote_ip", "")), Options{Blocker: c})
	probe(e, 1e12, "203.0.113.9")
	if diff := cmp.Diff([]string{"scan key=remote_ip=203.0.113.9 count=3 suppressed=block_error"}, got.summaries()); diff != "" {
		t.Errorf("alerts (-want +got):\n%s", diff)
	}
	if s := e.Stats(); s.BlockErrors != 1 || s.ActiveBlocks != 0 {
		t.Errorf("stats: errors=%d active=%d, want 1 0", s.BlockErrors, s.ActiveBlocks)
	}
}

func TestEvictionBoundsKeys(t *testing.T) {
	e, c := newEngine(t, compile(t, thresholdRule(2, 10*time.Second, "")), Options{MaxKeysPerRule: 100})
	for pid := range uint32(1000) {
		e.Process(connect(1e12+uint64(pid), pid+1, "192.0.2.1:22"))
	}
	s := e.Stats()
	if s.KeysTracked != 100 || s.Evictions != 900 || s.Rules[0].Evictions != 900 {
		t.Errorf("keys=%d evictions=%d (rule %d), want 100, 900, 900", s.KeysTracked, s.Evictions, s.Rules[0].Evictions)
	}
	// The most recent keys survive: pid 1000 reaches its count.
	e.Process(connect(1e12+2000, 1000, "192.0.2.1:22"))
	if len(c.alerts) != 1 || c.alerts[0].Key != "pid=1000" {
		t.Errorf("alerts %v, want one for pid=1000", c.summaries())
	}
}

func TestIdleKeysExpire(t *testing.T) {
	e, _ := newEngine(t, compile(t, thresholdRule(5, 10*time.Second, "")), Options{})
	for pid := range uint32(50) {
		e.Process(connect(1e12, pid+1, "192.0.2.1:22"))
	}
	// Much later, each event drops up to two idle keys.
	later := 1e12 + 20*sec + ReorderSlack
	for i := range 30 {
		e.Process(connect(later+uint64(i), 9999, "192.0.2.1:22"))
	}
	s := e.Stats()
	if s.Rules[0].Expired != 50 || s.KeysTracked != 1 {
		t.Errorf("expired=%d keys=%d, want 50 and 1", s.Rules[0].Expired, s.KeysTracked)
	}
}

func TestReload(t *testing.T) {
	const two = `
rules:
- name: burst
  description: burst
  mode: monitor
  severity: %s
  filter: {kind: connect}
  detection: {threshold: {count: 3, window: 10s, by: [pid]}}
- name: other
  description: other
  mode: monitor
  severity: low
  filter: {kind: connect}
  detection: {threshold: {count: %d, window: 10s, by: [pid]}}
`
	e, c := newEngine(t, compile(t, fmt.Sprintf(two, "low", 3)), Options{})
	e.Process(connect(1e12, 1, "192.0.2.1:22"))
	e.Process(connect(1e12+1, 1, "192.0.2.1:22"))

	if err := e.Reload(nil); err == nil {
		t.Fatal("Reload(nil) succeeded")
	}
	// Severity changes, detection does not: burst keeps its two events.
	// other's count changes: it starts afresh.
	if err := e.Reload(compile(t, fmt.Sprintf(two, "critical", 4))); err != nil {
		t.Fatal(err)
	}
	e.Process(connect(1e12+2, 1, "192.0.2.1:22"))
	want := []string{"burst key=pid=1 count=3"}
	if diff := cmp.Diff(want, c.summaries()); diff != "" {
		t.Fatalf("alerts (-want +got):\n%s", diff)
	}
	if c.alerts[0].Severity != rules.SeverityCritical {
		t.Errorf("severity %s, want the reloaded critical", c.alerts[0].Severity)
	}
	s := e.Stats()
	got := map[string]uint64{}
	for _, r := range s.Rules {
		got[r.Name] = r.Matches
	}
	if diff := cmp.Diff(map[string]uint64{"burst": 3, "other": 1}, got); diff != "" {
		t.Errorf("matches after reload (-want +got):\n%s", diff)
	}
	if s.Alerts[rules.SeverityCritical] != 1 {
		t.Errorf("alerts by severity %v", s.Alerts)
	}
}

func TestProcessDoesNotAllocate(t *testing.T) {
	set, err := rules.Default()
	if err != nil {
		t.Fatal(err)
	}
	e, err := New(set, Options{})
	if err != nil {
		t.Fatal(err)
	}
	evs := mixedStream(1 << 15)
	i := 0
	// One Event reused, as the agent's reader does: Process hands the
	// pointer to matchers behind interfaces, so a fresh stack Event per
	// call would escape to the heap in the caller.
	ev := new(event.Event)
	step := func() {
		*ev = evs[i%len(evs)]
		ev.Timestamp += uint64(i/len(evs)) * uint64(time.Hour)
		e.Process(ev)
		i++
	}
	// Warm up: three passes, an hour apart, bring every table (the rules',
	// the flow graph's) to its working size, with keys expiring between.
	for range 3 * len(evs) {
		step()
	}
	if allocs := testing.AllocsPerRun(20000, step); allocs != 0 {
		t.Errorf("Process allocates %v times per event", allocs)
	}
}

func TestReplayDeterministic(t *testing.T) {
	set, err := rules.Default()
	if err != nil {
		t.Fatal(err)
	}
	var in bytes.Buffer
	for _, ev := range attackStream() {
		b, _ := ev.MarshalJSON()
		in.Write(append(b, '\n'))
	}
	var out [2]bytes.Buffer
	for i := range out {
		if err := Replay(bytes.NewReader(in.Bytes()), set, &out[i], Options{}); err != nil {
			t.Fatal(err)
		}
	}
	if out[0].Len() == 0 || !strings.Contains(out[0].String(), `"type":"block"`) {
		t.Fatalf("replay produced no block:\n%s", out[0].String())
	}
	if diff := cmp.Diff(out[0].String(), out[1].String()); diff != "" {
		t.Errorf("two replays differ (-first +second):\n%s", diff)
	}
}

func TestReplayReportsBadLines(t *testing.T) {
	set, _ := rules.Default()
	in := "# comment\n\n{\"ts\":1,\"kind\":\"connect\",\"local\":\"\",\"remote\":\"\"}\n{\"ts\":2,\"kind\":\"bogus\",\"local\":\"\",\"remote\":\"\"}\n"
	err := Replay(strings.NewReader(in), set, &bytes.Buffer{}, Options{})
	if err == nil || !strings.Contains(err.Error(), "line 4") {
		t.Errorf("error %v, want one naming line 4", err)
	}
}

func TestDefaultFixtures(t *testing.T) {
	set, err := rules.Default()
	if err != nil {
		t.Fatal(err)
	}
	res, err := RunFixtures(set, rules.DefaultFixtures())
	if err != nil {
		t.Fatal(err)
	}
	covered := map[string]bool{}
	for _, r := range res {
		t.Run(r.Name, func(t *testing.T) {
			if diff := cmp.Diff(r.Want, r.Got); diff != "" {
				t.Errorf("alerts (-want +got):\n%s", diff)
			}
		})
		for _, w := range r.Want {
			covered[strings.Fields(w)[0]] = true
		}
	}
	for _, r := range set.Rules {
		if r.Enabled && !covered[r.Name] {
			t.Errorf("default rule %s has no fixture that makes it fire", r.Name)
		}
	}
}

// TestConcurrentControl runs Reload, Stats, Rules, SetExtraAllowlist and
// RecordLoss from other goroutines while events flow; the race detector
// (go test -race) is the assertion, plus a sanity check of the counts.
func TestConcurrentControl(t *testing.T) {
	set, err := rules.Default()
	if err != nil {
		t.Fatal(err)
	}
	e, err := New(set, Options{})
	if err != nil {
		t.Fatal(err)
	}
	evs := attackStream()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 5 {
			if err := e.Reload(set); err != nil {
				t.Error(err)
			}
			e.SetExtraAllowlist([]netip.Prefix{netip.MustParsePrefix(fmt.Sprintf("192.0.2.%d/32", i))})
			_ = e.Stats()
			_ = e.Rules()
			e.RecordLoss(uint64(i), 1)
		}
	}()
	for i := range evs {
		e.Process(&evs[i])
	}
	<-done
	if s := e.Stats(); s.Events != uint64(len(evs)) || s.LostEvents != 5 {
		t.Errorf("events=%d lost=%d, want %d and 5", s.Events, s.LostEvents, len(evs))
	}
}

func TestStatsCountLimits(t *testing.T) {
	e, _ := newEngine(t, compile(t, scanRule("enforce", "block_rate: {per_second: 1, burst: 1}, max_active_blocks: 2", "", "remote_ip", "")), Options{})
	probe(e, 1e12, "203.0.113.1")     // blocked
	probe(e, 1e12, "203.0.113.2")     // rate limited
	probe(e, 1e12+sec, "203.0.113.3") // blocked: a token came back
	probe(e, 1e12+sec, "203.0.113.4") // capped: two active
	s := e.Stats()
	got := []uint64{s.Blocks, s.RateLimited, s.Capped, uint64(s.ActiveBlocks), s.Rules[0].Alerts, s.Rules[0].Blocks, s.Alerts[rules.SeverityHigh]}
	if diff := cmp.Diff([]uint64{2, 1, 1, 2, 4, 2, 4}, got); diff != "" {
		t.Errorf("blocks, rate limited, capped, active, rule alerts, rule blocks, high alerts (-want +got):\n%s", diff)
	}
}
