package graph

import (
	"testing"

	"github.com/connwarden/connwarden/detector/event"
	"github.com/google/go-cmp/cmp"
)

func TestNewEdge(t *testing.T) {
	out := func(ts uint64, comm, remote string) *event.Event {
		return outbound(ts, event.KindTCPAttempt, comm, 9, remote)
	}
	base := NewEdgeConfig{Name: "new", Learning: 1000, MaxPairs: 100}
	with := func(edit func(*NewEdgeConfig)) NewEdgeConfig {
		c := base
		edit(&c)
		return c
	}
	type view struct {
		At      uint64
		Subject string
		Prefix  string
	}
	tests := []struct {
		name   string
		cfg    NewEdgeConfig
		events []*event.Event
		want   []view
		stats  NewEdgeStats
	}{
		{
			name: "learning lasts exactly L from the first event",
			cfg:  base,
			events: []*event.Event{
				out(500, "app", "10.0.0.1:443"),
				out(1500, "app", "10.0.0.2:443"), // first event + L: still learning
				out(1501, "app", "10.0.0.3:443"), // + L + 1ns: new
				out(1502, "app", "10.0.0.1:443"), // learned
				out(1503, "db", "10.0.0.1:443"),  // same peer, new process
				out(1504, "app", "10.0.0.3:443"), // reported once
			},
			want: []view{
				{1501, "process:app", "10.0.0.3/32"},
				{1503, "process:db", "10.0.0.1/32"},
			},
			stats: NewEdgeStats{Pairs: 4, LearningEnds: 1500},
		},
		{
			name: "aggregation by /24 and /64",
			cfg:  with(func(c *NewEdgeConfig) { c.Learning, c.PrefixV4, c.PrefixV6 = 0, 24, 64 }),
			events: []*event.Event{
				out(1, "app", "10.0.0.1:443"),
				out(1, "app", "[2001:db8::1]:443"),
				out(2, "app", "10.0.0.200:443"),
				out(3, "app", "10.0.1.1:443"),
				out(4, "app", "[2001:db8::ffff]:443"),
				out(5, "app", "[2001:db8:0:1::1]:443"),
			},
			want: []view{
				{3, "process:app", "10.0.1.0/24"},
				{5, "process:app", "2001:db8:0:1::/64"},
			},
			stats: NewEdgeStats{Pairs: 4, LearningEnds: 1},
		},
		{
			name: "ports make pairs with Ports",
			cfg:  with(func(c *NewEdgeConfig) { c.Learning, c.Ports = 0, true }),
			events: []*event.Event{
				out(1, "app", "10.0.0.1:443"),
				out(2, "app", "10.0.0.1:443"),
				out(3, "app", "10.0.0.1:22"),
			},
			want:  []view{{3, "process:app", "10.0.0.1/32"}},
			stats: NewEdgeStats{Pairs: 2, LearningEnds: 1},
		},
		{
			name: "a forgotten pair fires again",
			cfg:  with(func(c *NewEdgeConfig) { c.MaxPairs = 2 }),
			events: []*event.Event{
				out(1, "app", "10.0.0.1:443"),
				out(2, "app", "10.0.0.2:443"),
				out(2000, "app", "10.0.0.3:443"), // new; evicts 10.0.0.1
				out(2001, "app", "10.0.0.1:443"), // forgotten: new again
			},
			want: []view{
				{2000, "process:app", "10.0.0.3/32"},
				{2001, "process:app", "10.0.0.1/32"},
			},
			stats: NewEdgeStats{Pairs: 2, Evicted: 2, LearningEnds: 1001},
		},
		{
			name: "inbound and unlisted kinds are ignored",
			cfg:  with(func(c *NewEdgeConfig) { c.Learning = 0 }),
			events: []*event.Event{
				out(1, "app", "10.0.0.1:443"),
				inbound(2, event.KindInboundAccept, "10.0.0.2:1", "192.0.2.1:22"),
				outbound(3, event.KindTCPEstablished, "app", 9, "10.0.0.3:443"),
			},
			stats: NewEdgeStats{Pairs: 1, LearningEnds: 1},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := NewNewEdge(tt.cfg)
			if err != nil {
				t.Fatal(err)
			}
			var fs []Finding
			for _, ev := range tt.events {
				fs = d.Observe(ev, fs)
			}
			var got []view
			for _, f := range fs {
				got = append(got, view{f.Timestamp, f.Subject.String(), f.PeerPrefix.String()})
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("findings (-want +got):\n%s", diff)
			}
			st := d.Stats()
			st.Learning = false // checked below
			if diff := cmp.Diff(tt.stats, st); diff != "" {
				t.Errorf("stats (-want +got):\n%s", diff)
			}
		})
	}
}

func TestNewEdgeLearningStat(t *testing.T) {
	d, err := NewNewEdge(NewEdgeConfig{Name: "n", Learning: 10, MaxPairs: 4})
	if err != nil {
		t.Fatal(err)
	}
	var got []bool
	for _, ts := range []uint64{100, 110, 111} {
		d.Observe(outbound(ts, event.KindTCPAttempt, "a", 1, "10.0.0.1:1"), nil)
		got = append(got, d.Stats().Learning)
	}
	if diff := cmp.Diff([]bool{true, true, false}, got); diff != "" {
		t.Errorf("Learning after each event (-want +got):\n%s", diff)
	}
}

func TestNewEdgeConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  NewEdgeConfig
		want []FieldError
	}{
		{name: "valid", cfg: NewEdgeConfig{Name: "n", PrefixV4: 24, PrefixV6: 64, MaxPairs: 1}},
		{
			name: "everything wrong",
			cfg: NewEdgeConfig{
				Kinds: []event.Kind{event.KindResetSent}, Learning: -1, PrefixV4: 33, PrefixV6: -1,
			},
			want: []FieldError{
				{Path: "name", Msg: "empty rule name"},
				{Path: "kinds[0]", Msg: "kind reset_sent not allowed here; valid: connect, tcp_attempt, tcp_established, tcp_close"},
				{Path: "learning", Msg: "must not be negative, got -1ns"},
				{Path: "prefix_v4", Msg: "must be between 1 and 32 (0 for 32), got 33"},
				{Path: "prefix_v6", Msg: "must be between 1 and 128 (0 for 128), got -1"},
				{Path: "max_pairs", Msg: "must be at least 1, got 0"},
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
