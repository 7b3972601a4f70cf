package graph

import (
	"testing"
	"time"

	"github.com/connwarden/connwarden/detector/event"
	"github.com/google/go-cmp/cmp"
)

// edgeView is an edge as the tests compare it: node names, not IDs.
type edgeView struct {
	From, To    string
	Port        uint16
	Count       uint64
	First, Last uint64
}

func edgesOf(g *Graph) []edgeView {
	s := g.Snapshot()
	names := map[string]string{}
	for _, n := range s.Nodes {
		names[n.ID] = n.Key.String()
	}
	var out []edgeView
	for _, e := range s.Edges {
		out = append(out, edgeView{names[e.From], names[e.To], e.Port, e.Count, e.FirstSeen, e.LastSeen})
	}
	return out
}

func nodesOf(g *Graph) []string {
	var out []string
	for _, n := range g.Snapshot().Nodes {
		out = append(out, n.Key.String())
	}
	return out
}

func TestObserve(t *testing.T) {
	const (
		attempt = event.KindTCPAttempt
		est     = event.KindTCPEstablished
	)
	tests := []struct {
		name      string
		cfg       Config
		events    []*event.Event
		expireAt  uint64
		wantNodes []string
		wantEdges []edgeView
		wantStats Stats
	}{
		{
			name: "outbound and inbound edges",
			cfg:  Config{MaxNodes: 10, MaxEdges: 10},
			events: []*event.Event{
				outbound(10, attempt, "curl", 1, "10.0.0.2:443"),
				outbound(11, est, "curl", 1, "10.0.0.2:443"),
				outbound(12, attempt, "curl", 1, "10.0.0.2:80"),
				inbound(13, event.KindInboundAccept, "198.51.100.7:5555", "192.0.2.1:22"),
				inbound(14, event.KindResetSent, "198.51.100.7:5556", "192.0.2.1:23"),
				{Timestamp: 15, Kind: event.KindUnknown},
			},
			wantNodes: []string{
				"process:curl", "service:192.0.2.1:22", "service:192.0.2.1:23",
				"host:10.0.0.2", "host:198.51.100.7",
			},
			wantEdges: []edgeView{
				{"process:curl", "host:10.0.0.2", 80, 1, 12, 12},
				{"process:curl", "host:10.0.0.2", 443, 2, 10, 11},
				{"host:198.51.100.7", "service:192.0.2.1:22", 0, 1, 13, 13},
				{"host:198.51.100.7", "service:192.0.2.1:23", 0, 1, 14, 14},
			},
			wantStats: Stats{Nodes: 5, Edges: 4, Ignored: 1},
		},
		{
			name: "node cap evicts the least recently seen node and its edges",
			cfg:  Config{MaxNodes: 3, MaxEdges: 10},
			events: []*event.Event{
				outbound(1, attempt, "a", 1, "10.0.0.1:1"),
				outbound(2, attempt, "a", 1, "10.0.0.2:1"),
				outbound(3, attempt, "b", 2, "10.0.0.2:1"), // evicts host 10.0.0.1
			},
			wantNodes: []string{"process:a", "process:b", "host:10.0.0.2"},
			wantEdges: []edgeView{
				{"process:a", "host:10.0.0.2", 1, 1, 2, 2},
				{"process:b", "host:10.0.0.2", 1, 1, 3, 3},
			},
			wantStats: Stats{Nodes: 3, Edges: 2, NodesEvicted: 1, EdgesEvicted: 1},
		},
		{
			name: "edge cap evicts the least recently seen edge",
			cfg:  Config{MaxNodes: 10, MaxEdges: 2},
			events: []*event.Event{
				outbound(1, attempt, "a", 1, "10.0.0.1:1"),
				outbound(2, attempt, "a", 1, "10.0.0.1:2"),
				outbound(3, attempt, "a", 1, "10.0.0.1:1"),
				outbound(4, attempt, "a", 1, "10.0.0.1:3"), // evicts port 2
			},
			wantNodes: []string{"process:a", "host:10.0.0.1"},
			wantEdges: []edgeView{
				{"process:a", "host:10.0.0.1", 1, 2, 1, 3},
				{"process:a", "host:10.0.0.1", 3, 1, 4, 4},
			},
			wantStats: Stats{Nodes: 2, Edges: 2, EdgesEvicted: 1},
		},
		{
			name: "idle exactly MaxAge is kept",
			cfg:  Config{MaxNodes: 10, MaxEdges: 10, MaxAge: 100},
			events: []*event.Event{
				outbound(1000, attempt, "a", 1, "10.0.0.1:1"),
				outbound(1050, attempt, "a", 1, "10.0.0.2:1"),
			},
			expireAt:  1100,
			wantNodes: []string{"process:a", "host:10.0.0.1", "host:10.0.0.2"},
			wantEdges: []edgeView{
				{"process:a", "host:10.0.0.1", 1, 1, 1000, 1000},
				{"process:a", "host:10.0.0.2", 1, 1, 1050, 1050},
			},
			wantStats: Stats{Nodes: 3, Edges: 2},
		},
		{
			name: "idle MaxAge+1ns is aged out with its node",
			cfg:  Config{MaxNodes: 10, MaxEdges: 10, MaxAge: 100},
			events: []*event.Event{
				outbound(1000, attempt, "a", 1, "10.0.0.1:1"),
				outbound(1050, attempt, "a", 1, "10.0.0.2:1"),
			},
			expireAt:  1101,
			wantNodes: []string{"process:a", "host:10.0.0.2"},
			wantEdges: []edgeView{{"process:a", "host:10.0.0.2", 1, 1, 1050, 1050}},
			wantStats: Stats{Nodes: 2, Edges: 1, EdgesExpired: 1, NodesExpired: 1},
		},
		{
			name: "Observe ages out a little on its own",
			cfg:  Config{MaxNodes: 10, MaxEdges: 10, MaxAge: 100},
			events: []*event.Event{
				outbound(1000, attempt, "a", 1, "10.0.0.1:1"),
				outbound(2000, attempt, "b", 2, "10.0.0.2:1"),
			},
			wantNodes: []string{"process:b", "host:10.0.0.2"},
			wantEdges: []edgeView{{"process:b", "host:10.0.0.2", 1, 1, 2000, 2000}},
			wantStats: Stats{Nodes: 2, Edges: 1, EdgesExpired: 1, NodesExpired: 2},
		},
		{
			name: "no MaxAge keeps everything",
			cfg:  Config{MaxNodes: 10, MaxEdges: 10},
			events: []*event.Event{
				outbound(1, attempt, "a", 1, "10.0.0.1:1"),
			},
			expireAt:  1 << 62,
			wantNodes: []string{"process:a", "host:10.0.0.1"},
			wantEdges: []edgeView{{"process:a", "host:10.0.0.1", 1, 1, 1, 1}},
			wantStats: Stats{Nodes: 2, Edges: 1},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, err := New(tt.cfg)
			if err != nil {
				t.Fatal(err)
			}
			for _, ev := range tt.events {
				g.Observe(ev)
			}
			if tt.expireAt != 0 {
				g.Expire(tt.expireAt)
			}
			if diff := cmp.Diff(tt.wantNodes, nodesOf(g)); diff != "" {
				t.Errorf("nodes (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantEdges, edgesOf(g)); diff != "" {
				t.Errorf("edges (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantStats, g.Stats()); diff != "" {
				t.Errorf("stats (-want +got):\n%s", diff)
			}
		})
	}
}

// Churn through far more nodes and edges than the caps, then check that the
// adjacency lists still agree with the edge table (every edge reachable from
// both of its nodes, nothing else).
func TestAdjacencyConsistentUnderChurn(t *testing.T) {
	g, err := New(Config{MaxNodes: 16, MaxEdges: 12, MaxAge: 100})
	if err != nil {
		t.Fatal(err)
	}
	comms := []string{"a", "b", "c", "d", "e"}
	for i := range 5000 {
		ts := uint64(i + i/500*1000) // bursts that overflow the caps, then gaps that age out
		host := "10.0." + itoa(i%13) + "." + itoa(i%29) + ":" + itoa(1+i%3)
		if i%5 == 0 {
			g.Observe(inbound(ts, event.KindInboundAccept, host, "192.0.2.1:"+itoa(1+i%4)))
		} else {
			g.Observe(outbound(ts, event.KindTCPAttempt, comms[i%len(comms)], 1, host))
		}
		if i%97 == 0 {
			g.Expire(ts)
		}
		checkAdjacency(t, g)
		if t.Failed() {
			t.Fatalf("after event %d", i)
		}
	}
	st := g.Stats()
	if st.NodesEvicted == 0 || st.EdgesEvicted == 0 || st.EdgesExpired == 0 {
		t.Errorf("churn did not exercise eviction and expiry: %+v", st)
	}
}

func checkAdjacency(t *testing.T, g *Graph) {
	t.Helper()
	seen := map[int32]int{}
	for ns := range g.nodes.All() {
		n := g.nodes.Value(ns)
		for es := n.outHead; es != -1; es = g.edges.Value(es).outNext {
			if k := g.edges.Key(es); k.from != ns {
				t.Errorf("edge %d in out-list of node %d has from %d", es, ns, k.from)
			}
			seen[es]++
		}
		for es := n.inHead; es != -1; es = g.edges.Value(es).inNext {
			if k := g.edges.Key(es); k.to != ns {
				t.Errorf("edge %d in in-list of node %d has to %d", es, ns, k.to)
			}
			seen[es]++
		}
	}
	for es := range g.edges.All() {
		if seen[es] != 2 {
			t.Errorf("edge %d is on %d adjacency lists, want 2", es, seen[es])
		}
		delete(seen, es)
	}
	if len(seen) != 0 {
		t.Errorf("adjacency lists hold removed edges %v", seen)
	}
}

func itoa(n int) string {
	if n < 10 {
		return string(rune('0' + n))
	}
	return itoa(n/10) + string(rune('0'+n%10))
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want []FieldError
	}{
		{name: "valid", cfg: Config{MaxNodes: 2, MaxEdges: 1, MaxAge: time.Hour}},
		{
			name: "all wrong",
			cfg:  Config{MaxNodes: 1, MaxEdges: 0, MaxAge: -time.Second},
			want: []FieldError{
				{Path: "max_nodes", Msg: "must be at least 2, got 1"},
				{Path: "max_edges", Msg: "must be at least 1, got 0"},
				{Path: "max_age", Msg: "must not be negative, got -1s"},
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
