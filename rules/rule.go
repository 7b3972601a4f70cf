package rules

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/connwarden/connwarden/detector/event"
)

// Mode says what a rule may do when it fires.
type Mode uint8

const (
	// Monitor rules alert only; a block action is reported but not carried out.
	Monitor Mode = iota
	// Enforce rules alert and carry out their block action.
	Enforce
)

func (m Mode) String() string {
	if m == Enforce {
		return "enforce"
	}
	return "monitor"
}

// MarshalText renders the mode's name.
func (m Mode) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

// Severity ranks alerts.
type Severity uint8

const (
	SeverityLow Severity = iota
	SeverityMedium
	SeverityHigh
	SeverityCritical
	severityCount
)

var severityNames = [severityCount]string{"low", "medium", "high", "critical"}

func (s Severity) String() string {
	if s < severityCount {
		return severityNames[s]
	}
	return "unknown"
}

// MarshalText renders the severity's name.
func (s Severity) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// Severities lists every severity, lowest first.
func Severities() []Severity {
	return []Severity{SeverityLow, SeverityMedium, SeverityHigh, SeverityCritical}
}

// Rule is one compiled rule. It is immutable once loaded.
type Rule struct {
	Name        string
	Description string
	Enabled     bool
	Mode        Mode
	Severity    Severity
	Tags        []string
	Filter      *Filter
	Detection   Detection
	// Block is the rule's block action, nil when it only alerts.
	Block *Block

	// Where the rule starts, for messages.
	File      string
	Line, Col int
}

// StateKey identifies the parts of a rule that shape its detection state:
// name, filter and detection, with list references resolved. When a reload
// keeps a rule's StateKey, its counters, windows and sessions carry over;
// description, severity, mode, tags and actions may change without a reset.
func (r *Rule) StateKey() string {
	return r.Name + "\x00" + r.Filter.String() + "\x00" + r.Detection.String()
}

// DetectionType names the kind of detection a rule uses.
type DetectionType uint8

const (
	DetectThreshold DetectionType = iota + 1
	DetectDistinct
	DetectFanOut
	DetectNewEdge
	DetectPivot
	DetectSequence
)

var detectionNames = map[DetectionType]string{
	DetectThreshold: "threshold",
	DetectDistinct:  "distinct",
	DetectFanOut:    "fanout",
	DetectNewEdge:   "new_edge",
	DetectPivot:     "pivot",
	DetectSequence:  "sequence",
}

func (t DetectionType) String() string {
	if n, ok := detectionNames[t]; ok {
		return n
	}
	return "unknown"
}

// MarshalText renders the detection type's name.
func (t DetectionType) MarshalText() ([]byte, error) { return []byte(t.String()), nil }

// Detection is exactly one of the detection kinds; Type says which field is set.
type Detection struct {
	Type      DetectionType
	Threshold *Threshold
	Distinct  *Distinct
	FanOut    *FanOut
	NewEdge   *NewEdge
	Pivot     *Pivot
	Sequence  *Sequence
	canon     string
}

func (d Detection) String() string { return d.canon }

// Window returns the detection's time window: the span its alerts cover
// and the period within which one key alerts at most once. New-edge
// detections have none (each new edge alerts once); for sequences it is
// their suppress period.
func (d Detection) Window() time.Duration {
	switch d.Type {
	case DetectThreshold:
		return d.Threshold.Window
	case DetectDistinct:
		return d.Distinct.Window
	case DetectFanOut:
		return d.FanOut.Config.Window
	case DetectPivot:
		return d.Pivot.Config.Window
	case DetectSequence:
		return d.Sequence.Suppress
	}
	return 0
}

// Threshold fires when Count matching events with the same key fall within
// Window. The window is closed: event e fires when at least Count events of
// its key have timestamps in [e.ts - Window, e.ts]. So Count events spread
// over exactly Window fire, and spread over Window + 1ns do not.
type Threshold struct {
	Count  int
	Window time.Duration
	By     KeyFields
}

// Distinct fires when at least Count distinct values of Field are seen for
// one key within Window (closed, as for Threshold): a value counts when its
// latest sighting is in [e.ts - Window, e.ts].
type Distinct struct {
	Field  DistinctField
	Count  int
	Window time.Duration
	By     KeyFields
}

// KeyFields is the set of event fields that group a rule's state.
type KeyFields uint16

