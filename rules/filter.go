package rules

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/connwarden/connwarden/detector/event"
)

// Filter selects the events a rule looks at. All fields that are set must
// match (AND); a field given a list matches when any value matches (OR).
// Not holds exclusions: an event that matches any one of them is dropped.
//
//	filter:
//	  kind: [connect, tcp_attempt]
//	  remote_port: [22, "2000-2999", $admin_ports]
//	  not:
//	    - remote_addr: [$corp_nets]
//	    - comm: ["apt*", dnf]
//
// A compiled Filter is immutable and safe for concurrent use.
type Filter struct {
	kinds       uint16 // bit per event.Kind; 0 means any
	dirs        uint8  // bit per event.Direction
	outcomes    uint8  // bit per event.Outcome
	results     []int32
	localPorts  *PortSet
	remotePorts *PortSet
	localAddrs  *PrefixSet
	remoteAddrs *PrefixSet
	comms       *CommSet
	services    *NameSet
	uids        []Range32
	cgroups     []uint64
	not         []*Filter
	canon       string
}

// Match reports whether ev passes the filter. It does not allocate.
func (f *Filter) Match(ev *event.Event) bool {
	if f.kinds != 0 && f.kinds&(1<<ev.Kind) == 0 {
		return false
	}
	if f.dirs != 0 && f.dirs&(1<<ev.Direction) == 0 {
		return false
	}
	if f.outcomes != 0 && f.outcomes&(1<<ev.Outcome()) == 0 {
		return false
	}
	if f.remotePorts != nil && !f.remotePorts.Contains(ev.Remote.Port()) {
		return false
	}
	if f.localPorts != nil && !f.localPorts.Contains(ev.Local.Port()) {
		return false
	}
	if f.results != nil && !slices.Contains(f.results, ev.Result) {
		return false
	}
	if f.uids != nil && !inRanges(f.uids, ev.UID) {
		return false
	}
	if f.cgroups != nil && !slices.Contains(f.cgroups, ev.Cgroup) {
		return false
	}
	if f.remoteAddrs != nil && !f.remoteAddrs.Contains(ev.Remote.Addr()) {
		return false
	}
	if f.localAddrs != nil && !f.localAddrs.Contains(ev.Local.Addr()) {
		return false
	}
	if f.comms != nil && !f.comms.Match(&ev.Comm) {
		return false
	}
	if f.services != nil && !f.services.Match(ev.ServiceBytes()) {
		return false
	}
	for _, n := range f.not {
		if n.Match(ev) {
			return false
		}
	}
	return true
}

// Kinds returns the kinds the filter admits (all kinds when unrestricted).
func (f *Filter) Kinds() []event.Kind {
	var out []event.Kind
	for _, k := range event.Kinds() {
		if f.kinds == 0 || f.kinds&(1<<k) != 0 {
			out = append(out, k)
		}
	}
	return out
}

// admits reports whether the filter's kind field lets events of kind k in.
func (f *Filter) admits(k event.Kind) bool { return f.kinds == 0 || f.kinds&(1<<k) != 0 }

// String is a canonical rendering of the compiled filter, with list
// references resolved: two filters with equal strings match the same events.
func (f *Filter) String() string { return f.canon }

func inRanges(rs []Range32, v uint32) bool {
	for _, r := range rs {
		if v >= r.Lo && v <= r.Hi {
			return true
		}
	}
	return false
}

var filterFields = []string{"kind", "direction", "outcome", "result", "local_port", "remote_port",
	"local_addr", "remote_addr", "comm", "service", "uid", "cgroup", "not"}

// errnoNames are the errno names a filter's result field accepts.
var errnoNames = map[string]int32{
	"EPERM": 1, "ENOENT": 2, "EINTR": 4, "EAGAIN": 11, "EACCES": 13, "EINVAL": 22,
	"EAFNOSUPPORT": 97, "EADDRINUSE": 98, "EADDRNOTAVAIL": 99, "ENETDOWN": 100,
	"ENETUNREACH": 101, "ECONNABORTED": 103, "ECONNRESET": 104, "ETIMEDOUT": 110,
	"ECONNREFUSED": 111, "EHOSTDOWN": 112, "EHOSTUNREACH": 113, "EALREADY": 114,
	"EINPROGRESS": 115,
}

