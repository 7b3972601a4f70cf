package graph

import (
	"net/netip"
	"time"

	"github.com/connwarden/connwarden/detector/event"
	"github.com/connwarden/connwarden/internal/fielderr"
	"github.com/connwarden/connwarden/internal/lru"
)

// FanOutConfig is the fan-out rule: a subject reaching at least Threshold
// distinct peers within Window.
type FanOutConfig struct {
	Name string
	// Direction selects subject and peers. Outbound: the subject is a
	// process (its comm, or comm and TGID with PerTGID) and peers are remote
	// hosts. Inbound: the subject is a remote host and peers are local
	// addresses (a port scan of this host with CountPorts).
	Direction event.Direction
	// Kinds are the events that count. Empty means tcp_attempt for outbound
	// and inbound_accept plus reset_sent for inbound.
	Kinds []event.Kind
	// Window is T: peers seen within T of the current event count. A peer
	// seen exactly T before counts; T+1ns before does not.
	Window time.Duration
	// Threshold is N, the distinct peers that fire the rule (2..4096).
	Threshold int
	// CountPorts makes a peer an address:port instead of an address.
	CountPorts bool
	// PerTGID makes outbound subjects comm+TGID, so two processes with one
	// name are counted apart. Not valid for inbound.
	PerTGID bool
	// MaxSubjects bounds the subjects tracked (least recently seen evicted).
	// Memory is about MaxSubjects × Threshold peer slots; their product may
	// not exceed 1<<20.
	MaxSubjects int
}

const (
	maxFanOutThreshold = 4096
	maxFanOutSlots     = 1 << 20
)

// Validate reports every problem as a FieldError.
func (c *FanOutConfig) Validate() error {
	var errs fielderr.List
	c.validate(&errs)
	return errs.Err()
}

func (c *FanOutConfig) validate(errs *fielderr.List) kindSet {
	if c.Name == "" {
		errs.Addf("name", "empty rule name")
	}
	var kinds kindSet
	switch c.Direction {
	case event.DirOutbound:
		kinds = makeKinds(errs, "kinds", c.Kinds, []event.Kind{event.KindTCPAttempt}, outboundKind, outboundKindNames)
	case event.DirInbound:
		kinds = makeKinds(errs, "kinds", c.Kinds, []event.Kind{event.KindInboundAccept, event.KindResetSent}, inboundKind, inboundKindNames)
		if c.PerTGID {
			errs.Addf("per_tgid", "inbound events carry no process; per_tgid applies to outbound only")
		}
	default:
		errs.Addf("direction", "must be outbound or inbound, got %s", c.Direction)
	}
	if c.Window <= 0 {
		errs.Addf("window", "must be positive, got %v", c.Window)
	}
	if c.Threshold < 2 || c.Threshold > maxFanOutThreshold {
		errs.Addf("threshold", "must be between 2 and %d, got %d", maxFanOutThreshold, c.Threshold)
	}
	if c.MaxSubjects < 1 {
		errs.Addf("max_subjects", "must be at least 1, got %d", c.MaxSubjects)
	} else if c.Threshold >= 2 && c.Threshold <= maxFanOutThreshold && c.MaxSubjects*c.Threshold > maxFanOutSlots {
		errs.Addf("max_subjects", "max_subjects × threshold = %d exceeds %d peer slots; lower one of them",
			c.MaxSubjects*c.Threshold, maxFanOutSlots)
	}
	return kinds
}

type fanSubjectKey struct {
	comm [event.CommLen]byte
	tgid uint32
	addr netip.Addr
}

type fanSubject struct {
	newest, oldest int32 // peer slots, newest first via fanPeer.next
	free           int32 // returned slots of this subject's block
	used           int32 // block slots handed out so far
	n              int32 // peers held
	fired          bool
	firedAt        uint64
}

type fanPeerKey struct {
	subject int32
	peer    netip.AddrPort
}

type fanPeer struct {
	peer       netip.AddrPort
	last       uint64
	prev, next int32 // towards newer / older
}

// FanOut detects fan-out. For each subject it keeps the Threshold most
// recently seen distinct peers: at least N distinct peers were seen within T
// exactly when the N-th most recent one was, so this is exact, not an
// estimate, in O(N) memory per subject. A subject fires at most once per
// window (the first event at which it reaches N, then again only after T
// has passed since it fired). Not safe for concurrent use.
type FanOut struct {
	cfg      FanOutConfig
	kinds    kindSet
	window   uint64
	n        int32
	subjects *lru.Map[fanSubjectKey, fanSubject]
	peers    []fanPeer // subject slot s owns peers[s*n : s*n+n]
	index    map[fanPeerKey]int32
	expired  uint64
}

// NewFanOut validates cfg and returns its detector.
func NewFanOut(cfg FanOutConfig) (*FanOut, error) {
	var errs fielderr.List
	kinds := cfg.validate(&errs)
	if err := errs.Err(); err != nil {
		return nil, err
	}
	d := &FanOut{cfg: cfg, kinds: kinds, window: uint64(cfg.Window), n: int32(cfg.Threshold)}
	d.subjects = lru.New[fanSubjectKey, fanSubject](cfg.MaxSubjects, d.dropPeers)
	d.index = make(map[fanPeerKey]int32, min(cfg.MaxSubjects*cfg.Threshold, 4096))
	return d, nil
}

// FanOutStats are the detector's sizes and counters.
type FanOutStats struct {
	Subjects int
	Evicted  uint64 // subjects evicted at MaxSubjects
	Expired  uint64 // subjects dropped after all their peers left the window
}

