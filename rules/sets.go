package rules

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/connwarden/connwarden/detector/event"
)

// PortSet is a set of TCP/UDP ports, held as a 64 Kibit bitmap so that a
// lookup is one shift and one AND.
type PortSet struct {
	bits   [65536 / 64]uint64
	ranges []PortRange // the ranges as written, merged and sorted
}

// PortRange is an inclusive range of ports.
type PortRange struct{ Lo, Hi uint16 }

func (r PortRange) String() string {
	if r.Lo == r.Hi {
		return strconv.Itoa(int(r.Lo))
	}
	return fmt.Sprintf("%d-%d", r.Lo, r.Hi)
}

func newPortSet(rs []PortRange) *PortSet {
	s := &PortSet{}
	for _, r := range rs {
		for p := int(r.Lo); p <= int(r.Hi); p++ {
			s.bits[p>>6] |= 1 << (p & 63)
		}
	}
	// Rebuild the ranges from the bitmap: sorted, merged, canonical.
	start := -1
	for p := 0; p <= 65536; p++ {
		in := p < 65536 && s.Contains(uint16(p))
		switch {
		case in && start < 0:
			start = p
		case !in && start >= 0:
			s.ranges = append(s.ranges, PortRange{uint16(start), uint16(p - 1)})
			start = -1
		}
	}
	return s
}

// Contains reports whether port p is in the set.
func (s *PortSet) Contains(p uint16) bool { return s.bits[p>>6]&(1<<(p&63)) != 0 }

// Ranges returns the set as sorted, merged ranges.
func (s *PortSet) Ranges() []PortRange { return slices.Clone(s.ranges) }

func (s *PortSet) String() string {
	parts := make([]string, len(s.ranges))
	for i, r := range s.ranges {
		parts[i] = r.String()
	}
	return strings.Join(parts, ",")
}

// PrefixSet is a set of IPv4 and IPv6 prefixes. Lookups compare masked
// integers and never allocate. IPv4-mapped IPv6 prefixes are stored as IPv4,
// matching the event decoder, which unmaps addresses.
type PrefixSet struct {
	v4       []v4net
	v6       []v6net
	prefixes []netip.Prefix
}

type v4net struct{ val, mask uint32 }
type v6net struct{ hi, lo, mhi, mlo uint64 }

// NewPrefixSet builds a set; invalid prefixes are skipped. Prefixes are
// normalised (masked, unmapped), deduplicated and sorted.
func NewPrefixSet(ps []netip.Prefix) *PrefixSet {
	s := &PrefixSet{}
	for _, p := range ps {
		if !p.IsValid() {
			continue
		}
		p = normPrefix(p)
		if !slices.Contains(s.prefixes, p) {
			s.prefixes = append(s.prefixes, p)
		}
	}
	slices.SortFunc(s.prefixes, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	for _, p := range s.prefixes {
		if p.Addr().Is4() {
			a := p.Addr().As4()
			mask := uint32(0)
			if p.Bits() > 0 {
				mask = ^uint32(0) << (32 - p.Bits())
			}
			s.v4 = append(s.v4, v4net{binary.BigEndian.Uint32(a[:]), mask})
			continue
		}
		a := p.Addr().As16()
		hi, lo := binary.BigEndian.Uint64(a[:8]), binary.BigEndian.Uint64(a[8:])
		mhi, mlo := mask128(p.Bits())
		s.v6 = append(s.v6, v6net{hi & mhi, lo & mlo, mhi, mlo})
	}
	return s
}

func mask128(bits int) (hi, lo uint64) {
	switch {
	case bits <= 0:
		return 0, 0
	case bits < 64:
		return ^uint64(0) << (64 - bits), 0
	case bits == 64:
		return ^uint64(0), 0
	case bits < 128:
		return ^uint64(0), ^uint64(0) << (128 - bits)
	}
	return ^uint64(0), ^uint64(0)
}

func normPrefix(p netip.Prefix) netip.Prefix {
	if p.Addr().Is4In6() {
		bits := p.Bits() - 96
		if bits < 0 {
			bits = 0
		}
		p = netip.PrefixFrom(p.Addr().Unmap(), bits)
	}
	return p.Masked()
}

// Contains reports whether a is inside any prefix of the set.
func (s *PrefixSet) Contains(a netip.Addr) bool {
	if s == nil {
		return false
	}
	if a.Is4() {
		b := a.As4()
		v := binary.BigEndian.Uint32(b[:])
		for _, n := range s.v4 {
			if v&n.mask == n.val {
				return true
			}
		}
		return false
	}
	if a.Is4In6() {
		return s.Contains(a.Unmap())
	}
	b := a.As16()
	hi, lo := binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])
	for _, n := range s.v6 {
		if hi&n.mhi == n.hi && lo&n.mlo == n.lo {
			return true
		}
	}
	return false
}

// Overlaps reports whether any address of p is in the set, so that a block
// of p would also block something the set protects.
func (s *PrefixSet) Overlaps(p netip.Prefix) bool {
	if s == nil || !p.IsValid() {
		return false
	}
	p = normPrefix(p)
	for _, q := range s.prefixes {
		if q.Overlaps(p) {
			return true
		}
	}
	return false
}