func errnoList() string {
	names := make([]string, 0, len(errnoNames))
	for n := range errnoNames {
		names = append(names, n)
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}

func (c *compiler) filter(n *yaml.Node, field string, nested bool) *Filter {
	f := &Filter{}
	valid := filterFields
	if nested {
		valid = filterFields[:len(filterFields)-1]
	}
	m := c.mapping(n, field, valid...)
	var canon []string
	add := func(name string, vals ...string) {
		canon = append(canon, name+"="+strings.Join(vals, ","))
	}
	if e, ok := m["kind"]; ok {
		fld := join(field, "kind")
		var names []string
		for _, v := range c.scalars(e.val, fld) {
			k, ok := event.ParseKind(v.Value)
			if !ok {
				c.errf(v, fld, "unknown kind %q; valid: %s", v.Value, kindList())
				continue
			}
			f.kinds |= 1 << k
		}
		for _, k := range f.Kinds() {
			names = append(names, k.String())
		}
		add("kind", names...)
	}
	if e, ok := m["direction"]; ok {
		fld := join(field, "direction")
		for _, v := range c.scalars(e.val, fld) {
			d, ok := event.ParseDirection(v.Value)
			if !ok {
				c.errf(v, fld, "unknown direction %q; valid: inbound, outbound", v.Value)
				continue
			}
			f.dirs |= 1 << d
		}
		add("direction", strconv.Itoa(int(f.dirs)))
	}
	if e, ok := m["outcome"]; ok {
		fld := join(field, "outcome")
		for _, v := range c.scalars(e.val, fld) {
			o, ok := event.ParseOutcome(v.Value)
			if !ok || o == event.OutcomeNone {
				c.errf(v, fld, "unknown outcome %q; valid: success, pending, refused, timeout, other, failure (authentication kinds)", v.Value)
				continue
			}
			f.outcomes |= 1 << o
		}
		add("outcome", strconv.Itoa(int(f.outcomes)))
	}
	if e, ok := m["result"]; ok {
		fld := join(field, "result")
		f.results = []int32{}
		for _, v := range c.scalars(e.val, fld) {
			if errno, ok := errnoNames[v.Value]; ok {
				f.results = append(f.results, -errno)
				continue
			}
			if r, ok := event.ParsePAMResult(v.Value); ok {
				f.results = append(f.results, r)
				continue
			}
			r, err := strconv.ParseInt(v.Value, 10, 32)
			if err != nil || r > 0 || r < -4095 {
				c.errf(v, fld, "%q is not a result; write 0, a negative errno such as -111, an errno name (%s), or for authentication kinds a PAM name such as PAM_AUTH_ERR", v.Value, errnoList())
				continue
			}
			f.results = append(f.results, int32(r))
		}
		slices.Sort(f.results)
		f.results = slices.Compact(f.results)
		var vals []string
		for _, r := range f.results {
			vals = append(vals, strconv.Itoa(int(r)))
		}
		add("result", vals...)
	}
	for _, name := range []string{"local_port", "remote_port"} {
		e, ok := m[name]
		if !ok {
			continue
		}
		ps := c.ports(e.val, join(field, name))
		if name == "local_port" {
			f.localPorts = ps
		} else {
			f.remotePorts = ps
		}
		add(name, ps.String())
	}
	for _, name := range []string{"local_addr", "remote_addr"} {
		e, ok := m[name]
		if !ok {
			continue
		}
		ps := c.prefixes(e.val, join(field, name))
		if name == "local_addr" {
			f.localAddrs = ps
		} else {
			f.remoteAddrs = ps
		}
		add(name, ps.String())
	}
	if e, ok := m["comm"]; ok {
		f.comms = c.comms(e.val, join(field, "comm"))
		add("comm", f.comms.String())
	}
	if e, ok := m["service"]; ok {
		f.services = c.services(e.val, join(field, "service"))
		add("service", f.services.String())
	}
	if e, ok := m["uid"]; ok {
		fld := join(field, "uid")
		f.uids = []Range32{}
		for _, v := range c.scalars(e.val, fld) {
			lo, hi, ok := parseRange(v.Value, 1<<32-1)
			if !ok {
				c.errf(v, fld, "%q is not a uid; write a number such as 0 or a range such as \"1000-1999\"", v.Value)
				continue
			}
			f.uids = append(f.uids, Range32{uint32(lo), uint32(hi)})
		}
		slices.SortFunc(f.uids, func(a, b Range32) int { return int(int64(a.Lo) - int64(b.Lo)) })
		var vals []string
		for _, r := range f.uids {
			vals = append(vals, r.String())
		}
		add("uid", vals...)
	}
	if e, ok := m["cgroup"]; ok {
		fld := join(field, "cgroup")
		f.cgroups = []uint64{}
		for _, v := range c.scalars(e.val, fld) {
			id, err := strconv.ParseUint(v.Value, 10, 64)
			if err != nil {
				c.errf(v, fld, "%q is not a cgroup id; write the cgroup v2 id as a number", v.Value)
				continue
			}
			f.cgroups = append(f.cgroups, id)
		}
		slices.Sort(f.cgroups)
		f.cgroups = slices.Compact(f.cgroups)
		var vals []string
		for _, id := range f.cgroups {
			vals = append(vals, strconv.FormatUint(id, 10))
		}
		add("cgroup", vals...)
	}
	if e, ok := m["not"]; ok {
		fld := join(field, "not")
		v := resolve(e.val)
		switch v.Kind {
		case yaml.SequenceNode:
			if len(v.Content) == 0 {
				c.errf(v, fld, "empty list excludes nothing; remove the field")
			}
			for i, sub := range v.Content {
				f.not = append(f.not, c.filter(sub, fmt.Sprintf("%s[%d]", fld, i), true))
			}
		default:
			f.not = append(f.not, c.filter(v, fld, true))
		}
		var vals []string
		for _, n := range f.not {
			vals = append(vals, "("+n.canon+")")
		}
		slices.Sort(vals)
		add("not", vals...)
	}
	// Process fields on kinds that carry no process can only mislead: comm
	// never matches, uid and cgroup are always 0.
	if f.kinds != 0 && !anyHasProcess(f) {
		for _, x := range []struct{ name, always string }{{"comm", "empty"}, {"uid", "0"}, {"cgroup", "0"}} {
			if e, ok := m[x.name]; ok {
				c.errf(e.key, join(field, x.name), "%s events carry no process, so %s is always %s; remove it or add a process kind (connect, tcp_attempt, tcp_established, tcp_close, auth, auth_account)",
					kindNames(f), x.name, x.always)
			}
		}
	}
	// Only authentication events have a service.
	if e, ok := m["service"]; ok && f.kinds != 0 && !f.admits(event.KindAuth) && !f.admits(event.KindAuthAccount) {
		c.errf(e.key, join(field, "service"), "%s events have no PAM service, so it never matches; remove it or add kind auth or auth_account", kindNames(f))
	}
	f.canon = strings.Join(canon, ";")
	return f
}

func kindList() string {
	var names []string
	for _, k := range event.Kinds() {
		names = append(names, k.String())
	}
	return strings.Join(names, ", ")
}

// parseRange parses "N" or "N-M" with N <= M <= max.
func parseRange(s string, max uint64) (lo, hi uint64, ok bool) {
	a, b, isRange := strings.Cut(s, "-")
	lo, err := strconv.ParseUint(strings.TrimSpace(a), 10, 64)
	if err != nil || lo > max {
		return 0, 0, false
	}
	hi = lo
	if isRange {
		hi, err = strconv.ParseUint(strings.TrimSpace(b), 10, 64)
		if err != nil || hi > max || hi < lo {
			return 0, 0, false
		}
	}
	return lo, hi, true
}

// listRef returns the list a "$name" value names, reporting unknown names
// and lists of the wrong kind. ok is false when v is not a reference.
func (c *compiler) listRef(v *yaml.Node, field string, kind ListKind) (l *List, isRef bool) {
	name, isRef := strings.CutPrefix(v.Value, "$")
	if !isRef {
		return nil, false
	}
	l = c.lists[name]
	if l == nil {
		var same []string
		for n, l := range c.lists {
			if l.Kind == kind {
				same = append(same, "$"+n)
			}
		}
		slices.Sort(same)
		if len(same) == 0 {
			c.errf(v, field, "unknown list %q; no %s lists are defined (declare one under the top-level lists:)", v.Value, kind)
		} else {
			c.errf(v, field, "unknown list %q; %s lists: %s", v.Value, kind, strings.Join(same, ", "))
		}
		return nil, true
	}
	if l.Kind != kind {
		c.errf(v, field, "list %q holds %s, but this field needs %s", v.Value, l.Kind, kind)
		return nil, true
	}
	return l, true
}

func (c *compiler) ports(n *yaml.Node, field string) *PortSet {
	var rs []PortRange
	for _, v := range c.scalars(n, field) {
		if l, isRef := c.listRef(v, field, ListPorts); isRef {
			if l != nil {
				rs = append(rs, l.ports...)
			}
			continue
		}
		if r, ok := c.portRange(v, field); ok {
			rs = append(rs, r)
		}
	}
	return newPortSet(rs)
}

func (c *compiler) portRange(v *yaml.Node, field string) (PortRange, bool) {
	lo, hi, ok := parseRange(v.Value, 65535)
	if !ok {
		c.errf(v, field, "%q is not a port; write a number from 0 to 65535, a range such as \"8000-8099\", or a $list of ports", v.Value)
		return PortRange{}, false
	}
	return PortRange{uint16(lo), uint16(hi)}, true
}

func (c *compiler) prefixes(n *yaml.Node, field string) *PrefixSet {
	var ps []netip.Prefix
	for _, v := range c.scalars(n, field) {
		if l, isRef := c.listRef(v, field, ListCIDRs); isRef {
			if l != nil {
				ps = append(ps, l.prefixes...)
			}
			continue
		}
		if p, ok := c.prefix(v, field); ok {
			ps = append(ps, p)
		}
	}
	return NewPrefixSet(ps)
}

// prefix parses a CIDR or a single address (as a host prefix). A CIDR with
// host bits set is an error: "10.0.0.1/8" is usually a typo for 10.0.0.0/8
// or for 10.0.0.1/32, and guessing would widen or narrow a security rule.
func (c *compiler) prefix(v *yaml.Node, field string) (netip.Prefix, bool) {
	s := v.Value
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			c.errf(v, field, "%q is not an IP address or CIDR; write e.g. 10.0.0.0/8, 192.0.2.7 or 2001:db8::/32", s)
			return netip.Prefix{}, false
		}
		return netip.PrefixFrom(a, a.BitLen()), true
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		c.errf(v, field, "%q is not a CIDR; write e.g. 10.0.0.0/8 or 2001:db8::/32", s)
		return netip.Prefix{}, false
	}
	if p.Masked() != p {
		c.errf(v, field, "%q has host bits set; write %s for the network or %s for the host", s, p.Masked(), netip.PrefixFrom(p.Addr(), p.Addr().BitLen()))
		return netip.Prefix{}, false
	}
	return p, true
}

