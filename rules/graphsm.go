package rules

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/connwarden/connwarden/detector/event"
	"github.com/connwarden/connwarden/graph"
	"github.com/connwarden/connwarden/internal/fielderr"
	"github.com/connwarden/connwarden/statemachine"
)

// The flow-graph detections (fanout, new_edge, pivot) and sequences are
// parsed here into the configs of packages graph and statemachine, then
// validated by those packages too: their FieldErrors carry a config path
// ("transitions[2].to"), which paths maps back to the YAML node, so their
// messages get file:line:col like every other.

// FanOut is a fanout detection: package graph's config. The rule's filter
// decides which events reach it.
type FanOut struct{ Config graph.FanOutConfig }

// NewEdge is a new_edge detection.
type NewEdge struct{ Config graph.NewEdgeConfig }

// Pivot is a pivot detection. Alerts for one (process, attacker) pair are
// raised at most once per Window.
type Pivot struct{ Config graph.PivotConfig }

// Sequence is a per-session state machine. Sessions are keyed by By; the
// Spec's matchers are compiled filters (the transitions' and forbidden
// conditions' "when"). A violation alerts; further violations of the same
// key within Suppress are folded into that alert.
type Sequence struct {
	By       KeyFields
	Spec     statemachine.Spec
	Suppress time.Duration
}

// paths maps config paths, as graph and statemachine name fields, to nodes.
type paths map[string]*yaml.Node

// reportConfigErr adds the config's own validation errors, except those
// about a field the parser already reported (a missing "when" is also a
// nil matcher; a bad duration is also a zero one): one message per problem.
func (c *compiler) reportConfigErr(err error, base string, ps paths, fallback *yaml.Node, before int) {
	if err == nil {
		return
	}
	seen := map[string]bool{}
	for _, e := range (*c.errs)[before:] {
		seen[e.Field] = true
	}
	var errs []error
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	} else {
		errs = []error{err}
	}
	for _, e := range errs {
		var fe *fielderr.Error
		if !errors.As(e, &fe) {
			c.errf(fallback, base, "%v", e)
			continue
		}
		field := join(base, yamlPath(fe.Path))
		if seen[field] {
			continue
		}
		n := fallback
		for p := fe.Path; p != ""; p = parentPath(p) {
			if ps[p] != nil {
				n = ps[p]
				break
			}
		}
		c.errf(n, field, "%s", fe.Msg)
	}
}

// parentPath drops the last ".field" or "[i]" of p.
func parentPath(p string) string {
	i := strings.LastIndexAny(p, ".[")
	if i < 0 {
		return ""
	}
	return p[:i]
}

// yamlPath renames the config paths' Go-side field names to the YAML ones.
func yamlPath(p string) string {
	r := strings.NewReplacer("threshold", "count", ".match", ".when")
	return r.Replace(p)
}

func (c *compiler) kinds(n *yaml.Node, field string) []event.Kind {
	var out []event.Kind
	for _, v := range c.scalars(n, field) {
		k, ok := event.ParseKind(v.Value)
		if !ok {
			c.errf(v, field, "unknown kind %q; valid: %s", v.Value, kindList())
			continue
		}
		out = append(out, k)
	}
	return out
}

// maxKeys is the default bound for a detection's own tables.
func (c *compiler) maxKeys() int {
	if c.setSettings != nil && c.setSettings.MaxKeysPerRule > 0 {
		return c.setSettings.MaxKeysPerRule
	}
	return DefaultSettings.MaxKeysPerRule
}

func (c *compiler) optInt(m map[string]entry, ps paths, name, path, field string, lo, hi int64, def int) int {
	e, ok := m[name]
	if !ok {
		return def
	}
	ps[path] = e.val
	v, _ := c.integer(e.val, join(field, name), lo, hi)
	return int(v)
}

func (c *compiler) optBool(m map[string]entry, ps paths, name, path, field string) bool {
	e, ok := m[name]
	if !ok {
		return false
	}
	ps[path] = e.val
	v, _ := c.boolean(e.val, join(field, name))
	return v
}

