package graph

import (
	"net/netip"
	"time"

	"github.com/connwarden/connwarden/detector/event"
	"github.com/connwarden/connwarden/internal/fielderr"
	"github.com/connwarden/connwarden/internal/lru"
)

// NewEdgeConfig is the new-edge rule: after a learning period, a process
// talking to a peer it never talked to before.
type NewEdgeConfig struct {
	Name string
	// Kinds are the outbound events that count. Empty means tcp_attempt.
	Kinds []event.Kind
	// Learning is L, measured from the first event this rule sees. Events
	// up to exactly L later only learn; from L+1ns on, unknown pairs fire.
	// Zero learns only from events at the first timestamp.
	Learning time.Duration
	// PrefixV4 and PrefixV6 aggregate peers: 24 makes 10.1.2.3 and 10.1.2.9
	// one peer. Zero means a single host (32, 128).
	PrefixV4, PrefixV6 int
	// Ports makes the remote port part of the peer.
	Ports bool
	// MaxPairs bounds the remembered (process, peer) pairs; the least
	// recently seen is forgotten, and fires again if it comes back.
	MaxPairs int
}

// Validate reports every problem as a FieldError.
func (c *NewEdgeConfig) Validate() error {
	var errs fielderr.List
	c.validate(&errs)
	return errs.Err()
}

func (c *NewEdgeConfig) validate(errs *fielderr.List) kindSet {
	if c.Name == "" {
		errs.Addf("name", "empty rule name")
	}
	kinds := makeKinds(errs, "kinds", c.Kinds, []event.Kind{event.KindTCPAttempt}, outboundKind, outboundKindNames)
	if c.Learning < 0 {
		errs.Addf("learning", "must not be negative, got %v", c.Learning)
	}
	if c.PrefixV4 < 0 || c.PrefixV4 > 32 {
		errs.Addf("prefix_v4", "must be between 1 and 32 (0 for 32), got %d", c.PrefixV4)
	}
	if c.PrefixV6 < 0 || c.PrefixV6 > 128 {
		errs.Addf("prefix_v6", "must be between 1 and 128 (0 for 128), got %d", c.PrefixV6)
	}
	if c.MaxPairs < 1 {
		errs.Addf("max_pairs", "must be at least 1, got %d", c.MaxPairs)
	}
	return kinds
}

type pairKey struct {
	comm [event.CommLen]byte
	peer netip.Prefix
	port uint16
}

// NewEdge detects new (process, peer) pairs. The process is its comm. Not
// safe for concurrent use.
type NewEdge struct {
	cfg         NewEdgeConfig
	kinds       kindSet
	v4, v6      int
	learning    uint64
	started     bool
	start       uint64
	known       *lru.Map[pairKey, struct{}]
	learnedFull bool // the last event was past the learning period
}

// NewNewEdge validates cfg and returns its detector.
func NewNewEdge(cfg NewEdgeConfig) (*NewEdge, error) {
	var errs fielderr.List
	kinds := cfg.validate(&errs)
	if err := errs.Err(); err != nil {
		return nil, err
	}
	d := &NewEdge{cfg: cfg, kinds: kinds, v4: cfg.PrefixV4, v6: cfg.PrefixV6, learning: uint64(cfg.Learning)}
	if d.v4 == 0 {
		d.v4 = 32
	}
	if d.v6 == 0 {
		d.v6 = 128
	}
	d.known = lru.New[pairKey, struct{}](cfg.MaxPairs, nil)
	return d, nil
}

// NewEdgeStats are the detector's sizes and counters.
type NewEdgeStats struct {
	Pairs   int
	Evicted uint64 // pairs forgotten at MaxPairs
	// Learning is true until the learning period has passed; LearningEnds
	// is its last instant (ns), valid once an event was seen.
	Learning     bool
	LearningEnds uint64
}

// Stats returns the detector's sizes and counters. Learning reflects the
// last event observed.
func (d *NewEdge) Stats() NewEdgeStats {
	return NewEdgeStats{
		Pairs: d.known.Len(), Evicted: d.known.Evictions(),
		Learning: !d.learnedFull, LearningEnds: d.start + d.learning,
	}
}

// Observe records ev's pair and appends a finding to dst when the pair is
// new after the learning period. It does not allocate once the pair table
// has reached its steady size.
func (d *NewEdge) Observe(ev *event.Event, dst []Finding) []Finding {
	if !d.kinds.has(ev.Kind) || ev.Direction == event.DirInbound {
		return dst
	}
	addr := ev.Remote.Addr()
	if !addr.IsValid() {
		return dst
	}
	now := ev.Timestamp
	if !d.started {
		d.started, d.start = true, now
	}
	learning := within(d.start, now, d.learning)
	d.learnedFull = !learning

	bits := d.v4
	if addr.Is6() {
		bits = d.v6
	}
	pfx, _ := addr.Prefix(bits) // bits is within range for the family
	k := pairKey{comm: ev.Comm, peer: pfx}
	if d.cfg.Ports {
		k.port = ev.Remote.Port()
	}
	if s, ok := d.known.Lookup(k); ok {
		d.known.Touch(s)
		return dst
	}
	d.known.Insert(k)
	if learning {
		return dst
	}
	return append(dst, Finding{
		Rule: d.cfg.Name, Kind: FindingNewEdge, Timestamp: now,
		Subject: NodeKey{Kind: NodeProcess, Comm: ev.Comm},
		TGID:    ev.TGID, UID: ev.UID, Cgroup: ev.Cgroup,
		Peer: ev.Remote, PeerPrefix: pfx,
	})
}