// Prefixes returns the set's prefixes, sorted.
func (s *PrefixSet) Prefixes() []netip.Prefix {
	if s == nil {
		return nil
	}
	return slices.Clone(s.prefixes)
}

// Len is the number of prefixes.
func (s *PrefixSet) Len() int {
	if s == nil {
		return 0
	}
	return len(s.prefixes)
}

func (s *PrefixSet) String() string {
	parts := make([]string, len(s.prefixes))
	for i, p := range s.prefixes {
		parts[i] = p.String()
	}
	return strings.Join(parts, ",")
}

// CommSet matches a task's comm against exact names and glob patterns. A
// pattern may use '*' (any run of bytes, also empty) and '?' (one byte); no
// other byte is special. Matching works on the event's NUL-padded bytes and
// never allocates.
//
// Exact names and "prefix*" patterns, the common forms, are indexed by
// their first byte, so a comm is compared only with the few patterns that
// start like it; other globs are tried in turn.
type CommSet struct {
	byFirst  [256][]commPat
	globs    []string
	patterns []string // as written, sorted, for String
}

// commPat is an exact name (NUL padded) or, when prefix is set, a prefix.
type commPat struct {
	exact  [event.CommLen]byte
	prefix string
}

func newCommSet(patterns []string) *CommSet {
	s := &CommSet{}
	for _, p := range patterns {
		if slices.Contains(s.patterns, p) {
			continue
		}
		s.patterns = append(s.patterns, p)
		pre, isPrefix := strings.CutSuffix(p, "*")
		switch {
		case !strings.ContainsAny(p, "*?"):
			var cp commPat
			copy(cp.exact[:event.CommLen-1], p)
			s.byFirst[p[0]] = append(s.byFirst[p[0]], cp)
		case isPrefix && pre != "" && !strings.ContainsAny(pre, "*?"):
			s.byFirst[pre[0]] = append(s.byFirst[pre[0]], commPat{prefix: pre})
		default:
			s.globs = append(s.globs, p)
		}
	}
	slices.Sort(s.patterns)
	return s
}

// Match reports whether comm (NUL padded, as in event.Event.Comm) is in the set.
func (s *CommSet) Match(comm *[event.CommLen]byte) bool {
	cands := s.byFirst[comm[0]]
	if len(cands) == 0 && len(s.globs) == 0 {
		return false
	}
	n := 0
	for n < event.CommLen && comm[n] != 0 {
		n++
	}
	name := comm[:n]
	for i := range cands {
		c := &cands[i]
		if c.prefix == "" {
			if c.exact == *comm {
				return true
			}
		} else if len(name) >= len(c.prefix) && string(name[:len(c.prefix)]) == c.prefix {
			return true
		}
	}
	for _, g := range s.globs {
		if globMatch(g, name) {
			return true
		}
	}
	return false
}

func (s *CommSet) String() string { return strings.Join(s.patterns, ",") }

// NameSet matches a name (a PAM service) against exact names and glob
// patterns ('*', '?'). Sets are small; matching tries each in turn and never
// allocates.
type NameSet struct {
	exact    []string
	globs    []string
	patterns []string // sorted, for String
}

func newNameSet(patterns []string) *NameSet {
	s := &NameSet{}
	for _, p := range patterns {
		if slices.Contains(s.patterns, p) {
			continue
		}
		s.patterns = append(s.patterns, p)
		if strings.ContainsAny(p, "*?") {
			s.globs = append(s.globs, p)
		} else {
			s.exact = append(s.exact, p)
		}
	}
	slices.Sort(s.patterns)
	return s
}

// Match reports whether name (without its NUL padding) is in the set.
func (s *NameSet) Match(name []byte) bool {
	for _, e := range s.exact {
		if string(name) == e {
			return true
		}
	}
	for _, g := range s.globs {
		if globMatch(g, name) {
			return true
		}
	}
	return false
}

func (s *NameSet) String() string { return strings.Join(s.patterns, ",") }

// globMatch matches '*' and '?' with the usual single-backtrack-point
// algorithm: linear in practice, no recursion, no allocation.
func globMatch(pat string, name []byte) bool {
	pi, ni := 0, 0
	star, mark := -1, 0
	for ni < len(name) {
		switch {
		case pi < len(pat) && (pat[pi] == '?' || pat[pi] == name[ni]):
			pi++
			ni++
		case pi < len(pat) && pat[pi] == '*':
			star, mark = pi, ni
			pi++
		case star >= 0:
			pi = star + 1
			mark++
			ni = mark
		default:
			return false
		}
	}
	for pi < len(pat) && pat[pi] == '*' {
		pi++
	}
	return pi == len(pat)
}

// Range32 is an inclusive range of 32-bit ids (uids).
type Range32 struct{ Lo, Hi uint32 }

func (r Range32) String() string {
	if r.Lo == r.Hi {
		return strconv.FormatUint(uint64(r.Lo), 10)
	}
	return fmt.Sprintf("%d-%d", r.Lo, r.Hi)
}