func (c *compiler) comms(n *yaml.Node, field string) *CommSet {
	var pats []string
	for _, v := range c.scalars(n, field) {
		if l, isRef := c.listRef(v, field, ListComms); isRef {
			if l != nil {
				pats = append(pats, l.comms...)
			}
			continue
		}
		if p, ok := c.comm(v, field); ok {
			pats = append(pats, p)
		}
	}
	return newCommSet(pats)
}

// services compiles a service field: PAM service names or globs.
func (c *compiler) services(n *yaml.Node, field string) *NameSet {
	var pats []string
	for _, v := range c.scalars(n, field) {
		switch s := v.Value; {
		case s == "":
			c.errf(v, field, "empty service never matches; write a PAM service name such as sshd")
		case !strings.ContainsAny(s, "*?") && len(s) > event.AuthStrLen-1:
			c.errf(v, field, "%q is longer than %d bytes and can never match: the kernel reads at most that; write %q", s, event.AuthStrLen-1, s[:event.AuthStrLen-1])
		default:
			pats = append(pats, s)
		}
	}
	return newNameSet(pats)
}

func (c *compiler) comm(v *yaml.Node, field string) (string, bool) {
	s := v.Value
	switch {
	case s == "":
		c.errf(v, field, "empty comm never matches; write a process name such as curl or a glob such as \"nc*\"")
		return "", false
	case strings.IndexByte(s, 0) >= 0:
		c.errf(v, field, "%q contains a NUL byte", s)
		return "", false
	case !strings.ContainsAny(s, "*?") && len(s) > event.CommLen-1:
		c.errf(v, field, "%q is longer than %d bytes and can never match: the kernel truncates comm; write %q", s, event.CommLen-1, s[:event.CommLen-1])
		return "", false
	}
	return s, true
}
