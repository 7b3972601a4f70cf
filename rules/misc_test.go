package rules

import (
	"encoding/json"
	"fmt"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var sprintf = fmt.Sprintf

func TestDefaultPackLoads(t *testing.T) {
	set, err := Default()
	if err != nil {
		t.Fatalf("default pack:\n%v", err)
	}
	if len(set.Rules) == 0 {
		t.Fatal("default pack has no rules")
	}
	for _, r := range set.Rules {
		if r.Mode == Enforce && r.Block == nil {
			t.Errorf("rule %s enforces nothing", r.Name)
		}
	}
}

// TestSchemaMatchesParser keeps the JSON Schema and the parser in step: the
// schema must be valid JSON, claim draft 2020-12, and list exactly the
// fields the parser accepts.
func TestSchemaMatchesParser(t *testing.T) {
	var s struct {
		Schema     string                     `json:"$schema"`
		Properties map[string]json.RawMessage `json:"properties"`
		Defs       map[string]struct {
			Properties map[string]json.RawMessage `json:"properties"`
		} `json:"$defs"`
	}
	if err := json.Unmarshal(JSONSchema(), &s); err != nil {
		t.Fatalf("schema is not JSON: %v", err)
	}
	if s.Schema != "https://json-schema.org/draft/2020-12/schema" {
		t.Errorf("$schema = %q", s.Schema)
	}
	keys := func(m map[string]json.RawMessage) []string {
		var out []string
		for k := range m {
			out = append(out, k)
		}
		slices.Sort(out)
		return out
	}
	sorted := func(in []string) []string { out := slices.Clone(in); slices.Sort(out); return out }
	tests := []struct {
		name   string
		schema []string
		parser []string
	}{
		{"top", keys(s.Properties), sorted(topFields)},
		{"rule", keys(s.Defs["rule"].Properties), sorted(ruleFields)},
		{"detection", keys(s.Defs["detection"].Properties), sorted(detectionKinds)},
		{"filter", append(keys(s.Defs["filterFields"].Properties), "not"), sorted(filterFields)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := sorted(tt.schema)
			if diff := cmp.Diff(tt.parser, got); diff != "" {
				t.Errorf("schema fields (-parser +schema):\n%s", diff)
			}
		})
	}
}

func FuzzCompile(f *testing.F) {
	for _, seed := range []string{
		"rules: []",
		"lists: {a: {ports: [1]}}\nrules:\n- name: x\n  description: d\n  mode: monitor\n  severity: low\n  filter: {remote_port: $a}\n  detection: {threshold: {count: 2, window: 1s, by: [tgid]}}\n",
		"rules:\n- {name: y, description: d, mode: enforce, severity: high, detection: {distinct: {field: local_port, count: 3, window: 1m, by: [remote_ip]}}, actions: {block: {ttl: 1m, escalation: {factor: 2, period: 1h, max: 2h}}}}\n",
		"a: &x [1]\nb: *x\n",
		"rules: [*undefined]",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		set, err := Compile(Source{Name: "fuzz.yaml", Data: data})
		if err == nil && set == nil {
			t.Fatal("nil set without error")
		}
		if err != nil && err.Error() == "" {
			t.Fatal("empty error message")
		}
	})
}
