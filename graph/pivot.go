package graph

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/connwarden/connwarden/detector/event"
	"github.com/connwarden/connwarden/internal/fielderr"
	"github.com/connwarden/connwarden/internal/lru"
)

// PivotConfig is the lateral-movement rule: an inbound connection accepted by
// a local service, then that service's process connecting to an internal
// host within Window.
//
// Linking the accept to a process is the hard part: the kernel reports an
// accept in softirq context, with no process, and connwarden sees no bind or
// listen. So the link is declared, not observed:
//
//   - by name: a PivotService says which local port the service listens on
//     and which comms serve it. An outbound connection by a process with one
//     of those comms, within Window after an accept on that port, is
//     attributed to that accept. Comm is the name of the program that
//     connects: if the service runs a shell that runs ssh, list "ssh" (or
//     leave Comms empty, meaning any process, at the price of attributing
//     every internal connection in the window to the service).
//   - by process: the caller may learn that TGID t listens on port p (for
//     example from /proc/net/tcp and /proc/<pid>/fd) and call Bind(t, p).
//     Outbound connections by t are then attributed to accepts on p whatever
//     their comm, provided a service covers p. Children of t are not
//     covered: TGIDs say nothing about ancestry.
//
// Attribution is by time only: with several clients accepted in the window,
// the finding names the most recent and reports how many there were.
type PivotConfig struct {
	Name string
	// Window is T: the outbound connection must come at most T after the
	// accept (exactly T counts, T+1ns does not) and not before it.
	Window time.Duration
	// Services are the local services watched; at least one.
	Services []PivotService
	// Internal are the targets that make a pivot (for example 10.0.0.0/8);
	// at least one.
	Internal []netip.Prefix
	// TargetKinds are the outbound events that count as connecting. Empty
	// means tcp_attempt.
	TargetKinds []event.Kind
	// MaxBindings bounds the TGIDs remembered by Bind (least recently bound
	// or used forgotten). Zero disables Bind.
	MaxBindings int
}

// PivotService is one watched local service.
type PivotService struct {
	// Port is the service's local port; 0 means any port.
	Port uint16
	// Comms are the command names whose outbound connections are attributed
	// to the service; empty means any process.
	Comms []string
}

// Validate reports every problem as a FieldError.
func (c *PivotConfig) Validate() error {
	var errs fielderr.List
	c.validate(&errs)
	return errs.Err()
}

func (c *PivotConfig) validate(errs *fielderr.List) kindSet {
	if c.Name == "" {
		errs.Addf("name", "empty rule name")
	}
	if c.Window <= 0 {
		errs.Addf("window", "must be positive, got %v", c.Window)
	}
	if len(c.Services) == 0 {
		errs.Addf("services", "no services; name at least one local port (0 for any)")
	}
	ports := map[uint16]int{}
	for i, s := range c.Services {
		if j, dup := ports[s.Port]; dup {
			errs.Addf(fmt.Sprintf("services[%d].port", i), "port %d already watched by services[%d]; merge their comms", s.Port, j)
		} else {
			ports[s.Port] = i
		}
		for j, comm := range s.Comms {
			if comm == "" || len(comm) >= event.CommLen {
				errs.Addf(fmt.Sprintf("services[%d].comms[%d]", i, j), "comm %q must be 1 to %d bytes", comm, event.CommLen-1)
			}
		}
	}
	if len(c.Internal) == 0 {
		errs.Addf("internal", "no internal prefixes; give the networks a pivot would reach, e.g. 10.0.0.0/8")
	}
	for i, p := range c.Internal {
		if !p.IsValid() {
			errs.Addf(fmt.Sprintf("internal[%d]", i), "invalid prefix")
		} else if p.Addr().Is4In6() {
			errs.Addf(fmt.Sprintf("internal[%d]", i), "prefix %s is v4-mapped; events carry plain IPv4, write %s", p, "the IPv4 prefix")
		}
	}
	if c.MaxBindings < 0 {
		errs.Addf("max_bindings", "must not be negative, got %d", c.MaxBindings)
	}
	return makeKinds(errs, "target_kinds", c.TargetKinds, []event.Kind{event.KindTCPAttempt}, outboundKind, outboundKindNames)
}

// acceptsPerService is how many recent accepts a service remembers.
const acceptsPerService = 8

type acceptRec struct {
	at       uint64
	attacker netip.AddrPort
	local    netip.AddrPort
}

type acceptRing struct {
	recs [acceptsPerService]acceptRec
	next int
	n    int
}

func (r *acceptRing) add(a acceptRec) {
	r.recs[r.next] = a
	r.next = (r.next + 1) % acceptsPerService
	r.n = min(r.n+1, acceptsPerService)
}

// maxBoundPorts is how many ports Bind remembers per TGID.
const maxBoundPorts = 4

type boundPorts [maxBoundPorts]uint16 // 0 = empty

// Pivot detects accept-then-connect-inward chains. Not safe for concurrent
// use.
type Pivot struct {
	cfg      PivotConfig
	kinds    kindSet
	window   uint64
	internal []netip.Prefix
	rings    []acceptRing     // one per service, in config order
	byPort   map[uint16]int32 // service port -> ring; port 0 is the any-port ring
	anyRing  int32            // ring of the Port 0 service, or lru.Nil
	byComm   map[[event.CommLen]byte][]int32
	anyComm  []int32 // rings of services with no Comms
	bindings *lru.Map[uint32, boundPorts]
}