func (c *compiler) fanout(n *yaml.Node, name string) (*FanOut, string) {
	const field = "detection.fanout"
	before := len(*c.errs)
	ps := paths{}
	m := c.mapping(n, field, "direction", "kinds", "window", "count", "count_ports", "per_tgid", "max_subjects")
	if m == nil {
		return nil, ""
	}
	cfg := graph.FanOutConfig{Name: name}
	if e, ok := m["direction"]; ok {
		ps["direction"] = e.val
		if s, ok := c.str(e.val, field+".direction"); ok {
			d, ok := event.ParseDirection(s)
			if !ok {
				c.errf(e.val, field+".direction", "unknown direction %q; valid: outbound (a process reaching many hosts), inbound (a host reaching many local ports)", s)
			}
			cfg.Direction = d
		}
	} else {
		c.errf(n, field+".direction", "missing; write outbound (a process reaching many hosts) or inbound (a host reaching many local addresses)")
	}
	if e, ok := m["kinds"]; ok {
		ps["kinds"] = e.val
		cfg.Kinds = c.kinds(e.val, field+".kinds")
	}
	cfg.Window = c.requiredWindow(m, n, field)
	ps["window"] = entryVal(m, "window")
	cfg.Threshold = c.requiredInt(m, n, field, "count", 2, 4096)
	ps["threshold"] = entryVal(m, "count")
	cfg.CountPorts = c.optBool(m, ps, "count_ports", "count_ports", field)
	cfg.PerTGID = c.optBool(m, ps, "per_tgid", "per_tgid", field)
	def := c.maxKeys()
	if cfg.Threshold > 0 {
		def = min(def, (1<<20)/cfg.Threshold)
	}
	cfg.MaxSubjects = c.optInt(m, ps, "max_subjects", "max_subjects", field, 1, 1<<20, def)
	c.reportConfigErr(cfg.Validate(), field, ps, n, before)
	canon := fmt.Sprintf("fanout dir=%s kinds=%v window=%d count=%d ports=%v tgid=%v max=%d",
		cfg.Direction, cfg.Kinds, cfg.Window, cfg.Threshold, cfg.CountPorts, cfg.PerTGID, cfg.MaxSubjects)
	return &FanOut{cfg}, canon
}

func entryVal(m map[string]entry, name string) *yaml.Node {
	if e, ok := m[name]; ok {
		return e.val
	}
	return nil
}

func (c *compiler) newEdge(n *yaml.Node, name string) (*NewEdge, string) {
	const field = "detection.new_edge"
	before := len(*c.errs)
	ps := paths{}
	m := c.mapping(n, field, "kinds", "learning", "prefix_v4", "prefix_v6", "ports", "max_pairs")
	if m == nil {
		return nil, ""
	}
	cfg := graph.NewEdgeConfig{Name: name}
	if e, ok := m["kinds"]; ok {
		ps["kinds"] = e.val
		cfg.Kinds = c.kinds(e.val, field+".kinds")
	}
	if e, ok := m["learning"]; ok {
		ps["learning"] = e.val
		cfg.Learning, _ = c.duration(e.val, field+".learning", 0, 365*24*time.Hour)
	} else {
		c.errf(n, field+".learning", "missing; say how long to learn normal edges before alerting, e.g. \"24h\"")
	}
	cfg.PrefixV4 = c.optInt(m, ps, "prefix_v4", "prefix_v4", field, 1, 32, 32)
	cfg.PrefixV6 = c.optInt(m, ps, "prefix_v6", "prefix_v6", field, 1, 128, 128)
	cfg.Ports = c.optBool(m, ps, "ports", "ports", field)
	cfg.MaxPairs = c.optInt(m, ps, "max_pairs", "max_pairs", field, 1, 10_000_000, 4*c.maxKeys())
	c.reportConfigErr(cfg.Validate(), field, ps, n, before)
	canon := fmt.Sprintf("new_edge kinds=%v learning=%d v4=%d v6=%d ports=%v max=%d",
		cfg.Kinds, cfg.Learning, cfg.PrefixV4, cfg.PrefixV6, cfg.Ports, cfg.MaxPairs)
	return &NewEdge{cfg}, canon
}

