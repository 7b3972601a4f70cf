package rules

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Set is a compiled rule set: every rule of every file in a directory, the
// named lists they use, the global allowlist and the global settings.
type Set struct {
	// Rules in file name order, then file order. Disabled rules are included
	// (with Enabled false) so tools can list them.
	Rules []*Rule
	// Allowlist is the union of every file's allowlist: addresses in it are
	// never blocked, whatever a rule says.
	Allowlist *PrefixSet
	Settings  Settings
	// Lists by name.
	Lists map[string]*List
	// Files are the files the set was loaded from, sorted.
	Files []string
}

// Rule returns the rule with the given name, or nil.
func (s *Set) Rule(name string) *Rule {
	for _, r := range s.Rules {
		if r.Name == name {
			return r
		}
	}
	return nil
}

// Settings are global knobs, set in at most one file's settings: section.
type Settings struct {
	// DryRun makes the whole set monitor-only: nothing is blocked.
	DryRun bool
	// BlockRate and BlockBurst limit new blocks (a token bucket on event time).
	BlockRate  float64 // blocks per second
	BlockBurst int
	// MaxActiveBlocks caps the blocks in force at once.
	MaxActiveBlocks int
	// MaxKeysPerRule bounds each rule's tracked keys (least recently used
	// keys are evicted first).
	MaxKeysPerRule int
	// Graph bounds the flow graph the engine keeps for export (`connwarden
	// graph`). Detections do not need it; they keep their own state.
	Graph GraphSettings
}

// GraphSettings configure the exported flow graph.
type GraphSettings struct {
	Enabled  bool
	MaxNodes int
	MaxEdges int
	MaxAge   time.Duration
}

// DefaultSettings are used for anything a settings: section leaves out.
var DefaultSettings = Settings{
	BlockRate:       10,
	BlockBurst:      20,
	MaxActiveBlocks: 10000,
	MaxKeysPerRule:  16384,
	// The flow graph is off by default: it costs more per event than the
	// whole default pack (see detector's BenchmarkProcess/graph).
	Graph: GraphSettings{Enabled: false, MaxNodes: 4096, MaxEdges: 16384, MaxAge: time.Hour},
}

// ListKind says what a named list holds.
type ListKind uint8

const (
	ListCIDRs ListKind = iota + 1
	ListPorts
	ListComms
)

func (k ListKind) String() string {
	switch k {
	case ListCIDRs:
		return "cidrs"
	case ListPorts:
		return "ports"
	case ListComms:
		return "comms"
	}
	return "unknown"
}

// List is a named, typed list that filters and the allowlist refer to as
// $name.
type List struct {
	Name      string
	Kind      ListKind
	File      string
	Line, Col int

	prefixes []netip.Prefix
	ports    []PortRange
	comms    []string
}

// Values renders the list's items as written (normalised).
func (l *List) Values() []string {
	var out []string
	for _, p := range l.prefixes {
		out = append(out, p.String())
	}
	for _, r := range l.ports {
		out = append(out, r.String())
	}
	return append(out, l.comms...)
}

// compiler carries state across the files of one set: lists are global, so
// all files' lists are read before any rule is compiled.
type compiler struct {
	parser
	lists       map[string]*List
	setSettings *Settings // the set's, complete before any rule is compiled
}

type file struct {
	name string
	top  map[string]entry
}

