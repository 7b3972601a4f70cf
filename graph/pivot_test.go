package graph

import (
	"net/netip"
	"testing"

	"github.com/connwarden/connwarden/detector/event"
	"github.com/google/go-cmp/cmp"
)

func TestPivot(t *testing.T) {
	const attacker = "203.0.113.66:51000"
	accept := func(ts uint64, remote, local string) *event.Event {
		return inbound(ts, event.KindInboundAccept, remote, local)
	}
	out := func(ts uint64, comm string, tgid uint32, remote string) *event.Event {
		return outbound(ts, event.KindTCPAttempt, comm, tgid, remote)
	}
	base := PivotConfig{
		Name:     "pivot",
		Window:   100,
		Services: []PivotService{{Port: 22, Comms: []string{"sshd", "ssh"}}},
		Internal: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")},
	}
	with := func(edit func(*PivotConfig)) PivotConfig {
		c := base
		edit(&c)
		return c
	}
	type view struct {
		At       uint64
		Process  string
		TGID     uint32
		Target   string
		Attacker string
		Service  string
		Accepted uint64
		Accepts  int
	}
	tests := []struct {
		name   string
		cfg    PivotConfig
		bind   map[uint32]uint16
		events []*event.Event
		want   []view
	}{
		{
			name: "connect exactly T after the accept names the chain",
			cfg:  base,
			events: []*event.Event{
				accept(1000, attacker, "192.0.2.1:22"),
				out(1100, "ssh", 77, "10.1.2.3:22"),
			},
			want: []view{{1100, "process:ssh", 77, "10.1.2.3:22", attacker, "192.0.2.1:22", 1000, 1}},
		},
		{
			name: "T+1ns after is too late",
			cfg:  base,
			events: []*event.Event{
				accept(1000, attacker, "192.0.2.1:22"),
				out(1101, "ssh", 77, "10.1.2.3:22"),
			},
		},
		{
			name: "a connect before the accept is not a pivot",
			cfg:  base,
			events: []*event.Event{
				accept(1000, attacker, "192.0.2.1:22"),
				out(999, "ssh", 77, "10.1.2.3:22"),
			},
		},
		{
			name: "external targets, other comms, other ports and other kinds are not",
			cfg:  base,
			events: []*event.Event{
				accept(1000, attacker, "192.0.2.1:22"),
				accept(1000, attacker, "192.0.2.1:80"),
				out(1010, "ssh", 77, "198.51.100.1:22"),
				out(1020, "curl", 78, "10.1.2.3:80"),
				outbound(1030, event.KindTCPEstablished, "ssh", 77, "10.1.2.3:22"),
			},
		},
		{
			name: "several accepts: the latest is named, all are counted",
			cfg:  base,
			events: []*event.Event{
				accept(1000, "203.0.113.1:1", "192.0.2.1:22"),
				accept(1060, "203.0.113.2:2", "192.0.2.1:22"),
				accept(1100, "203.0.113.4:4", "192.0.2.1:22"),
				accept(1200, "203.0.113.3:3", "192.0.2.1:22"),
				// 1000 is too old, 1200 later: 1060 and 1100 count.
				out(1150, "sshd", 5, "10.9.9.9:3306"),
				out(1250, "sshd", 5, "10.9.9.9:3306"),
			},
			want: []view{
				{1150, "process:sshd", 5, "10.9.9.9:3306", "203.0.113.4:4", "192.0.2.1:22", 1100, 2},
				{1250, "process:sshd", 5, "10.9.9.9:3306", "203.0.113.3:3", "192.0.2.1:22", 1200, 1},
			},
		},
		{
			name: "empty comms means any process",
			cfg: with(func(c *PivotConfig) {
				c.Services = []PivotService{{Port: 8080}}
			}),
			events: []*event.Event{
				accept(1, attacker, "192.0.2.1:8080"),
				out(2, "java", 30, "10.0.0.5:5432"),
			},
			want: []view{{2, "process:java", 30, "10.0.0.5:5432", attacker, "192.0.2.1:8080", 1, 1}},
		},
		{
			name: "port 0 watches every port",
			cfg: with(func(c *PivotConfig) {
				c.Services = []PivotService{{Port: 0, Comms: []string{"nginx"}}}
			}),
			events: []*event.Event{
				accept(1, attacker, "192.0.2.1:443"),
				out(2, "nginx", 30, "10.0.0.5:6379"),
			},
			want: []view{{2, "process:nginx", 30, "10.0.0.5:6379", attacker, "192.0.2.1:443", 1, 1}},
		},
		{
			name: "a bound TGID is attributed whatever its comm",
			cfg:  with(func(c *PivotConfig) { c.MaxBindings = 4 }),
			bind: map[uint32]uint16{4242: 22},
			events: []*event.Event{
				accept(1, attacker, "192.0.2.1:22"),
				out(2, "bash", 4242, "10.0.0.5:445"),
				out(3, "bash", 4243, "10.0.0.5:445"),
			},
			want: []view{{2, "process:bash", 4242, "10.0.0.5:445", attacker, "192.0.2.1:22", 1, 1}},
		},
		{
			name: "binding through a port-0 service filters by the bound port",
			cfg: with(func(c *PivotConfig) {
				c.Services = []PivotService{{Port: 0, Comms: []string{"nginx"}}}
				c.MaxBindings = 4
			}),
			bind: map[uint32]uint16{4242: 8443},
			events: []*event.Event{
				accept(1, attacker, "192.0.2.1:9999"),
				out(2, "worker", 4242, "10.0.0.5:445"),
				accept(3, attacker, "192.0.2.1:8443"),
				out(4, "worker", 4242, "10.0.0.5:445"),
			},
			want: []view{{4, "process:worker", 4242, "10.0.0.5:445", attacker, "192.0.2.1:8443", 3, 1}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := NewPivot(tt.cfg)
			if err != nil {
				t.Fatal(err)
			}
			for tgid, port := range tt.bind {
				if !d.Bind(tgid, port) {
					t.Fatalf("Bind(%d, %d) = false", tgid, port)
				}
			}
			var fs []Finding
			for _, ev := range tt.events {
				fs = d.Observe(ev, fs)
			}
			var got []view
			for _, f := range fs {
				got = append(got, view{
					f.Timestamp, f.Subject.String(), f.TGID, f.Peer.String(),
					f.Pivot.Attacker.String(), f.Pivot.Service.String(), f.Pivot.AcceptedAt, f.Pivot.Accepts,
				})
				if f.Kind != FindingPivot || f.Rule != tt.cfg.Name {
					t.Errorf("finding kind, rule = %s, %q", f.Kind, f.Rule)
				}
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("findings (-want +got):\n%s", diff)
			}
		})
	}
}