func (c *compiler) pivot(n *yaml.Node, name string) (*Pivot, string) {
	const field = "detection.pivot"
	before := len(*c.errs)
	ps := paths{}
	m := c.mapping(n, field, "window", "services", "internal", "target_kinds", "max_bindings")
	if m == nil {
		return nil, ""
	}
	cfg := graph.PivotConfig{Name: name}
	cfg.Window = c.requiredWindow(m, n, field)
	ps["window"] = entryVal(m, "window")
	var canon strings.Builder
	if e, ok := m["services"]; ok {
		ps["services"] = e.val
		v := resolve(e.val)
		if v.Kind != yaml.SequenceNode || len(v.Content) == 0 {
			c.errf(v, field+".services", "want a list of services, e.g. [{port: 22, comms: [sshd, bash]}], got %s", describe(v))
		} else {
			for i, sn := range v.Content {
				sf := fmt.Sprintf("%s.services[%d]", field, i)
				sm := c.mapping(sn, sf, "port", "comms")
				if sm == nil {
					continue
				}
				ps[fmt.Sprintf("services[%d]", i)] = sn
				var svc graph.PivotService
				if pe, ok := sm["port"]; ok {
					ps[fmt.Sprintf("services[%d].port", i)] = pe.val
					p, _ := c.integer(pe.val, sf+".port", 0, 65535)
					svc.Port = uint16(p)
				} else {
					c.errf(sn, sf+".port", "missing; the local port the service listens on (0 for any)")
				}
				if ce, ok := sm["comms"]; ok {
					for j, cn := range c.scalars(ce.val, sf+".comms") {
						ps[fmt.Sprintf("services[%d].comms[%d]", i, j)] = cn
						if l, isRef := c.listRef(cn, sf+".comms", ListComms); isRef {
							if l != nil {
								svc.Comms = append(svc.Comms, l.comms...)
							}
							continue
						}
						if s, ok := c.comm(cn, sf+".comms"); ok {
							if strings.ContainsAny(s, "*?") {
								c.errf(cn, sf+".comms", "%q: pivot services take exact comms, not globs", s)
								continue
							}
							svc.Comms = append(svc.Comms, s)
						}
					}
				}
				cfg.Services = append(cfg.Services, svc)
				fmt.Fprintf(&canon, " svc=%d:%v", svc.Port, svc.Comms)
			}
		}
	} else {
		c.errf(n, field+".services", "missing; list the local services an attacker could come in through, e.g. [{port: 22, comms: [sshd, bash, ssh]}]")
	}
	if e, ok := m["internal"]; ok {
		ps["internal"] = e.val
		cfg.Internal = c.prefixes(e.val, field+".internal").Prefixes()
	} else {
		c.errf(n, field+".internal", "missing; list the internal networks a pivot would reach, e.g. [10.0.0.0/8]")
	}
	if e, ok := m["target_kinds"]; ok {
		ps["target_kinds"] = e.val
		cfg.TargetKinds = c.kinds(e.val, field+".target_kinds")
	}
	cfg.MaxBindings = c.optInt(m, ps, "max_bindings", "max_bindings", field, 0, 1<<20, 0)
	c.reportConfigErr(cfg.Validate(), field, ps, n, before)
	s := fmt.Sprintf("pivot window=%d internal=%v kinds=%v bindings=%d%s",
		cfg.Window, cfg.Internal, cfg.TargetKinds, cfg.MaxBindings, canon.String())
	return &Pivot{cfg}, s
}