const (
	KeyPID KeyFields = 1 << iota
	KeyTGID
	KeyComm
	KeyUID
	KeyCgroup
	KeyRemoteIP
	KeyRemoteNet24 // IPv4 remote masked to /24; IPv6 kept whole
	KeyRemoteNet64 // IPv6 remote masked to /64; IPv4 kept whole
	KeyRemotePort
	KeyLocalPort

	// KeyRemoteNet is the remote network by family: /24 for IPv4, /64 for IPv6.
	KeyRemoteNet = KeyRemoteNet24 | KeyRemoteNet64

	keyProcess = KeyPID | KeyTGID | KeyComm | KeyUID | KeyCgroup
	keyRemote  = KeyRemoteIP | KeyRemoteNet
)

var keyNames = []struct {
	name string
	f    KeyFields
}{
	{"pid", KeyPID}, {"tgid", KeyTGID}, {"comm", KeyComm}, {"uid", KeyUID}, {"cgroup", KeyCgroup},
	{"remote_ip", KeyRemoteIP}, {"remote_net", KeyRemoteNet}, {"remote_net24", KeyRemoteNet24},
	{"remote_net64", KeyRemoteNet64}, {"remote_port", KeyRemotePort}, {"local_port", KeyLocalPort},
}

func keyNameList() string {
	var n []string
	for _, k := range keyNames {
		n = append(n, k.name)
	}
	return strings.Join(n, ", ")
}

// Names lists the fields in canonical order (remote_net for both nets).
func (k KeyFields) Names() []string {
	var out []string
	for _, kn := range keyNames {
		switch kn.f {
		case KeyRemoteNet24, KeyRemoteNet64:
			if k&KeyRemoteNet == KeyRemoteNet {
				continue
			}
		}
		if k&kn.f == kn.f {
			out = append(out, kn.name)
		}
	}
	return out
}

func (k KeyFields) String() string { return strings.Join(k.Names(), ",") }

// DistinctField is what a distinct detection counts.
type DistinctField uint8

const (
	DistinctRemoteIP       DistinctField = iota + 1 // remote address
	DistinctRemotePort                              // remote port
	DistinctRemoteEndpoint                          // remote address and port
	DistinctLocalPort                               // local port (inbound scans)
)

var distinctNames = map[DistinctField]string{
	DistinctRemoteIP: "remote_ip", DistinctRemotePort: "remote_port",
	DistinctRemoteEndpoint: "remote_endpoint", DistinctLocalPort: "local_port",
}

func (f DistinctField) String() string { return distinctNames[f] }

// BlockTarget is what a block action blocks.
type BlockTarget uint8

const (
	// TargetRemoteIP blocks the triggering event's remote address (/32 or /128).
	TargetRemoteIP BlockTarget = iota
	// TargetRemoteNet blocks its network: /24 for IPv4, /64 for IPv6.
	TargetRemoteNet
)

func (t BlockTarget) String() string {
	if t == TargetRemoteNet {
		return "remote_net"
	}
	return "remote_ip"
}

// Block is a rule's block action.
type Block struct {
	Target BlockTarget
	TTL    time.Duration
	// Escalation lengthens blocks of repeat offenders; nil means every block
	// lasts TTL.
	Escalation *Escalation
}

// Escalation: a prefix blocked again within Period of its previous block
// gets TTL × Factor^repeats, capped at Max.
type Escalation struct {
	Factor float64
	Period time.Duration
	Max    time.Duration
}

// TTLFor returns the block duration for the given number of earlier blocks
// of the same prefix within the escalation period.
func (b *Block) TTLFor(repeats int) time.Duration {
	if b.Escalation == nil || repeats <= 0 {
		return b.TTL
	}
	d := float64(b.TTL)
	for i := 0; i < repeats && d < float64(b.Escalation.Max); i++ {
		d *= b.Escalation.Factor
	}
	if d > float64(b.Escalation.Max) {
		return b.Escalation.Max
	}
	return time.Duration(d)
}

