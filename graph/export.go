package graph

import (
	"bufio"
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/connwarden/connwarden/detector/event"
	"github.com/emirpasic/gods/maps/treemap"
)

// Snapshot is a consistent, deep copy of a Graph at one moment, in a stable
// order (nodes by kind then key, edges by their nodes then port), so two
// snapshots of the same replay are byte-identical.
type Snapshot struct {
	// At is the latest event time the graph had seen (ns).
	At    uint64 `json:"at"`
	Nodes []Node `json:"nodes"`
	Edges []Edge `json:"edges"`
	Stats Stats  `json:"stats"`
}

// Node is one node in a Snapshot.
type Node struct {
	// ID names the node within this snapshot ("n0", "n1", ...).
	ID   string   `json:"id"`
	Kind NodeKind `json:"kind"`
	// Name is NodeKey.Name: the comm with unprintable bytes escaped, or an
	// address(:port).
	Name string `json:"name"`
	// Addr and Port repeat a service's or host's endpoint for consumers.
	Addr netip.Addr `json:"addr,omitzero"`
	Port uint16     `json:"port,omitempty"`
	// LastTGID is the process id last seen for a process node.
	LastTGID  uint32 `json:"last_tgid,omitempty"`
	FirstSeen uint64 `json:"first_seen"`
	LastSeen  uint64 `json:"last_seen"`
	// Count is the number of events that touched the node.
	Count uint64  `json:"count"`
	Key   NodeKey `json:"-"`
}

// Edge is one edge in a Snapshot.
type Edge struct {
	From string `json:"from"` // Node.ID
	To   string `json:"to"`   // Node.ID
	// Port is the remote port for process -> host edges, 0 for host ->
	// service edges (the service node has the port).
	Port      uint16 `json:"port,omitempty"`
	Count     uint64 `json:"count"`
	FirstSeen uint64 `json:"first_seen"`
	LastSeen  uint64 `json:"last_seen"`
	// Counts are the events per kind name ("tcp_attempt": 3).
	Counts map[string]uint64 `json:"counts"`
}

// nodeOrder is a typed ordered map from NodeKey to snapshot index, over
// gods' red-black tree map (snapshots are not the hot path).
type nodeOrder struct{ m *treemap.Map }

func newNodeOrder() nodeOrder {
	return nodeOrder{m: treemap.NewWith(func(a, b any) int {
		return compareKeys(a.(NodeKey), b.(NodeKey))
	})}
}

func (o nodeOrder) put(k NodeKey, slot int32) { o.m.Put(k, slot) }

// each calls f for every key in order with its slot.
func (o nodeOrder) each(f func(k NodeKey, slot int32)) {
	it := o.m.Iterator()
	for it.Next() {
		f(it.Key().(NodeKey), it.Value().(int32))
	}
}

// Snapshot copies the graph. It allocates in proportion to the graph's size.
func (g *Graph) Snapshot() *Snapshot {
	s := &Snapshot{At: g.latest, Stats: g.Stats()}
	order := newNodeOrder()
	for ns := range g.nodes.All() {
		order.put(g.nodes.Key(ns), ns)
	}
	index := make(map[int32]int, g.nodes.Len())
	s.Nodes = make([]Node, 0, g.nodes.Len())
	order.each(func(k NodeKey, ns int32) {
		v := g.nodes.Value(ns)
		index[ns] = len(s.Nodes)
		n := Node{
			ID: nodeID(len(s.Nodes)), Kind: k.Kind, Name: k.Name(), LastTGID: v.lastTGID,
			FirstSeen: v.first, LastSeen: v.last, Count: v.count, Key: k,
		}
		if k.Kind != NodeProcess {
			n.Addr, n.Port = k.Addr, k.Port
		}
		s.Nodes = append(s.Nodes, n)
	})
	type sortable struct {
		from, to int
		e        Edge
	}
	edges := make([]sortable, 0, g.edges.Len())
	for es := range g.edges.All() {
		k, v := g.edges.Key(es), g.edges.Value(es)
		from, to := index[k.from], index[k.to]
		e := Edge{
			From: nodeID(from), To: nodeID(to), Port: k.port,
			FirstSeen: v.first, LastSeen: v.last, Counts: map[string]uint64{},
		}
		for kind, c := range v.counts {
			if c != 0 {
				e.Counts[event.Kind(kind).String()] = c
				e.Count += c
			}
		}
		edges = append(edges, sortable{from, to, e})
	}
	slices.SortFunc(edges, func(a, b sortable) int {
		return cmp.Or(cmp.Compare(a.from, b.from), cmp.Compare(a.to, b.to), cmp.Compare(a.e.Port, b.e.Port))
	})
	s.Edges = make([]Edge, len(edges))
	for i := range edges {
		s.Edges[i] = edges[i].e
	}
	return s
}

func nodeID(i int) string { return "n" + strconv.Itoa(i) }

// WriteJSON writes the snapshot as one indented JSON document.
func (s *Snapshot) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(s); err != nil {
		return fmt.Errorf("graph: encode json: %w", err)
	}
	return nil
}

// WriteDOT writes the snapshot as a Graphviz digraph: processes are boxes,
// services are double octagons and hosts ellipses; edge labels carry the
// port and the event count. Every label is quoted and escaped, so comms and
// addresses cannot break the syntax.
func (s *Snapshot) WriteDOT(w io.Writer) error {
	bw := bufio.NewWriter(w)
	fmt.Fprintf(bw, "digraph connwarden {\n\trankdir=LR;\n\tnode [fontname=\"monospace\"];\n")
	for _, n := range s.Nodes {
		shape := "ellipse"
		switch n.Kind {
		case NodeProcess:
			shape = "box"
		case NodeService:
			shape = "doubleoctagon"
		}
		fmt.Fprintf(bw, "\t%s [shape=%s, label=%s];\n", n.ID, shape, dotQuote(n.Kind.String()+"\n"+n.Name))
	}
	for _, e := range s.Edges {
		label := "n=" + strconv.FormatUint(e.Count, 10)
		if e.Port != 0 {
			label = "port " + strconv.Itoa(int(e.Port)) + "\n" + label
		}
		fmt.Fprintf(bw, "\t%s -> %s [label=%s];\n", e.From, e.To, dotQuote(label))
	}
	fmt.Fprintf(bw, "}\n")
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("graph: write dot: %w", err)
	}
	return nil
}

// dotQuote makes s a DOT double-quoted string: quotes and backslashes are
// escaped, newlines become the \n line break, other control bytes are
// dropped (Name has already escaped them).
func dotQuote(s string) string {
	var sb strings.Builder
	sb.WriteByte('"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"' || c == '\\':
			sb.WriteByte('\\')
			sb.WriteByte(c)
		case c == '\n':
			sb.WriteString(`\n`)
		case c < 0x20 || c == 0x7f:
		default:
			sb.WriteByte(c)
		}
	}
	sb.WriteByte('"')
	return sb.String()
}