func TestPivotAmbiguousAttribution(t *testing.T) {
	d, err := NewPivot(PivotConfig{
		Name: "p", Window: 100,
		Services: []PivotService{{Port: 22, Comms: []string{"sshd"}}},
		Internal: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")},
	})
	if err != nil {
		t.Fatal(err)
	}
	// More accepts than the ring holds: only the latest 8 are remembered.
	for i := range 10 {
		d.Observe(inbound(uint64(10+i), event.KindInboundAccept, "203.0.113."+itoa(i)+":1", "192.0.2.1:22"), nil)
	}
	fs := d.Observe(outbound(50, event.KindTCPAttempt, "sshd", 1, "10.0.0.1:22"), nil)
	if len(fs) != 1 {
		t.Fatalf("%d findings, want 1", len(fs))
	}
	got := fs[0].Pivot
	want := PivotChain{
		Attacker: netip.MustParseAddrPort("203.0.113.9:1"), Service: netip.MustParseAddrPort("192.0.2.1:22"),
		AcceptedAt: 19, Accepts: acceptsPerService,
	}
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
		t.Errorf("chain (-want +got):\n%s", diff)
	}
}

func TestPivotBind(t *testing.T) {
	d, err := NewPivot(PivotConfig{
		Name: "p", Window: 100, MaxBindings: 1,
		Services: []PivotService{{Port: 22}},
		Internal: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")},
	})
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		name      string
		tgid      uint32
		port      uint16
		unbind    bool
		want      bool
		wantBound int
	}{
		{name: "uncovered port", tgid: 1, port: 80, want: false},
		{name: "port zero", tgid: 1, port: 0, want: false},
		{name: "covered port", tgid: 1, port: 22, want: true, wantBound: 1},
		{name: "again", tgid: 1, port: 22, want: true, wantBound: 1},
		{name: "second tgid evicts the first", tgid: 2, port: 22, want: true, wantBound: 1},
		{name: "unbind", tgid: 2, unbind: true, wantBound: 0},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			if s.unbind {
				d.Unbind(s.tgid)
			} else if got := d.Bind(s.tgid, s.port); got != s.want {
				t.Errorf("Bind(%d, %d) = %v, want %v", s.tgid, s.port, got, s.want)
			}
			if got := d.bindings.Len(); got != s.wantBound {
				t.Errorf("%d bindings, want %d", got, s.wantBound)
			}
		})
	}
	noBind, err := NewPivot(PivotConfig{
		Name: "p", Window: 100, Services: []PivotService{{Port: 22}},
		Internal: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")},
	})
	if err != nil {
		t.Fatal(err)
	}
	if noBind.Bind(1, 22) {
		t.Error("Bind with MaxBindings 0 = true, want false")
	}
}

func TestPivotConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  PivotConfig
		want []FieldError
	}{
		{
			name: "valid",
			cfg: PivotConfig{
				Name: "p", Window: 1, Services: []PivotService{{Port: 22, Comms: []string{"sshd"}}},
				Internal: []netip.Prefix{netip.MustParsePrefix("fd00::/8")},
			},
		},
		{
			name: "zero value",
			cfg:  PivotConfig{},
			want: []FieldError{
				{Path: "name", Msg: "empty rule name"},
				{Path: "window", Msg: "must be positive, got 0s"},
				{Path: "services", Msg: "no services; name at least one local port (0 for any)"},
				{Path: "internal", Msg: "no internal prefixes; give the networks a pivot would reach, e.g. 10.0.0.0/8"},
			},
		},
		{
			name: "bad entries",
			cfg: PivotConfig{
				Name: "p", Window: 1, MaxBindings: -1,
				Services: []PivotService{
					{Port: 22, Comms: []string{"sshd", "", "a-very-long-command"}},
					{Port: 22},
				},
				Internal:    []netip.Prefix{{}, netip.MustParsePrefix("::ffff:10.0.0.0/104")},
				TargetKinds: []event.Kind{event.KindInboundAccept},
			},
			want: []FieldError{
				{Path: "services[0].comms[1]", Msg: `comm "" must be 1 to 15 bytes`},
				{Path: "services[0].comms[2]", Msg: `comm "a-very-long-command" must be 1 to 15 bytes`},
				{Path: "services[1].port", Msg: "port 22 already watched by services[0]; merge their comms"},
				{Path: "internal[0]", Msg: "invalid prefix"},
				{Path: "internal[1]", Msg: "prefix ::ffff:10.0.0.0/104 is v4-mapped; events carry plain IPv4, write the IPv4 prefix"},
				{Path: "max_bindings", Msg: "must not be negative, got -1"},
				{Path: "target_kinds[0]", Msg: "kind inbound_accept not allowed here; valid: connect, tcp_attempt, tcp_established, tcp_close"},
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
