package graph

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"regexp"
	"strings"
	"testing"

	"github.com/connwarden/connwarden/detector/event"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// hostileComm has a quote, a backslash, a newline and a non-UTF-8 byte.
const hostileComm = "ev\"il\\\n\xff"

func exportGraph(t *testing.T) *Graph {
	t.Helper()
	g, err := New(Config{MaxNodes: 10, MaxEdges: 10})
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range []*event.Event{
		outbound(10, event.KindTCPAttempt, hostileComm, 7, "[2001:db8::1]:443"),
		outbound(11, event.KindTCPEstablished, hostileComm, 7, "[2001:db8::1]:443"),
		outbound(12, event.KindTCPAttempt, "curl", 8, "10.0.0.2:80"),
		inbound(13, event.KindInboundAccept, "198.51.100.7:5555", "192.0.2.1:22"),
	} {
		g.Observe(ev)
	}
	return g
}

func TestSnapshotJSONRoundTrip(t *testing.T) {
	snap := exportGraph(t).Snapshot()
	var buf bytes.Buffer
	if err := snap.WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	var got Snapshot
	dec := json.NewDecoder(&buf)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&got); err != nil {
		t.Fatalf("decode: %v\n%s", err, buf.String())
	}
	want := &Snapshot{
		At: 13,
		Nodes: []Node{
			{ID: "n0", Kind: NodeProcess, Name: "curl", LastTGID: 8, FirstSeen: 12, LastSeen: 12, Count: 1},
			{ID: "n1", Kind: NodeProcess, Name: `ev"il\x5c\x0a\xff`, LastTGID: 7, FirstSeen: 10, LastSeen: 11, Count: 2},
			{ID: "n2", Kind: NodeService, Name: "192.0.2.1:22", Addr: netip.MustParseAddr("192.0.2.1"), Port: 22, FirstSeen: 13, LastSeen: 13, Count: 1},
			{ID: "n3", Kind: NodeHost, Name: "10.0.0.2", Addr: netip.MustParseAddr("10.0.0.2"), FirstSeen: 12, LastSeen: 12, Count: 1},
			{ID: "n4", Kind: NodeHost, Name: "198.51.100.7", Addr: netip.MustParseAddr("198.51.100.7"), FirstSeen: 13, LastSeen: 13, Count: 1},
			{ID: "n5", Kind: NodeHost, Name: "2001:db8::1", Addr: netip.MustParseAddr("2001:db8::1"), FirstSeen: 10, LastSeen: 11, Count: 2},
		},
		Edges: []Edge{
			{From: "n0", To: "n3", Port: 80, Count: 1, FirstSeen: 12, LastSeen: 12, Counts: map[string]uint64{"tcp_attempt": 1}},
			{From: "n1", To: "n5", Port: 443, Count: 2, FirstSeen: 10, LastSeen: 11, Counts: map[string]uint64{"tcp_attempt": 1, "tcp_established": 1}},
			{From: "n4", To: "n2", Count: 1, FirstSeen: 13, LastSeen: 13, Counts: map[string]uint64{"inbound_accept": 1}},
		},
		Stats: Stats{Nodes: 6, Edges: 3},
	}
	opts := cmp.Options{
		cmpopts.IgnoreFields(Node{}, "Key"),
		cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
	}
	if diff := cmp.Diff(want, &got, opts); diff != "" {
		t.Errorf("decoded snapshot (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(want, snap, opts); diff != "" {
		t.Errorf("snapshot (-want +got):\n%s", diff)
	}
}

