package graph

import (
	"time"

	"github.com/connwarden/connwarden/detector/event"
	"github.com/connwarden/connwarden/internal/fielderr"
	"github.com/connwarden/connwarden/internal/lru"
)

// Config bounds a Graph.
type Config struct {
	// MaxNodes caps the nodes held (>= 2). When a new node would exceed it,
	// the least recently seen node is evicted together with its edges.
	MaxNodes int
	// MaxEdges caps the edges held (>= 1). When a new edge would exceed it,
	// the least recently seen edge is evicted.
	MaxEdges int
	// MaxAge removes edges and nodes not seen for longer than this (event
	// time). Zero keeps them until evicted.
	MaxAge time.Duration
}

// Validate reports every problem with c as a FieldError.
func (c *Config) Validate() error {
	var errs fielderr.List
	if c.MaxNodes < 2 {
		errs.Addf("max_nodes", "must be at least 2, got %d", c.MaxNodes)
	}
	if c.MaxEdges < 1 {
		errs.Addf("max_edges", "must be at least 1, got %d", c.MaxEdges)
	}
	if c.MaxAge < 0 {
		errs.Addf("max_age", "must not be negative, got %v", c.MaxAge)
	}
	return errs.Err()
}

// Stats are a Graph's sizes and counters.
type Stats struct {
	Nodes        int    `json:"nodes"`
	Edges        int    `json:"edges"`
	NodesEvicted uint64 `json:"nodes_evicted"` // LRU eviction at MaxNodes
	EdgesEvicted uint64 `json:"edges_evicted"` // at MaxEdges, or with an evicted node
	NodesExpired uint64 `json:"nodes_expired"` // idle longer than MaxAge
	EdgesExpired uint64 `json:"edges_expired"` // idle longer than MaxAge, or with an expired node
	Ignored      uint64 `json:"ignored"`       // events that make no edge
}

// numKinds sizes per-kind counters.
const numKinds = event.NumKinds

type nodeVal struct {
	first, last uint64
	count       uint64
	lastTGID    uint32
	outHead     int32 // edges from this node, threaded through edgeVal.outNext
	inHead      int32 // edges to this node, threaded through edgeVal.inNext
}

type edgeKey struct {
	from, to int32 // node slots
	port     uint16
}

type edgeVal struct {
	first, last      uint64
	counts           [numKinds]uint64
	outPrev, outNext int32
	inPrev, inNext   int32
}

// Graph is the bounded client-server flow graph.
//
// Observations: an outbound event from a process (connect, tcp_attempt,
// tcp_established, tcp_close) adds the edge process -> remote host, labelled
// with the remote port; an inbound_accept or reset_sent adds remote host ->
// local service (the service node carries the port, the edge's port is 0).
// Edges count events per kind, so one TCP connection typically counts once
// as tcp_attempt and once as tcp_established (and as connect).
//
// Ageing walks edges and nodes from the least recently observed, stopping at
// the first one still within MaxAge. Events from different CPUs reach user
// space slightly out of timestamp order, so an expired entry observed just
// before a younger one waits behind it: it may outlive MaxAge by that
// disorder (microseconds in practice), never by more.
//
// A Graph is not safe for concurrent use: the detector owns it and calls
// Observe, Expire and Snapshot from one goroutine. Snapshot returns a deep
// copy that other goroutines may then read or encode freely.
type Graph struct {
	cfg    Config
	maxAge uint64
	nodes  *lru.Map[NodeKey, nodeVal]
	edges  *lru.Map[edgeKey, edgeVal]
	latest uint64
	stats  Stats
}

// New returns an empty graph bounded by cfg.
func New(cfg Config) (*Graph, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	g := &Graph{cfg: cfg, maxAge: uint64(cfg.MaxAge)}
	g.nodes = lru.New[NodeKey, nodeVal](cfg.MaxNodes, g.onNodeEvict)
	g.edges = lru.New[edgeKey, edgeVal](cfg.MaxEdges, g.onEdgeEvict)
	return g, nil
}

// expirePerObserve bounds the amortised ageing done by each Observe.
const expirePerObserve = 2

// Observe records ev. It does not allocate once the graph has reached its
// steady size, and ages out at most a few idle edges and nodes per call.
func (g *Graph) Observe(ev *event.Event) {
	now := ev.Timestamp
	g.latest = max(g.latest, now)
	g.expire(now, expirePerObserve)

	var from, to NodeKey
	var port uint16
	switch {
	case ev.Kind.IsOutbound():
		if !ev.Remote.Addr().IsValid() {
			g.stats.Ignored++
			return
		}
		from = NodeKey{Kind: NodeProcess, Comm: ev.Comm}
		to = NodeKey{Kind: NodeHost, Addr: ev.Remote.Addr()}
		port = ev.Remote.Port()
	case ev.Kind == event.KindInboundAccept || ev.Kind == event.KindResetSent:
		if !ev.Remote.Addr().IsValid() || !ev.Local.Addr().IsValid() {
			g.stats.Ignored++
			return
		}
		from = NodeKey{Kind: NodeHost, Addr: ev.Remote.Addr()}
		to = NodeKey{Kind: NodeService, Addr: ev.Local.Addr(), Port: ev.Local.Port()}
	default:
		g.stats.Ignored++
		return
	}
	fs := g.touchNode(from, now, ev.TGID)
	ts := g.touchNode(to, now, 0)

	ek := edgeKey{from: fs, to: ts, port: port}
	es, ok := g.edges.Lookup(ek)
	if ok {
		g.edges.Touch(es)
	} else {
		es, _ = g.edges.Insert(ek)
		e := g.edges.Value(es)
		e.first = now
		g.link(es, ek)
	}
	e := g.edges.Value(es)
	e.last = max(e.last, now)
	if int(ev.Kind) < numKinds {
		e.counts[ev.Kind]++
	}
}

