package graph

import (
	"testing"

	"github.com/connwarden/connwarden/detector/event"
	"github.com/google/go-cmp/cmp"
)

// findingView is a Finding as the tests compare it.
type findingView struct {
	At       uint64
	Subject  string
	TGID     uint32
	Peer     string
	Distinct int
}

func viewFindings(fs []Finding) []findingView {
	var out []findingView
	for _, f := range fs {
		out = append(out, findingView{f.Timestamp, f.Subject.String(), f.TGID, f.Peer.String(), f.Distinct})
	}
	return out
}

func TestFanOut(t *testing.T) {
	const attempt = event.KindTCPAttempt
	out := func(ts uint64, comm string, tgid uint32, remote string) *event.Event {
		return outbound(ts, attempt, comm, tgid, remote)
	}
	base := FanOutConfig{Name: "fan", Direction: event.DirOutbound, Window: 100, Threshold: 3, MaxSubjects: 10}
	with := func(edit func(*FanOutConfig)) FanOutConfig {
		c := base
		edit(&c)
		return c
	}
	tests := []struct {
		name   string
		cfg    FanOutConfig
		events []*event.Event
		want   []findingView
		stats  FanOutStats
	}{
		{
			name: "N distinct peers spanning exactly T fire",
			cfg:  base,
			events: []*event.Event{
				out(1000, "nmap", 5, "10.0.0.1:22"),
				out(1050, "nmap", 5, "10.0.0.2:22"),
				out(1100, "nmap", 5, "10.0.0.3:22"),
			},
			want:  []findingView{{1100, "process:nmap", 5, "10.0.0.3:0", 3}},
			stats: FanOutStats{Subjects: 1},
		},
		{
			name: "N distinct peers spanning T+1ns do not",
			cfg:  base,
			events: []*event.Event{
				out(1000, "nmap", 5, "10.0.0.1:22"),
				out(1050, "nmap", 5, "10.0.0.2:22"),
				out(1101, "nmap", 5, "10.0.0.3:22"),
			},
			stats: FanOutStats{Subjects: 1},
		},
		{
			name: "a peer seen again stays in the window",
			cfg:  base,
			events: []*event.Event{
				out(1000, "nmap", 5, "10.0.0.1:22"),
				out(1050, "nmap", 5, "10.0.0.2:22"),
				out(1090, "nmap", 5, "10.0.0.1:22"),
				out(1150, "nmap", 5, "10.0.0.3:22"),
			},
			want:  []findingView{{1150, "process:nmap", 5, "10.0.0.3:0", 3}},
			stats: FanOutStats{Subjects: 1},
		},
		{
			name: "repeats of one peer are one peer",
			cfg:  base,
			events: []*event.Event{
				out(1, "curl", 5, "10.0.0.1:443"),
				out(2, "curl", 5, "10.0.0.1:443"),
				out(3, "curl", 5, "10.0.0.1:443"),
				out(4, "curl", 5, "10.0.0.1:80"),
			},
			stats: FanOutStats{Subjects: 1},
		},
		{
			name: "ports count as peers with CountPorts",
			cfg:  with(func(c *FanOutConfig) { c.CountPorts = true }),
			events: []*event.Event{
				out(1, "curl", 5, "10.0.0.1:443"),
				out(2, "curl", 5, "10.0.0.1:80"),
				out(3, "curl", 5, "10.0.0.1:22"),
			},
			want:  []findingView{{3, "process:curl", 5, "10.0.0.1:22", 3}},
			stats: FanOutStats{Subjects: 1},
		},
		{
			name: "fires once per window, again after it",
			cfg:  base,
			events: []*event.Event{
				out(1000, "nmap", 5, "10.0.0.1:22"),
				out(1001, "nmap", 5, "10.0.0.2:22"),
				out(1002, "nmap", 5, "10.0.0.3:22"),
				out(1003, "nmap", 5, "10.0.0.4:22"),
				out(1102, "nmap", 5, "10.0.0.5:22"),
				out(1103, "nmap", 5, "10.0.0.6:22"),
			},
			want: []findingView{
				{1002, "process:nmap", 5, "10.0.0.3:0", 3},
				{1103, "process:nmap", 5, "10.0.0.6:0", 3},
			},
			stats: FanOutStats{Subjects: 1},
		},
		{
			name: "processes with one comm are one subject",
			cfg:  base,
			events: []*event.Event{
				out(1, "curl", 5, "10.0.0.1:443"),
				out(2, "curl", 6, "10.0.0.2:443"),
				out(3, "curl", 7, "10.0.0.3:443"),
			},
			want:  []findingView{{3, "process:curl", 7, "10.0.0.3:0", 3}},
			stats: FanOutStats{Subjects: 1},
		},
		{
			name: "PerTGID counts them apart",
			cfg:  with(func(c *FanOutConfig) { c.PerTGID = true }),
			events: []*event.Event{
				out(1, "curl", 5, "10.0.0.1:443"),
				out(2, "curl", 6, "10.0.0.2:443"),
				out(3, "curl", 7, "10.0.0.3:443"),
			},
			stats: FanOutStats{Subjects: 3},
		},
		{
			name: "other kinds do not count by default",
			cfg:  base,
			events: []*event.Event{
				outbound(1, event.KindTCPEstablished, "curl", 5, "10.0.0.1:443"),
				outbound(2, event.KindConnect, "curl", 5, "10.0.0.2:443"),
				outbound(3, event.KindTCPClose, "curl", 5, "10.0.0.3:443"),
				inbound(4, event.KindInboundAccept, "10.0.0.4:1", "192.0.2.1:22"),
			},
		},
		{
			name: "inbound port scan",
			cfg: FanOutConfig{
				Name: "scan", Direction: event.DirInbound, Window: 100, Threshold: 3,
				CountPorts: true, MaxSubjects: 10,
			},
			events: []*event.Event{
				inbound(1, event.KindResetSent, "198.51.100.7:40000", "192.0.2.1:21"),
				inbound(2, event.KindInboundAccept, "198.51.100.7:40001", "192.0.2.1:22"),
				inbound(3, event.KindResetSent, "198.51.100.8:40002", "192.0.2.1:23"),
				inbound(4, event.KindResetSent, "198.51.100.7:40003", "192.0.2.1:25"),
			},
			want:  []findingView{{4, "host:198.51.100.7", 0, "192.0.2.1:25", 3}},
			stats: FanOutStats{Subjects: 2},
		},
		{
			name: "an evicted subject starts over",
			cfg:  with(func(c *FanOutConfig) { c.MaxSubjects = 1 }),
			events: []*event.Event{
				out(1, "a", 1, "10.0.0.1:1"),
				out(2, "a", 1, "10.0.0.2:1"),
				out(3, "b", 2, "10.0.0.1:1"),
				out(4, "a", 1, "10.0.0.3:1"),
				out(5, "a", 1, "10.0.0.4:1"),
			},
			stats: FanOutStats{Subjects: 1, Evicted: 2},
		},
		{
			name: "subjects whose peers left the window expire",
			cfg:  base,
			events: []*event.Event{
				out(1, "a", 1, "10.0.0.1:1"),
				out(2, "b", 2, "10.0.0.1:1"),
				out(102, "c", 3, "10.0.0.1:1"), // a expires (idle 101)
			},
			stats: FanOutStats{Subjects: 2, Expired: 1},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := NewFanOut(tt.cfg)
			if err != nil {
				t.Fatal(err)
			}
			var got []Finding
			for _, ev := range tt.events {
				got = d.Observe(ev, got)
			}
			if diff := cmp.Diff(tt.want, viewFindings(got)); diff != "" {
				t.Errorf("findings (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.stats, d.Stats()); diff != "" {
				t.Errorf("stats (-want +got):\n%s", diff)
			}
			for _, f := range got {
				if f.Rule != tt.cfg.Name || f.Kind != FindingFanOut {
					t.Errorf("finding rule, kind = %q, %s", f.Rule, f.Kind)
				}
			}
		})
	}
}

