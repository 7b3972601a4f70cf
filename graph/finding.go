package graph

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/connwarden/connwarden/detector/event"
	"github.com/connwarden/connwarden/internal/fielderr"
)

// FindingKind says which rule type produced a Finding.
type FindingKind uint8

const (
	FindingUnknown FindingKind = iota
	FindingFanOut
	FindingNewEdge
	FindingPivot
)

var findingKindNames = [...]string{"unknown", "fan_out", "new_edge", "pivot"}

func (k FindingKind) String() string {
	if int(k) < len(findingKindNames) {
		return findingKindNames[k]
	}
	return "unknown"
}

// Finding is what a graph rule reports. It is a plain value with no
// per-finding allocation: Rule shares the config's string, addresses are
// netip values.
type Finding struct {
	// Rule is the Name of the rule's config.
	Rule string
	Kind FindingKind
	// Timestamp is the triggering event's time (ns).
	Timestamp uint64
	// Subject is the node the finding is about: the process (fan-out
	// outbound, new edge, pivot) or the remote host (fan-out inbound).
	Subject NodeKey
	// TGID, UID and Cgroup are the triggering event's process, 0 when the
	// event has none (inbound).
	TGID, UID uint32
	Cgroup    uint64
	// Peer is the triggering event's peer: the remote endpoint for outbound
	// events (the internal target for a pivot), the local endpoint for
	// inbound fan-out.
	Peer netip.AddrPort
	// PeerPrefix is the new peer as NewEdge aggregated it (a host is /32 or
	// /128).
	PeerPrefix netip.Prefix
	// Distinct is the number of distinct peers FanOut counted in its window
	// (the threshold when it fired).
	Distinct int
	// Pivot is the chain a pivot finding names; zero otherwise.
	Pivot PivotChain
}

// PivotChain is attacker -> local service -> process -> internal target. The
// process and target are the Finding's Subject/TGID and Peer.
type PivotChain struct {
	// Attacker is the remote end of the accepted connection.
	Attacker netip.AddrPort
	// Service is the local end of the accepted connection.
	Service netip.AddrPort
	// AcceptedAt is the accept's time (ns).
	AcceptedAt uint64
	// Accepts is how many remembered accepts on the candidate services fell
	// in the window. Above 1 the attribution to Attacker (the most recent)
	// is ambiguous. An accept watched both by its port's service and by a
	// port-0 service counts twice.
	Accepts int
}

// String describes the finding for logs. It allocates.
func (f *Finding) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %q at %d: %s", f.Kind, f.Rule, f.Timestamp, f.Subject)
	if f.TGID != 0 {
		fmt.Fprintf(&b, " (tgid %d uid %d)", f.TGID, f.UID)
	}
	switch f.Kind {
	case FindingFanOut:
		fmt.Fprintf(&b, " reached %d distinct peers, latest %s", f.Distinct, f.Peer)
	case FindingNewEdge:
		fmt.Fprintf(&b, " talked to new peer %s (%s)", f.PeerPrefix, f.Peer)
	case FindingPivot:
		fmt.Fprintf(&b, ": %s -> service %s (accepted at %d, %d accepts in window) -> %s -> %s",
			f.Pivot.Attacker, f.Pivot.Service, f.Pivot.AcceptedAt, f.Pivot.Accepts, f.Subject.Name(), f.Peer)
	}
	return b.String()
}

// kindSet is a set of event kinds, indexable without allocation.
type kindSet [numKinds]bool

func (s *kindSet) has(k event.Kind) bool { return int(k) < numKinds && s[k] }

// makeKinds validates kinds for a rule field and returns them as a set, or
// def when kinds is empty. allowed says which kinds the field accepts.
func makeKinds(errs *fielderr.List, path string, kinds, def []event.Kind, allowed func(event.Kind) bool, want string) kindSet {
	var s kindSet
	if len(kinds) == 0 {
		kinds = def
	}
	for i, k := range kinds {
		if k == event.KindUnknown || int(k) >= numKinds || !allowed(k) {
			errs.Addf(fmt.Sprintf("%s[%d]", path, i), "kind %s not allowed here; valid: %s", k, want)
			continue
		}
		s[k] = true
	}
	return s
}

func outboundKind(k event.Kind) bool { return k.IsOutbound() }

func inboundKind(k event.Kind) bool {
	return k == event.KindInboundAccept || k == event.KindResetSent
}

const (
	outboundKindNames = "connect, tcp_attempt, tcp_established, tcp_close"
	inboundKindNames  = "inbound_accept, reset_sent"
)

// within reports whether an event at now is at most window after at. Events
// that arrive slightly out of order (now < at) count as within.
func within(at, now, window uint64) bool { return now <= at || now-at <= window }