// The same events give byte-identical exports, whatever the order the
// graph's tables happen to hold them in.
func TestSnapshotDeterministic(t *testing.T) {
	evs := []*event.Event{
		outbound(1, event.KindTCPAttempt, "b", 1, "10.0.0.3:1"),
		outbound(2, event.KindTCPAttempt, "a", 2, "10.0.0.1:1"),
		outbound(3, event.KindTCPAttempt, "b", 1, "10.0.0.1:2"),
		inbound(4, event.KindInboundAccept, "10.0.0.9:1", "192.0.2.1:22"),
	}
	render := func(order []int) string {
		g, err := New(Config{MaxNodes: 10, MaxEdges: 10})
		if err != nil {
			t.Fatal(err)
		}
		for _, i := range order {
			ev := *evs[i]
			ev.Timestamp = 1 // same time, so only table order differs
			g.Observe(&ev)
		}
		var js, dot bytes.Buffer
		s := g.Snapshot()
		if err := s.WriteJSON(&js); err != nil {
			t.Fatal(err)
		}
		if err := s.WriteDOT(&dot); err != nil {
			t.Fatal(err)
		}
		return js.String() + dot.String()
	}
	if diff := cmp.Diff(render([]int{0, 1, 2, 3}), render([]int{3, 2, 1, 0})); diff != "" {
		t.Errorf("exports differ with observation order (-first +second):\n%s", diff)
	}
}

var (
	dotNode = regexp.MustCompile(`^\t(n\d+) \[shape=(box|doubleoctagon|ellipse), label="((?:[^"\\]|\\.)*)"\];$`)
	dotEdge = regexp.MustCompile(`^\t(n\d+) -> (n\d+) \[label="((?:[^"\\]|\\.)*)"\];$`)
)

// unDOT reverses dotQuote's escapes (\n for a line break, \X for X).
func unDOT(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) {
			i++
			if s[i] == 'n' {
				b.WriteByte('\n')
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func TestWriteDOT(t *testing.T) {
	var buf bytes.Buffer
	if err := exportGraph(t).Snapshot().WriteDOT(&buf); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	if len(lines) < 4 || lines[0] != "digraph connwarden {" || lines[len(lines)-1] != "}" {
		t.Fatalf("not a digraph block:\n%s", buf.String())
	}
	labels := map[string]string{}
	type edge struct{ From, To, Label string }
	var edges []edge
	for _, l := range lines[1 : len(lines)-1] {
		if m := dotNode.FindStringSubmatch(l); m != nil {
			labels[m[1]] = m[2] + " " + unDOT(m[3])
			continue
		}
		if m := dotEdge.FindStringSubmatch(l); m != nil {
			if _, ok := labels[m[1]]; !ok {
				t.Errorf("edge from undeclared node: %q", l)
			}
			if _, ok := labels[m[2]]; !ok {
				t.Errorf("edge to undeclared node: %q", l)
			}
			edges = append(edges, edge{m[1], m[2], unDOT(m[3])})
			continue
		}
		if l != "\trankdir=LR;" && l != "\tnode [fontname=\"monospace\"];" {
			t.Errorf("unexpected line %q", l)
		}
	}
	wantLabels := map[string]string{
		"n0": "box process\ncurl",
		"n1": "box process\n" + `ev"il\x5c\x0a\xff`,
		"n2": "doubleoctagon service\n192.0.2.1:22",
		"n3": "ellipse host\n10.0.0.2",
		"n4": "ellipse host\n198.51.100.7",
		"n5": "ellipse host\n2001:db8::1",
	}
	if diff := cmp.Diff(wantLabels, labels); diff != "" {
		t.Errorf("node labels (-want +got):\n%s", diff)
	}
	wantEdges := []edge{
		{"n0", "n3", "port 80\nn=1"},
		{"n1", "n5", "port 443\nn=2"},
		{"n4", "n2", "n=1"},
	}
	if diff := cmp.Diff(wantEdges, edges); diff != "" {
		t.Errorf("edges (-want +got):\n%s", diff)
	}
}

func TestDOTQuote(t *testing.T) {
	tests := []struct{ in, want string }{
		{"plain", `"plain"`},
		{`a"b`, `"a\"b"`},
		{`a\b`, `"a\\b"`},
		{"a\nb", `"a\nb"`},
		{"a\x00\x1fb\x7f", `"ab"`},
		{`\"`, `"\\\""`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			if got := dotQuote(tt.in); got != tt.want {
				t.Errorf("dotQuote(%q) = %s, want %s", tt.in, got, tt.want)
			}
		})
	}
}