// NewPivot validates cfg and returns its detector.
func NewPivot(cfg PivotConfig) (*Pivot, error) {
	var errs fielderr.List
	kinds := cfg.validate(&errs)
	if err := errs.Err(); err != nil {
		return nil, err
	}
	d := &Pivot{
		cfg: cfg, kinds: kinds, window: uint64(cfg.Window),
		rings:   make([]acceptRing, len(cfg.Services)),
		byPort:  make(map[uint16]int32, len(cfg.Services)),
		anyRing: lru.Nil,
		byComm:  map[[event.CommLen]byte][]int32{},
	}
	for _, p := range cfg.Internal {
		d.internal = append(d.internal, p.Masked())
	}
	for i, s := range cfg.Services {
		d.byPort[s.Port] = int32(i)
		if s.Port == 0 {
			d.anyRing = int32(i)
		}
		if len(s.Comms) == 0 {
			d.anyComm = append(d.anyComm, int32(i))
		}
		for _, c := range s.Comms {
			var k [event.CommLen]byte
			copy(k[:], c)
			if l := d.byComm[k]; len(l) == 0 || l[len(l)-1] != int32(i) {
				d.byComm[k] = append(l, int32(i))
			}
		}
	}
	for k, l := range d.byComm {
		d.byComm[k] = append(l, d.anyComm...)
	}
	if cfg.MaxBindings > 0 {
		d.bindings = lru.New[uint32, boundPorts](cfg.MaxBindings, nil)
	}
	return d, nil
}

// Bind records that process tgid serves local port (see PivotConfig). It
// reports false, and records nothing, when bindings are disabled, port is 0,
// no service covers port, or tgid already has the maximum of 4 ports.
func (d *Pivot) Bind(tgid uint32, port uint16) bool {
	if d.bindings == nil || port == 0 {
		return false
	}
	if _, ok := d.byPort[port]; !ok && d.anyRing == lru.Nil {
		return false
	}
	s, ok := d.bindings.Lookup(tgid)
	if ok {
		d.bindings.Touch(s)
	} else {
		s, _ = d.bindings.Insert(tgid)
	}
	b := d.bindings.Value(s)
	for i, p := range b {
		if p == port {
			return true
		}
		if p == 0 {
			b[i] = port
			return true
		}
	}
	return false
}

// Unbind forgets every port bound to tgid (call it when the process exits).
func (d *Pivot) Unbind(tgid uint32) {
	if d.bindings == nil {
		return
	}
	if s, ok := d.bindings.Lookup(tgid); ok {
		d.bindings.Remove(s)
	}
}

// pivotScan accumulates the best accept over the candidate services.
type pivotScan struct {
	best    acceptRec
	found   bool
	accepts int
}

func (d *Pivot) scan(sc *pivotScan, ring int32, port uint16, now uint64) {
	r := &d.rings[ring]
	for i := 0; i < r.n; i++ {
		a := &r.recs[i]
		if a.at > now || now-a.at > d.window || (port != 0 && a.local.Port() != port) {
			continue
		}
		sc.accepts++
		if !sc.found || a.at > sc.best.at {
			sc.best, sc.found = *a, true
		}
	}
}

// Observe records accepts and appends a finding to dst when a watched
// service's process connects to an internal host within Window of one. It
// does not allocate.
func (d *Pivot) Observe(ev *event.Event, dst []Finding) []Finding {
	now := ev.Timestamp
	if ev.Kind == event.KindInboundAccept {
		a := acceptRec{at: now, attacker: ev.Remote, local: ev.Local}
		if r, ok := d.byPort[ev.Local.Port()]; ok && ev.Local.Port() != 0 {
			d.rings[r].add(a)
		}
		if d.anyRing != lru.Nil {
			d.rings[d.anyRing].add(a)
		}
		return dst
	}
	if !d.kinds.has(ev.Kind) || ev.Direction == event.DirInbound || !d.isInternal(ev.Remote.Addr()) {
		return dst
	}

	var sc pivotScan
	cands, ok := d.byComm[ev.Comm]
	if !ok {
		cands = d.anyComm
	}
	for _, r := range cands {
		d.scan(&sc, r, 0, now)
	}
	if d.bindings != nil {
		if s, ok := d.bindings.Lookup(ev.TGID); ok && ev.TGID != 0 {
			d.bindings.Touch(s)
			for _, p := range *d.bindings.Value(s) {
				if p == 0 {
					break
				}
				r, ok := d.byPort[p]
				filter := uint16(0)
				if !ok {
					r, filter = d.anyRing, p
				}
				if !contains(cands, r) { // else already scanned, unfiltered
					d.scan(&sc, r, filter, now)
				}
			}
		}
	}
	if !sc.found {
		return dst
	}
	return append(dst, Finding{
		Rule: d.cfg.Name, Kind: FindingPivot, Timestamp: now,
		Subject: NodeKey{Kind: NodeProcess, Comm: ev.Comm},
		TGID:    ev.TGID, UID: ev.UID, Cgroup: ev.Cgroup,
		Peer: ev.Remote,
		Pivot: PivotChain{
			Attacker: sc.best.attacker, Service: sc.best.local,
			AcceptedAt: sc.best.at, Accepts: sc.accepts,
		},
	})
}

func (d *Pivot) isInternal(a netip.Addr) bool {
	if !a.IsValid() {
		return false
	}
	for _, p := range d.internal {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func contains(l []int32, x int32) bool {
	for _, v := range l {
		if v == x {
			return true
		}
	}
	return false
}