var (
	ruleFields     = []string{"name", "description", "enabled", "mode", "severity", "tags", "filter", "detection", "actions"}
	detectionKinds = []string{"threshold", "distinct", "fanout", "new_edge", "pivot", "sequence"}
	nameRE         = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,63}$`)
	tagRE          = regexp.MustCompile(`^[a-z0-9][a-z0-9_.:-]{0,63}$`)
	attackRE       = regexp.MustCompile(`^attack\.t[0-9]{4}(\.[0-9]{3})?$`)
)

const (
	maxWindow         = 24 * time.Hour
	maxThresholdCount = 10000
	maxDistinctCount  = 1024
)

func (c *compiler) rule(n *yaml.Node) *Rule {
	n = resolve(n)
	r := &Rule{File: c.file, Line: n.Line, Col: n.Column, Enabled: true}
	c.ruleName = ""
	if n.Kind == yaml.MappingNode { // name first, so every message names the rule
		for i := 0; i+1 < len(n.Content); i += 2 {
			if k, v := n.Content[i], resolve(n.Content[i+1]); k.Value == "name" && v.Kind == yaml.ScalarNode {
				c.ruleName = v.Value
			}
		}
	}
	m := c.mapping(n, "", ruleFields...)
	if m == nil {
		return nil
	}
	if e, ok := m["name"]; ok {
		if s, ok := c.str(e.val, "name"); ok {
			if !nameRE.MatchString(s) {
				c.errf(e.val, "name", "%q is not a valid rule name; use 1-64 lowercase letters, digits, '-', '_' or '.', starting with a letter or digit", s)
			}
			r.Name = s
			c.ruleName = s
		}
	} else {
		c.errf(n, "name", "missing; every rule needs a unique name")
	}
	if e, ok := m["description"]; ok {
		r.Description, _ = c.str(e.val, "description")
	} else {
		c.errf(n, "description", "missing; say what the rule detects, for whoever reads the alert")
	}
	if e, ok := m["enabled"]; ok {
		r.Enabled, _ = c.boolean(e.val, "enabled")
	}
	if e, ok := m["mode"]; ok {
		if s, ok := c.str(e.val, "mode"); ok {
			switch s {
			case "monitor":
				r.Mode = Monitor
			case "enforce":
				r.Mode = Enforce
			default:
				c.errf(e.val, "mode", "unknown mode %q; valid: monitor (alert only), enforce (alert and act)", s)
			}
		}
	} else {
		c.errf(n, "mode", "missing; write monitor (alert only) or enforce (alert and act)")
	}
	if e, ok := m["severity"]; ok {
		if s, ok := c.str(e.val, "severity"); ok {
			i := slices.Index(severityNames[:], s)
			if i < 0 {
				c.errf(e.val, "severity", "unknown severity %q; valid: %s", s, strings.Join(severityNames[:], ", "))
			} else {
				r.Severity = Severity(i)
			}
		}
	} else {
		c.errf(n, "severity", "missing; valid: %s", strings.Join(severityNames[:], ", "))
	}
	if e, ok := m["tags"]; ok {
		r.Tags = c.tags(e.val)
	}
	if e, ok := m["filter"]; ok {
		r.Filter = c.filter(e.val, "filter", false)
	} else {
		r.Filter = &Filter{}
	}
	if e, ok := m["detection"]; ok {
		r.Detection = c.detection(e.val, r.Name, r.Filter)
	} else {
		c.errf(n, "detection", "missing; a rule needs exactly one of: %s", strings.Join(detectionKinds, ", "))
	}
	if e, ok := m["actions"]; ok {
		r.Block = c.actions(e.val)
	}
	if r.Mode == Enforce && r.Block == nil {
		at := n
		if e, ok := m["mode"]; ok {
			at = e.val
		}
		c.errf(at, "mode", "enforce needs an action to enforce; add actions.block, or write mode: monitor")
	}
	return r
}

func (c *compiler) tags(n *yaml.Node) []string {
	n = resolve(n)
	if n.Kind != yaml.SequenceNode {
		c.errf(n, "tags", "want a list of tags, got %s", describe(n))
		return nil
	}
	var out []string
	for _, v := range n.Content {
		s, ok := c.str(v, "tags")
		if !ok {
			continue
		}
		switch {
		case strings.HasPrefix(strings.ToLower(s), "attack.t") && len(s) > 8 && s[8] >= '0' && s[8] <= '9':
			if !attackRE.MatchString(s) {
				c.errf(v, "tags", "%q is not a MITRE ATT&CK technique tag; write attack.tNNNN or attack.tNNNN.NNN in lowercase, e.g. attack.t1046", s)
				continue
			}
		case !tagRE.MatchString(s):
			c.errf(v, "tags", "%q is not a valid tag; use lowercase letters, digits and . _ : -", s)
			continue
		}
		if slices.Contains(out, s) {
			c.errf(v, "tags", "duplicate tag %q", s)
			continue
		}
		out = append(out, s)
	}
	return out
}

func (c *compiler) detection(n *yaml.Node, name string, f *Filter) Detection {
	var d Detection
	m := c.mapping(n, "detection", detectionKinds...)
	if m == nil {
		return d
	}
	if len(m) != 1 {
		var present []string
		for _, k := range detectionKinds {
			if _, ok := m[k]; ok {
				present = append(present, k)
			}
		}
		if len(present) == 0 {
			c.errf(n, "detection", "empty; a rule needs exactly one of: %s", strings.Join(detectionKinds, ", "))
		} else {
			c.errf(n, "detection", "has %s; a rule needs exactly one detection, split it into several rules", strings.Join(present, " and "))
		}
		return d
	}
	if e, ok := m["threshold"]; ok {
		t := &Threshold{}
		mm := c.mapping(e.val, "detection.threshold", "count", "window", "by")
		t.Count = c.requiredInt(mm, e.val, "detection.threshold", "count", 1, maxThresholdCount)
		t.Window = c.requiredWindow(mm, e.val, "detection.threshold")
		t.By = c.keyFields(mm, e.val, "detection.threshold", f)
		d.Type, d.Threshold = DetectThreshold, t
		d.canon = fmt.Sprintf("threshold count=%d window=%d by=%s", t.Count, t.Window, t.By)
	}
	if e, ok := m["distinct"]; ok {
		t := &Distinct{}
		const fld = "detection.distinct"
		mm := c.mapping(e.val, fld, "field", "count", "window", "by")
		if fe, ok := mm["field"]; ok {
			if s, ok := c.str(fe.val, fld+".field"); ok {
				for k, name := range distinctNames {
					if name == s {
						t.Field = k
					}
				}
				if t.Field == 0 {
					c.errf(fe.val, fld+".field", "unknown field %q; valid: remote_ip, remote_port, remote_endpoint (ip and port), local_port", s)
				}
			}
		} else if mm != nil {
			c.errf(e.val, fld+".field", "missing; say what to count distinct values of: remote_ip, remote_port, remote_endpoint, local_port")
		}
		t.Count = c.requiredInt(mm, e.val, fld, "count", 2, maxDistinctCount)
		t.Window = c.requiredWindow(mm, e.val, fld)
		t.By = c.keyFields(mm, e.val, fld, f)
		if be, ok := mm["by"]; ok && t.Field != 0 {
			clash := map[DistinctField]KeyFields{
				DistinctRemoteIP: KeyRemoteIP, DistinctRemotePort: KeyRemotePort,
				DistinctRemoteEndpoint: KeyRemoteIP | KeyRemotePort, DistinctLocalPort: KeyLocalPort,
			}[t.Field]
			if t.By&clash != 0 {
				c.errf(be.val, fld+".by", "groups by %s, the field being counted, so there is only ever one distinct value per key; remove it from by", (t.By & clash).String())
			}
		}
		d.Type, d.Distinct = DetectDistinct, t
		d.canon = fmt.Sprintf("distinct field=%s count=%d window=%d by=%s", t.Field, t.Count, t.Window, t.By)
	}
	if e, ok := m["fanout"]; ok {
		d.FanOut, d.canon = c.fanout(e.val, name)
		d.Type = DetectFanOut
	}
	if e, ok := m["new_edge"]; ok {
		d.NewEdge, d.canon = c.newEdge(e.val, name)
		d.Type = DetectNewEdge
	}
	if e, ok := m["pivot"]; ok {
		d.Pivot, d.canon = c.pivot(e.val, name)
		d.Type = DetectPivot
		if !f.admits(event.KindInboundAccept) {
			c.errf(e.key, "detection.pivot", "the filter drops inbound_accept events, so no accept can start a chain; add inbound_accept to filter.kind")
		}
	}
	if e, ok := m["sequence"]; ok {
		d.Sequence, d.canon = c.sequence(e.val, name, f)
		d.Type = DetectSequence
	}
	if d.Type != 0 && d.canon == "" { // the detection's body was not a mapping
		d.Type = 0
	}
	return d
}

func (c *compiler) requiredInt(m map[string]entry, parent *yaml.Node, field, name string, lo, hi int64) int {
	if m == nil {
		return 0
	}
	e, ok := m[name]
	if !ok {
		c.errf(parent, join(field, name), "missing; want an integer from %d to %d", lo, hi)
		return 0
	}
	v, _ := c.integer(e.val, join(field, name), lo, hi)
	return int(v)
}

func (c *compiler) requiredWindow(m map[string]entry, parent *yaml.Node, field string) time.Duration {
	if m == nil {
		return 0
	}
	e, ok := m["window"]
	if !ok {
		c.errf(parent, field+".window", "missing; want a duration such as \"10s\" (at most %s)", fmtDuration(maxWindow))
		return 0
	}
	d, _ := c.duration(e.val, field+".window", time.Millisecond, maxWindow)
	return d
}

// keyFields parses "by". It refuses combinations that cannot mean what the
// author wants: process fields on kinds that carry no process, and the same
// address grouped at two granularities.
func (c *compiler) keyFields(m map[string]entry, parent *yaml.Node, field string, f *Filter) KeyFields {
	if m == nil {
		return 0
	}
	e, ok := m["by"]
	if !ok {
		c.errf(parent, field+".by", "missing; list the fields that group events (e.g. [tgid] or [remote_ip]), or [] for one host-wide count; valid: %s", keyNameList())
		return 0
	}
	fld := field + ".by"
	v := resolve(e.val)
	if v.Kind != yaml.SequenceNode {
		c.errf(v, fld, "want a list of fields, got %s; valid: %s", describe(v), keyNameList())
		return 0
	}
	var k KeyFields
	for _, item := range v.Content {
		s, ok := c.str(item, fld)
		if !ok {
			continue
		}
		var kf KeyFields
		for _, kn := range keyNames {
			if kn.name == s {
				kf = kn.f
			}
		}
		switch {
		case kf == 0:
			c.errf(item, fld, "unknown field %q; valid: %s", s, keyNameList())
			continue
		case k&kf == kf:
			c.errf(item, fld, "%q is listed twice", s)
			continue
		case k&keyRemote != 0 && kf&keyRemote != 0 && (k|kf)&KeyRemoteIP != 0:
			c.errf(item, fld, "%q groups the remote address a second time; keep one of remote_ip, remote_net, remote_net24, remote_net64", s)
			continue
		case kf&keyProcess != 0 && !anyHasProcess(f):
			c.errf(item, fld, "%q is always 0: the filter admits only kinds without a process (%s); group by remote_ip, local_port or remote_port instead", s, kindNames(f))
			continue
		}
		k |= kf
	}
	return k
}

func anyHasProcess(f *Filter) bool {
	for _, k := range f.Kinds() {
		if k.HasProcess() {
			return true
		}
	}
	return false
}

func kindNames(f *Filter) string {
	var n []string
	for _, k := range f.Kinds() {
		n = append(n, k.String())
	}
	return strings.Join(n, ", ")
}

func (c *compiler) actions(n *yaml.Node) *Block {
	m := c.mapping(n, "actions", "block")
	if m == nil {
		return nil
	}
	e, ok := m["block"]
	if !ok {
		c.errf(n, "actions", "empty; alerts are always sent, so list only extra actions: block")
		return nil
	}
	const fld = "actions.block"
	b := &Block{}
	mm := c.mapping(e.val, fld, "target", "ttl", "escalation")
	if mm == nil {
		return b
	}
	if te, ok := mm["target"]; ok {
		if s, ok := c.str(te.val, fld+".target"); ok {
			switch s {
			case "remote_ip":
				b.Target = TargetRemoteIP
			case "remote_net":
				b.Target = TargetRemoteNet
			default:
				c.errf(te.val, fld+".target", "unknown target %q; valid: remote_ip (the peer, the default), remote_net (its /24 or /64)", s)
			}
		}
	}
	if te, ok := mm["ttl"]; ok {
		b.TTL, _ = c.duration(te.val, fld+".ttl", time.Second, 30*24*time.Hour)
	} else {
		c.errf(e.val, fld+".ttl", "missing; say how long a block lasts, e.g. \"10m\"")
	}
	if ee, ok := mm["escalation"]; ok {
		const efld = fld + ".escalation"
		x := &Escalation{}
		em := c.mapping(ee.val, efld, "factor", "period", "max")
		if em != nil {
			if v, ok := em["factor"]; ok {
				x.Factor, _ = c.number(v.val, efld+".factor", 1, 100)
			} else {
				c.errf(ee.val, efld+".factor", "missing; want the multiplier per repeat, e.g. 2")
			}
			if v, ok := em["period"]; ok {
				x.Period, _ = c.duration(v.val, efld+".period", time.Second, 365*24*time.Hour)
			} else {
				c.errf(ee.val, efld+".period", "missing; want how long a block is remembered for repeats, e.g. \"24h\"")
			}
			if v, ok := em["max"]; ok {
				if d, ok := c.duration(v.val, efld+".max", time.Second, 365*24*time.Hour); ok {
					x.Max = d
					if b.TTL > 0 && d < b.TTL {
						c.errf(v.val, efld+".max", "%s is shorter than ttl %s; max caps escalated blocks, so it must be at least ttl", fmtDuration(d), fmtDuration(b.TTL))
					}
				}
			} else {
				c.errf(ee.val, efld+".max", "missing; want the longest block, e.g. \"24h\"")
			}
		}
		b.Escalation = x
	}
	return b
}
