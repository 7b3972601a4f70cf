package rules

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// parser walks yaml.Node trees itself, rather than decoding into structs, so
// that every problem carries the line and column of the offending node and so
// that unknown fields and wrong types are errors, not silent zero values.
type parser struct {
	file     string
	ruleName string // name of the rule being parsed, for messages
	errs     *ErrorList
}

func (p *parser) errf(n *yaml.Node, field, format string, args ...any) {
	e := &Error{File: p.file, Rule: p.ruleName, Field: field, Msg: fmt.Sprintf(format, args...)}
	if n != nil {
		e.Line, e.Col = n.Line, n.Column
	}
	*p.errs = append(*p.errs, e)
}

// entry is one key/value pair of a mapping.
type entry struct {
	key, val *yaml.Node
}

// mapping checks that n is a mapping whose keys are all in valid, reports
// unknown and duplicate keys, and returns the pairs by key name.
func (p *parser) mapping(n *yaml.Node, field string, valid ...string) map[string]entry {
	n = resolve(n)
	if n.Kind != yaml.MappingNode {
		p.errf(n, field, "want a mapping with fields %s, got %s", strings.Join(valid, ", "), describe(n))
		return nil
	}
	out := make(map[string]entry, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			p.errf(k, field, "field names must be plain strings, got %s", describe(k))
			continue
		}
		name := k.Value
		if !slices.Contains(valid, name) {
			p.errf(k, join(field, name), "unknown field; valid fields here: %s", strings.Join(valid, ", "))
			continue
		}
		if prev, dup := out[name]; dup {
			p.errf(k, join(field, name), "duplicate field; first set at line %d", prev.key.Line)
			continue
		}
		out[name] = entry{k, v}
	}
	return out
}

// resolve follows aliases so that anchors can be reused in rule files.
func resolve(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

func join(a, b string) string {
	if a == "" {
		return b
	}
	return a + "." + b
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		if n.Tag == "!!null" {
			return "nothing (null)"
		}
		return fmt.Sprintf("%q", n.Value)
	case yaml.DocumentNode:
		return "a document"
	}
	return "an unsupported YAML node"
}

func (p *parser) str(n *yaml.Node, field string) (string, bool) {
	n = resolve(n)
	if n.Kind != yaml.ScalarNode || n.Tag == "!!null" {
		p.errf(n, field, "want a string, got %s", describe(n))
		return "", false
	}
	return n.Value, true
}

func (p *parser) boolean(n *yaml.Node, field string) (bool, bool) {
	n = resolve(n)
	if n.Kind == yaml.ScalarNode && n.Tag == "!!bool" {
		switch n.Value {
		case "true", "True", "TRUE":
			return true, true
		case "false", "False", "FALSE":
			return false, true
		}
	}
	p.errf(n, field, "want true or false, got %s", describe(n))
	return false, false
}

// integer accepts a YAML integer in [lo, hi].
func (p *parser) integer(n *yaml.Node, field string, lo, hi int64) (int64, bool) {
	n = resolve(n)
	if n.Kind == yaml.ScalarNode && n.Tag == "!!int" {
		v, err := strconv.ParseInt(strings.ReplaceAll(n.Value, "_", ""), 0, 64)
		if err == nil && v >= lo && v <= hi {
			return v, true
		}
	}
	p.errf(n, field, "want an integer from %d to %d, got %s", lo, hi, describe(n))
	return 0, false
}

// number accepts a YAML integer or float in [lo, hi].
func (p *parser) number(n *yaml.Node, field string, lo, hi float64) (float64, bool) {
	n = resolve(n)
	if n.Kind == yaml.ScalarNode && (n.Tag == "!!int" || n.Tag == "!!float") {
		v, err := strconv.ParseFloat(strings.ReplaceAll(n.Value, "_", ""), 64)
		if err == nil && !math.IsNaN(v) && v >= lo && v <= hi {
			return v, true
		}
	}
	p.errf(n, field, "want a number from %g to %g, got %s", lo, hi, describe(n))
	return 0, false
}

// duration accepts Go duration syntax with a unit, plus whole days ("7d").
// A bare number is an error that suggests the seconds form, because "10" is
// far more often meant as 10s than as 10ns.
func (p *parser) duration(n *yaml.Node, field string, lo, hi time.Duration) (time.Duration, bool) {
	n = resolve(n)
	if n.Kind != yaml.ScalarNode || n.Tag == "!!null" {
		p.errf(n, field, "want a duration such as \"10s\" or \"5m\", got %s", describe(n))
		return 0, false
	}
	s := n.Value
	if _, err := strconv.ParseFloat(s, 64); err == nil {
		p.errf(n, field, "%q has no unit; write \"%ss\" (units: ns, us, ms, s, m, h, d)", s, s)
		return 0, false
	}
	d, err := parseDuration(s)
	if err != nil {
		p.errf(n, field, "%q is not a duration; write e.g. \"10s\", \"5m\", \"1h30m\" or \"7d\"", s)
		return 0, false
	}
	if d < lo || d > hi {
		p.errf(n, field, "%s is out of range; want from %s to %s", s, fmtDuration(lo), fmtDuration(hi))
		return 0, false
	}
	return d, true
}

func parseDuration(s string) (time.Duration, error) {
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.ParseUint(days, 10, 16)
		if err != nil {
			return 0, err
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	return time.ParseDuration(s)
}

// fmtDuration prints whole days as "Nd" and everything else as Go does.
func fmtDuration(d time.Duration) string {
	if d >= 24*time.Hour && d%(24*time.Hour) == 0 {
		return strconv.FormatInt(int64(d/(24*time.Hour)), 10) + "d"
	}
	return d.String()
}

// scalars accepts a single scalar or a list of scalars; lists read better in
// rule files but a single value is common enough to allow.
func (p *parser) scalars(n *yaml.Node, field string) []*yaml.Node {
	n = resolve(n)
	switch n.Kind {
	case yaml.ScalarNode:
		if n.Tag == "!!null" {
			p.errf(n, field, "want a value or a list of values, got nothing")
			return nil
		}
		return []*yaml.Node{n}
	case yaml.SequenceNode:
		if len(n.Content) == 0 {
			p.errf(n, field, "empty list matches nothing; remove the field to match any value")
			return nil
		}
		out := make([]*yaml.Node, 0, len(n.Content))
		for _, c := range n.Content {
			c = resolve(c)
			if c.Kind != yaml.ScalarNode || c.Tag == "!!null" {
				p.errf(c, field, "want a single value, got %s", describe(c))
				continue
			}
			out = append(out, c)
		}
		return out
	}
	p.errf(n, field, "want a value or a list of values, got %s", describe(n))
	return nil
}