// Stats returns the detector's sizes and counters.
func (d *FanOut) Stats() FanOutStats {
	return FanOutStats{Subjects: d.subjects.Len(), Evicted: d.subjects.Evictions(), Expired: d.expired}
}

// Observe counts ev and appends a finding to dst when the rule fires. It
// does not allocate once the subject table has reached its steady size.
func (d *FanOut) Observe(ev *event.Event, dst []Finding) []Finding {
	if !d.kinds.has(ev.Kind) {
		return dst
	}
	now := ev.Timestamp
	d.expire(now, expirePerObserve)

	var sk fanSubjectKey
	var peer netip.AddrPort
	if d.cfg.Direction == event.DirOutbound {
		if ev.Direction == event.DirInbound {
			return dst
		}
		sk.comm = ev.Comm
		if d.cfg.PerTGID {
			sk.tgid = ev.TGID
		}
		peer = ev.Remote
	} else {
		sk.addr = ev.Remote.Addr()
		peer = ev.Local
	}
	if !d.cfg.CountPorts {
		peer = netip.AddrPortFrom(peer.Addr(), 0)
	}
	if !peer.Addr().IsValid() || (d.cfg.Direction == event.DirInbound && !sk.addr.IsValid()) {
		return dst
	}

	ss, ok := d.subjects.Lookup(sk)
	if ok {
		d.subjects.Touch(ss)
	} else {
		ss, _ = d.subjects.Insert(sk)
		s := d.subjects.Value(ss)
		s.newest, s.oldest, s.free = lru.Nil, lru.Nil, lru.Nil
		if need := int(ss+1) * int(d.n); need > len(d.peers) {
			d.peers = append(d.peers, make([]fanPeer, need-len(d.peers))...)
		}
	}
	s := d.subjects.Value(ss)

	// Peers that left the window are the oldest; drop them.
	for s.oldest != lru.Nil && !within(d.peers[s.oldest].last, now, d.window) {
		d.removePeer(ss, s, s.oldest)
	}
	pk := fanPeerKey{subject: ss, peer: peer}
	if p, ok := d.index[pk]; ok {
		d.peers[p].last = max(d.peers[p].last, now)
		d.unlinkPeer(s, p)
		d.pushPeer(s, p)
	} else {
		if s.n == d.n {
			// N+1 distinct in the window: only the N most recent matter.
			d.removePeer(ss, s, s.oldest)
		}
		var p int32
		if s.free != lru.Nil {
			p = s.free
			s.free = d.peers[p].next
		} else {
			p = ss*d.n + s.used
			s.used++
		}
		d.peers[p] = fanPeer{peer: peer, last: now}
		d.pushPeer(s, p)
		d.index[pk] = p
		s.n++
	}

	if s.n < d.n || (s.fired && within(s.firedAt, now, d.window)) {
		return dst
	}
	s.fired, s.firedAt = true, now
	f := Finding{
		Rule: d.cfg.Name, Kind: FindingFanOut, Timestamp: now,
		Peer: peer, Distinct: int(s.n),
	}
	if d.cfg.Direction == event.DirOutbound {
		f.Subject = NodeKey{Kind: NodeProcess, Comm: ev.Comm}
		f.TGID, f.UID, f.Cgroup = ev.TGID, ev.UID, ev.Cgroup
	} else {
		f.Subject = HostNode(sk.addr)
	}
	return append(dst, f)
}

// Expire drops the subjects whose every peer is older than Window at now,
// oldest first, and returns how many.
func (d *FanOut) Expire(now uint64) int { return d.expire(now, -1) }

func (d *FanOut) expire(now uint64, limit int) int {
	n := 0
	for ; limit < 0 || n < limit; n++ {
		ss, ok := d.subjects.Oldest()
		if !ok {
			break
		}
		s := d.subjects.Value(ss)
		if s.newest != lru.Nil && within(d.peers[s.newest].last, now, d.window) {
			break
		}
		if s.fired && within(s.firedAt, now, d.window) {
			break
		}
		d.dropPeers(ss)
		d.subjects.Remove(ss)
		d.expired++
	}
	return n
}

// dropPeers forgets every peer of subject slot ss (on eviction or expiry).
func (d *FanOut) dropPeers(ss int32) {
	s := d.subjects.Value(ss)
	for p := s.newest; p != lru.Nil; p = d.peers[p].next {
		delete(d.index, fanPeerKey{subject: ss, peer: d.peers[p].peer})
	}
	s.newest, s.oldest, s.n = lru.Nil, lru.Nil, 0
}

func (d *FanOut) removePeer(ss int32, s *fanSubject, p int32) {
	delete(d.index, fanPeerKey{subject: ss, peer: d.peers[p].peer})
	d.unlinkPeer(s, p)
	d.peers[p].next = s.free
	s.free = p
	s.n--
}

func (d *FanOut) unlinkPeer(s *fanSubject, p int32) {
	e := &d.peers[p]
	if e.prev != lru.Nil {
		d.peers[e.prev].next = e.next
	} else {
		s.newest = e.next
	}
	if e.next != lru.Nil {
		d.peers[e.next].prev = e.prev
	} else {
		s.oldest = e.prev
	}
	e.prev, e.next = lru.Nil, lru.Nil
}

func (d *FanOut) pushPeer(s *fanSubject, p int32) {
	e := &d.peers[p]
	e.prev, e.next = lru.Nil, s.newest
	if s.newest != lru.Nil {
		d.peers[s.newest].prev = p
	}
	s.newest = p
	if s.oldest == lru.Nil {
		s.oldest = p
	}
}