func (g *Graph) touchNode(k NodeKey, now uint64, tgid uint32) int32 {
	s, ok := g.nodes.Lookup(k)
	if ok {
		g.nodes.Touch(s)
	} else {
		s, _ = g.nodes.Insert(k)
		n := g.nodes.Value(s)
		n.first, n.outHead, n.inHead = now, lru.Nil, lru.Nil
	}
	n := g.nodes.Value(s)
	n.last = max(n.last, now)
	n.count++
	if tgid != 0 {
		n.lastTGID = tgid
	}
	return s
}

// link threads a new edge into its nodes' adjacency lists.
func (g *Graph) link(es int32, k edgeKey) {
	e := g.edges.Value(es)
	from, to := g.nodes.Value(k.from), g.nodes.Value(k.to)
	e.outPrev, e.outNext = lru.Nil, from.outHead
	if from.outHead != lru.Nil {
		g.edges.Value(from.outHead).outPrev = es
	}
	from.outHead = es
	e.inPrev, e.inNext = lru.Nil, to.inHead
	if to.inHead != lru.Nil {
		g.edges.Value(to.inHead).inPrev = es
	}
	to.inHead = es
}

func (g *Graph) unlink(es int32) {
	k := g.edges.Key(es)
	e := g.edges.Value(es)
	if e.outPrev != lru.Nil {
		g.edges.Value(e.outPrev).outNext = e.outNext
	} else {
		g.nodes.Value(k.from).outHead = e.outNext
	}
	if e.outNext != lru.Nil {
		g.edges.Value(e.outNext).outPrev = e.outPrev
	}
	if e.inPrev != lru.Nil {
		g.edges.Value(e.inPrev).inNext = e.inNext
	} else {
		g.nodes.Value(k.to).inHead = e.inNext
	}
	if e.inNext != lru.Nil {
		g.edges.Value(e.inNext).inPrev = e.inPrev
	}
}

func (g *Graph) onEdgeEvict(es int32) {
	g.unlink(es)
	g.stats.EdgesEvicted++
}

func (g *Graph) onNodeEvict(ns int32) {
	g.stats.NodesEvicted++
	g.removeNodeEdges(ns, false)
}

// removeNodeEdges removes every edge touching node ns.
func (g *Graph) removeNodeEdges(ns int32, expired bool) {
	for {
		n := g.nodes.Value(ns)
		es := n.outHead
		if es == lru.Nil {
			es = n.inHead
		}
		if es == lru.Nil {
			return
		}
		g.unlink(es)
		g.edges.Remove(es)
		if expired {
			g.stats.EdgesExpired++
		} else {
			g.stats.EdgesEvicted++
		}
	}
}

// Expire removes the edges and nodes idle for longer than MaxAge at now and
// returns how many edges went. It visits only what it removes (plus one
// entry of each kind), oldest first; Observe already does a little of this
// on every call, so Expire is for a periodic tick when events are sparse.
func (g *Graph) Expire(now uint64) int {
	g.latest = max(g.latest, now)
	before := g.stats.EdgesExpired
	g.expire(now, -1)
	return int(g.stats.EdgesExpired - before)
}

func (g *Graph) expire(now uint64, limit int) {
	if g.maxAge == 0 {
		return
	}
	for n := 0; limit < 0 || n < limit; n++ {
		es, ok := g.edges.Oldest()
		if !ok || !g.old(g.edges.Value(es).last, now) {
			break
		}
		g.unlink(es)
		g.edges.Remove(es)
		g.stats.EdgesExpired++
	}
	for n := 0; limit < 0 || n < limit; n++ {
		ns, ok := g.nodes.Oldest()
		if !ok || !g.old(g.nodes.Value(ns).last, now) {
			break
		}
		g.removeNodeEdges(ns, true)
		g.nodes.Remove(ns)
		g.stats.NodesExpired++
	}
}

func (g *Graph) old(last, now uint64) bool { return now > last && now-last > g.maxAge }

// Stats returns the graph's sizes and counters.
func (g *Graph) Stats() Stats {
	s := g.stats
	s.Nodes, s.Edges = g.nodes.Len(), g.edges.Len()
	return s
}