func (c *compiler) sequence(n *yaml.Node, name string, f *Filter) (*Sequence, string) {
	const field = "detection.sequence"
	before := len(*c.errs)
	ps := paths{}
	m := c.mapping(n, field, "by", "states", "initial", "transitions", "timeouts", "forbidden", "max_sessions", "idle_timeout", "suppress")
	if m == nil {
		return nil, ""
	}
	s := &Sequence{Spec: statemachine.Spec{Name: name}, Suppress: time.Minute}
	var canon strings.Builder
	s.By = c.keyFields(m, n, field, f)
	if e, ok := m["states"]; ok {
		ps["states"] = e.val
		for i, v := range c.scalars(e.val, field+".states") {
			ps[fmt.Sprintf("states[%d]", i)] = v
			s.Spec.States = append(s.Spec.States, v.Value)
		}
	} else {
		c.errf(n, field+".states", "missing; list the states a session can be in, e.g. [unauthenticated, authenticated]")
	}
	if e, ok := m["initial"]; ok {
		ps["initial"] = e.val
		s.Spec.Initial, _ = c.str(e.val, field+".initial")
	} else {
		c.errf(n, field+".initial", "missing; name the state a new session starts in")
	}
	items := func(name string) []*yaml.Node {
		e, ok := m[name]
		if !ok {
			return nil
		}
		ps[name] = e.val
		v := resolve(e.val)
		if v.Kind != yaml.SequenceNode {
			c.errf(v, field+"."+name, "want a list, got %s", describe(v))
			return nil
		}
		return v.Content
	}
	str := func(mm map[string]entry, parent *yaml.Node, key, path, fld string) string {
		e, ok := mm[key]
		if !ok {
			c.errf(parent, fld+"."+key, "missing")
			return ""
		}
		ps[path+"."+key] = e.val
		v, _ := c.str(e.val, fld+"."+key)
		return v
	}
	for i, tn := range items("transitions") {
		p := fmt.Sprintf("transitions[%d]", i)
		fld := field + "." + p
		tm := c.mapping(tn, fld, "name", "from", "to", "when", "violation")
		if tm == nil {
			continue
		}
		ps[p] = tn
		t := statemachine.Transition{
			Name: str(tm, tn, "name", p, fld), From: str(tm, tn, "from", p, fld), To: str(tm, tn, "to", p, fld),
			Violation: c.optBool(tm, ps, "violation", p+".violation", fld),
		}
		if we, ok := tm["when"]; ok {
			ps[p+".match"] = we.val
			wf := c.filter(we.val, fld+".when", false)
			t.Match = wf
			fmt.Fprintf(&canon, " t=%s:%s>%s:%v(%s)", t.Name, t.From, t.To, t.Violation, wf.canon)
		} else {
			c.errf(tn, fld+".when", "missing; a filter saying which events take this transition")
		}
		s.Spec.Transitions = append(s.Spec.Transitions, t)
	}
	for i, tn := range items("timeouts") {
		p := fmt.Sprintf("timeouts[%d]", i)
		fld := field + "." + p
		tm := c.mapping(tn, fld, "state", "after", "to")
		if tm == nil {
			continue
		}
		ps[p] = tn
		t := statemachine.Timeout{State: str(tm, tn, "state", p, fld), To: str(tm, tn, "to", p, fld)}
		if ae, ok := tm["after"]; ok {
			ps[p+".after"] = ae.val
			t.After, _ = c.duration(ae.val, fld+".after", time.Millisecond, 30*24*time.Hour)
		} else {
			c.errf(tn, fld+".after", "missing; how long before the session moves on, e.g. \"5m\"")
		}
		s.Spec.Timeouts = append(s.Spec.Timeouts, t)
		fmt.Fprintf(&canon, " to=%s>%s@%d", t.State, t.To, t.After)
	}
	for i, fn := range items("forbidden") {
		p := fmt.Sprintf("forbidden[%d]", i)
		fld := field + "." + p
		fm := c.mapping(fn, fld, "name", "state", "when")
		if fm == nil {
			continue
		}
		ps[p] = fn
		fb := statemachine.Forbidden{Name: str(fm, fn, "name", p, fld), State: str(fm, fn, "state", p, fld)}
		if we, ok := fm["when"]; ok {
			ps[p+".match"] = we.val
			wf := c.filter(we.val, fld+".when", false)
			fb.Match = wf
			fmt.Fprintf(&canon, " f=%s@%s(%s)", fb.Name, fb.State, wf.canon)
		} else {
			c.errf(fn, fld+".when", "missing; a filter saying which events are violations in this state")
		}
		s.Spec.Forbidden = append(s.Spec.Forbidden, fb)
	}
	if len(s.Spec.Forbidden) == 0 && !hasViolation(s.Spec.Transitions) && m["states"].val != nil {
		c.errf(n, field, "can never alert: add forbidden conditions, or mark a transition violation: true")
	}
	s.Spec.MaxSessions = c.optInt(m, ps, "max_sessions", "max_sessions", field, 1, 10_000_000, c.maxKeys())
	if e, ok := m["idle_timeout"]; ok {
		ps["idle_timeout"] = e.val
		s.Spec.IdleTimeout, _ = c.duration(e.val, field+".idle_timeout", time.Second, 365*24*time.Hour)
	}
	if e, ok := m["suppress"]; ok {
		s.Suppress, _ = c.duration(e.val, field+".suppress", time.Millisecond, maxWindow)
	}
	c.reportConfigErr(s.Spec.Validate(), field, ps, n, before)
	out := fmt.Sprintf("sequence by=%s states=%v initial=%s max=%d idle=%d suppress=%d%s",
		s.By, s.Spec.States, s.Spec.Initial, s.Spec.MaxSessions, s.Spec.IdleTimeout, s.Suppress, canon.String())
	return s, out
}

func hasViolation(ts []statemachine.Transition) bool {
	for _, t := range ts {
		if t.Violation {
			return true
		}
	}
	return false
}