// A long random-ish stream checked against a brute-force count of distinct
// peers in the window.
func TestFanOutMatchesBruteForce(t *testing.T) {
	const window, threshold = 50, 4
	d, err := NewFanOut(FanOutConfig{Name: "f", Direction: event.DirOutbound, Window: window, Threshold: threshold, MaxSubjects: 8})
	if err != nil {
		t.Fatal(err)
	}
	type seen struct {
		comm string
		peer string
		at   uint64
	}
	var hist []seen
	lastFired := map[string]uint64{}
	x := uint32(1)
	for i := range 20000 {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		comm := string(rune('a' + x%3))
		peer := "10.0.0." + itoa(int(x>>8)%7)
		ts := uint64(i) * 3
		got := d.Observe(outbound(ts, event.KindTCPAttempt, comm, 1, peer+":1"), nil)

		hist = append(hist, seen{comm, peer, ts})
		distinct := map[string]bool{}
		for j := len(hist) - 1; j >= 0 && ts-hist[j].at <= window; j-- {
			if hist[j].comm == comm {
				distinct[hist[j].peer] = true
			}
		}
		fire := false
		if len(distinct) >= threshold {
			if at, ok := lastFired[comm]; !ok || ts-at > window {
				fire = true
				lastFired[comm] = ts
			}
		}
		if fire != (len(got) == 1) {
			t.Fatalf("event %d (%s -> %s at %d): %d distinct in window, fired %v, want %v",
				i, comm, peer, ts, len(distinct), len(got) == 1, fire)
		}
	}
}

func TestFanOutConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  FanOutConfig
		want []FieldError
	}{
		{
			name: "valid outbound",
			cfg:  FanOutConfig{Name: "f", Direction: event.DirOutbound, Window: 1, Threshold: 2, MaxSubjects: 1},
		},
		{
			name: "zero value",
			cfg:  FanOutConfig{},
			want: []FieldError{
				{Path: "name", Msg: "empty rule name"},
				{Path: "direction", Msg: "must be outbound or inbound, got unknown"},
				{Path: "window", Msg: "must be positive, got 0s"},
				{Path: "threshold", Msg: "must be between 2 and 4096, got 0"},
				{Path: "max_subjects", Msg: "must be at least 1, got 0"},
			},
		},
		{
			name: "inbound with outbound kinds and per_tgid",
			cfg: FanOutConfig{
				Name: "f", Direction: event.DirInbound, Window: 1, Threshold: 2, MaxSubjects: 1,
				Kinds: []event.Kind{event.KindInboundAccept, event.KindConnect}, PerTGID: true,
			},
			want: []FieldError{
				{Path: "kinds[1]", Msg: "kind connect not allowed here; valid: inbound_accept, reset_sent"},
				{Path: "per_tgid", Msg: "inbound events carry no process; per_tgid applies to outbound only"},
			},
		},
		{
			name: "too much memory",
			cfg:  FanOutConfig{Name: "f", Direction: event.DirOutbound, Window: 1, Threshold: 4096, MaxSubjects: 1000},
			want: []FieldError{
				{Path: "max_subjects", Msg: "max_subjects × threshold = 4096000 exceeds 1048576 peer slots; lower one of them"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, fieldErrors(t, tt.cfg.Validate())); diff != "" {
				t.Errorf("errors (-want +got):\n%s", diff)
			}
		})
	}
}