var (
	topFields  = []string{"settings", "allowlist", "lists", "rules"}
	listNameRE = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,63}$`)
)

// LoadDir loads every *.yaml and *.yml file in dir (not recursively).
func LoadDir(dir string) (*Set, error) {
	return LoadFS(os.DirFS(dir), ".", dir)
}

// LoadFS loads every *.yaml and *.yml file in dir of fsys. Messages name
// files as display/name; display defaults to dir.
func LoadFS(fsys fs.FS, dir string, display ...string) (*Set, error) {
	prefix := dir
	if len(display) > 0 {
		prefix = display[0]
	}
	ents, err := fs.ReadDir(fsys, dir)
	if err != nil {
		return nil, fmt.Errorf("load rules: %w", err)
	}
	var names []string
	for _, e := range ents {
		if e.IsDir() {
			continue
		}
		if n := e.Name(); strings.HasSuffix(n, ".yaml") || strings.HasSuffix(n, ".yml") {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	if len(names) == 0 {
		return nil, fmt.Errorf("load rules: no *.yaml or *.yml files in %s", prefix)
	}
	srcs := make([]Source, 0, len(names))
	for _, n := range names {
		b, err := fs.ReadFile(fsys, path.Join(dir, n))
		if err != nil {
			return nil, fmt.Errorf("load rules: %w", err)
		}
		srcs = append(srcs, Source{Name: path.Join(prefix, n), Data: b})
	}
	return Compile(srcs...)
}

// Source is one rule file's name (used in messages) and content.
type Source struct {
	Name string
	Data []byte
}

// Compile parses and compiles rule files into one set. It returns an
// ErrorList with every problem found, or a set that is complete.
func Compile(srcs ...Source) (*Set, error) {
	var errs ErrorList
	c := &compiler{parser: parser{errs: &errs}, lists: map[string]*List{}}
	var files []file
	settingsAt := ""
	set := &Set{Settings: DefaultSettings, Lists: c.lists}
	c.setSettings = &set.Settings
	var allow []netip.Prefix
	for _, src := range srcs {
		c.file, c.ruleName = src.Name, ""
		set.Files = append(set.Files, src.Name)
		top := c.document(src.Data)
		if top == nil {
			continue
		}
		files = append(files, file{src.Name, top})
		if e, ok := top["lists"]; ok {
			c.listsSection(e.val)
		}
		if e, ok := top["settings"]; ok {
			if settingsAt != "" {
				c.errf(e.key, "settings", "set again; settings are global and were already set at %s", settingsAt)
			} else {
				settingsAt = fmt.Sprintf("%s:%d:%d", src.Name, e.key.Line, e.key.Column)
				c.settings(e.val, &set.Settings)
			}
		}
	}
	seen := map[string]*Rule{}
	for _, f := range files {
		c.file, c.ruleName = f.name, ""
		if e, ok := f.top["allowlist"]; ok {
			// An empty allowlist is a valid way to say "nothing".
			if v := resolve(e.val); v.Kind != yaml.SequenceNode || len(v.Content) > 0 {
				allow = append(allow, c.prefixes(e.val, "allowlist").Prefixes()...)
			}
		}
		e, ok := f.top["rules"]
		if !ok {
			continue
		}
		v := resolve(e.val)
		if v.Kind != yaml.SequenceNode {
			c.errf(v, "rules", "want a list of rules, got %s", describe(v))
			continue
		}
		for _, rn := range v.Content {
			r := c.rule(rn)
			if r == nil {
				continue
			}
			if prev := seen[r.Name]; prev != nil && r.Name != "" {
				c.errf(rn, "name", "duplicate rule name; first defined at %s:%d:%d", prev.File, prev.Line, prev.Col)
				continue
			}
			seen[r.Name] = r
			set.Rules = append(set.Rules, r)
		}
	}
	set.Allowlist = NewPrefixSet(allow)
	if len(errs) > 0 {
		errs.sort()
		return nil, errs
	}
	return set, nil
}

var yamlLineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// document parses one file and checks its top level.
func (c *compiler) document(data []byte) map[string]entry {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil // an empty file is an empty rule set
		}
		c.yamlErr(err)
		return nil
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		c.errf(&extra, "", "a second YAML document; put one document in each rule file")
	}
	if len(doc.Content) == 0 {
		return nil
	}
	root := doc.Content[0]
	if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
		return nil
	}
	return c.mapping(root, "", topFields...)
}

func (c *compiler) yamlErr(err error) {
	msg := err.Error()
	e := &Error{File: c.file}
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		e.Line, _ = strconv.Atoi(m[1])
		msg = m[2]
	} else {
		msg = strings.TrimPrefix(msg, "yaml: ")
	}
	e.Msg = "invalid YAML: " + msg
	*c.errs = append(*c.errs, e)
}

func (c *compiler) listsSection(n *yaml.Node) {
	n = resolve(n)
	if n.Kind != yaml.MappingNode {
		c.errf(n, "lists", "want a mapping of list names to lists, got %s", describe(n))
		return
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		name := k.Value
		fld := "lists." + name
		if !listNameRE.MatchString(name) {
			c.errf(k, fld, "%q is not a valid list name; use lowercase letters, digits and _, starting with a letter or _", name)
			continue
		}
		if prev := c.lists[name]; prev != nil {
			c.errf(k, fld, "list defined twice; first at %s:%d:%d", prev.File, prev.Line, prev.Col)
			continue
		}
		l := &List{Name: name, File: c.file, Line: k.Line, Col: k.Column}
		m := c.mapping(v, fld, "cidrs", "ports", "comms")
		if m == nil {
			continue
		}
		if len(m) != 1 {
			c.errf(v, fld, "a list holds exactly one of cidrs, ports, comms")
			continue
		}
		if e, ok := m["cidrs"]; ok {
			l.Kind = ListCIDRs
			for _, s := range c.scalars(e.val, fld+".cidrs") {
				if p, ok := c.prefix(s, fld+".cidrs"); ok {
					l.prefixes = append(l.prefixes, p)
				}
			}
		}
		if e, ok := m["ports"]; ok {
			l.Kind = ListPorts
			for _, s := range c.scalars(e.val, fld+".ports") {
				if r, ok := c.portRange(s, fld+".ports"); ok {
					l.ports = append(l.ports, r)
				}
			}
		}
		if e, ok := m["comms"]; ok {
			l.Kind = ListComms
			for _, s := range c.scalars(e.val, fld+".comms") {
				if p, ok := c.comm(s, fld+".comms"); ok {
					l.comms = append(l.comms, p)
				}
			}
		}
		c.lists[name] = l
	}
}

func (c *compiler) settings(n *yaml.Node, s *Settings) {
	m := c.mapping(n, "settings", "dry_run", "block_rate", "max_active_blocks", "max_keys_per_rule", "graph")
	if e, ok := m["dry_run"]; ok {
		s.DryRun, _ = c.boolean(e.val, "settings.dry_run")
	}
	if e, ok := m["block_rate"]; ok {
		rm := c.mapping(e.val, "settings.block_rate", "per_second", "burst")
		if v, ok := rm["per_second"]; ok {
			s.BlockRate, _ = c.number(v.val, "settings.block_rate.per_second", 0.001, 100000)
		}
		if v, ok := rm["burst"]; ok {
			b, _ := c.integer(v.val, "settings.block_rate.burst", 1, 100000)
			s.BlockBurst = int(b)
		}
	}
	if e, ok := m["max_active_blocks"]; ok {
		v, _ := c.integer(e.val, "settings.max_active_blocks", 1, 10_000_000)
		s.MaxActiveBlocks = int(v)
	}
	if e, ok := m["max_keys_per_rule"]; ok {
		v, _ := c.integer(e.val, "settings.max_keys_per_rule", 16, 10_000_000)
		s.MaxKeysPerRule = int(v)
	}
	if e, ok := m["graph"]; ok {
		gm := c.mapping(e.val, "settings.graph", "enabled", "max_nodes", "max_edges", "max_age")
		if v, ok := gm["enabled"]; ok {
			s.Graph.Enabled, _ = c.boolean(v.val, "settings.graph.enabled")
		}
		if v, ok := gm["max_nodes"]; ok {
			n, _ := c.integer(v.val, "settings.graph.max_nodes", 2, 10_000_000)
			s.Graph.MaxNodes = int(n)
		}
		if v, ok := gm["max_edges"]; ok {
			n, _ := c.integer(v.val, "settings.graph.max_edges", 1, 10_000_000)
			s.Graph.MaxEdges = int(n)
		}
		if v, ok := gm["max_age"]; ok {
			s.Graph.MaxAge, _ = c.duration(v.val, "settings.graph.max_age", 0, 30*24*time.Hour)
		}
	}
}
