package check

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/yannh/kubeconform/pkg/validator"
)

// kubernetesVersion is the Kubernetes release whose OpenAPI schemas the
// manifests are validated against. Its module (k8s.io/kubernetes) comes from
// the Go module proxy, as every dependency here; k8s.io/api in go.mod is the
// same release (TestSchemaVersionMatchesAPITypes).
const kubernetesVersion = "v1.36.3"

var (
	specOnce sync.Once
	specDir  string
	specErr  error
)

// openAPIDir returns api/openapi-spec/v3 of k8s.io/kubernetes@kubernetesVersion,
// downloading the module into the module cache once. It is data only: the
// module is not a dependency (its go.mod cannot be one outside its own tree).
func openAPIDir(t *testing.T) string {
	t.Helper()
	specOnce.Do(func() {
		cmd := exec.Command("go", "mod", "download", "-json", "k8s.io/kubernetes@"+kubernetesVersion)
		cmd.Dir = os.TempDir() // outside this module: nothing is added to go.mod
		cmd.Env = append(os.Environ(), "GOFLAGS=")
		out, err := cmd.Output()
		var res struct{ Dir, Error string }
		if jerr := json.Unmarshal(out, &res); err != nil || jerr != nil || res.Error != "" {
			specErr = fmt.Errorf("go mod download k8s.io/kubernetes@%s: %v %v %s", kubernetesVersion, err, jerr, res.Error)
			return
		}
		specDir = filepath.Join(res.Dir, "api", "openapi-spec", "v3")
	})
	if specErr != nil {
		t.Fatal(specErr)
	}
	return specDir
}

// gvk is a group, version and kind.
type gvk struct{ Group, Version, Kind string }

func (g gvk) apiVersion() string {
	if g.Group == "" {
		return g.Version
	}
	return g.Group + "/" + g.Version
}

// strictSchemas writes, for each kind, a standalone JSON schema where
// kubeconform (with the location template below) finds it: the kind's
// OpenAPI v3 schema as the root, every schema of its API group as
// definitions, and additionalProperties: false on every object with declared
// properties, so an unknown or misspelt field is an error (what the
// "-strict" schemas kubeconform usually downloads do).
func strictSchemas(t *testing.T, kinds []gvk) string {
	t.Helper()
	out := t.TempDir()
	specs := map[string]map[string]any{}
	for _, k := range kinds {
		file := "api__v1_openapi.json"
		if k.Group != "" {
			file = "apis__" + k.Group + "__" + k.Version + "_openapi.json"
		}
		schemas, ok := specs[file]
		if !ok {
			b, err := os.ReadFile(filepath.Join(openAPIDir(t), file))
			if err != nil {
				t.Fatalf("no OpenAPI spec for %s: %v", k.apiVersion(), err)
			}
			var spec struct {
				Components struct {
					Schemas map[string]any `json:"schemas"`
				} `json:"components"`
			}
			if err := json.Unmarshal(b, &spec); err != nil {
				t.Fatal(err)
			}
			schemas = spec.Components.Schemas
			for _, s := range schemas {
				forbidUnknownFields(s)
			}
			specs[file] = schemas
		}
		root := ""
		for name, s := range schemas {
			m, _ := s.(map[string]any)
			gvks, _ := m["x-kubernetes-group-version-kind"].([]any)
			for _, g := range gvks {
				g, _ := g.(map[string]any)
				if g["group"] == k.Group && g["version"] == k.Version && g["kind"] == k.Kind {
					root = name
				}
			}
		}
		if root == "" {
			t.Fatalf("the %s OpenAPI spec has no schema for %s %s", kubernetesVersion, k.apiVersion(), k.Kind)
		}
		b, err := json.Marshal(map[string]any{"$ref": "#/components/schemas/" + root, "definitions": schemas})
		if err != nil {
			t.Fatal(err)
		}
		b = []byte(strings.ReplaceAll(string(b), "#/components/schemas/", "#/definitions/"))
		suffix := "-" + strings.ToLower(strings.Split(k.Group, ".")[0])
		if k.Group == "" {
			suffix = ""
		}
		name := strings.ToLower(k.Kind) + suffix + "-" + k.Version + "-strict.json"
		if err := os.WriteFile(filepath.Join(out, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// forbidUnknownFields sets additionalProperties: false on every object
// schema with declared properties (unless it preserves unknown fields).
func forbidUnknownFields(s any) {
	switch v := s.(type) {
	case map[string]any:
		if _, ok := v["properties"]; ok {
			if _, set := v["additionalProperties"]; !set && v["x-kubernetes-preserve-unknown-fields"] != true {
				v["additionalProperties"] = false
			}
		}
		for _, c := range v {
			forbidUnknownFields(c)
		}
	case []any:
		for _, c := range v {
			forbidUnknownFields(c)
		}
	}
}

// kubeconform validates documents strictly (unknown fields and duplicate
// keys are errors) against the schemas of kinds, and returns one line per
// resource that is not valid.
func kubeconform(t *testing.T, kinds []gvk, name string, doc []byte) []string {
	t.Helper()
	dir := strictSchemas(t, kinds)
	v, err := validator.New([]string{dir + "/{{ .ResourceKind }}{{ .KindSuffix }}{{ .StrictSuffix }}.json"}, validator.Opts{
		Strict:            true,
		KubernetesVersion: strings.TrimPrefix(kubernetesVersion, "v"),
	})
	if err != nil {
		t.Fatal(err)
	}
	var bad []string
	n := 0
	for _, r := range v.Validate(name, readCloser(doc)) {
		n++
		if r.Status == validator.Valid {
			continue
		}
		line := fmt.Sprintf("%s: %v", name, r.Err)
		for _, ve := range r.ValidationErrors {
			line += fmt.Sprintf("\n\t%s: %s", ve.Path, ve.Msg)
		}
		bad = append(bad, line)
	}
	if n == 0 {
		bad = append(bad, name+": no resources")
	}
	return bad
}

// Every manifest is valid against the Kubernetes schemas, strictly.
func TestManifestsMatchKubernetesSchemas(t *testing.T) {
	objs := loadManifests(t)
	var kinds []gvk
	seen := map[gvk]bool{}
	for _, o := range objs {
		if !seen[o.gvk] {
			seen[o.gvk] = true
			kinds = append(kinds, o.gvk)
		}
	}
	for _, o := range objs {
		for _, bad := range kubeconform(t, kinds, o.file, o.raw) {
			t.Error(bad)
		}
	}
	t.Logf("%d resources valid against Kubernetes %s", len(objs), kubernetesVersion)
}

// The validation does reject what the API server would: a misspelt field, a
// value of the wrong type, a missing required field.
func TestSchemaValidationRejects(t *testing.T) {
	ds := gvk{"apps", "v1", "DaemonSet"}
	base := `apiVersion: apps/v1
kind: DaemonSet
metadata: {name: x}
spec:
  selector: {matchLabels: {a: b}}
  template:
    metadata: {labels: {a: b}}
    spec:
      containers:
        - name: c
          image: i
`
	if bad := kubeconform(t, []gvk{ds}, "good.yaml", []byte(base)); len(bad) > 0 {
		t.Fatalf("a minimal DaemonSet is refused: %v", bad)
	}
	for name, doc := range map[string]string{
		"unknown field":  strings.Replace(base, "image: i", "image: i\n          mountPropagaton: None", 1),
		"wrong type":     strings.Replace(base, "image: i", "image: i\n          stdin: sometimes", 1),
		"missing name":   strings.Replace(base, "- name: c\n          image: i", "- image: i", 1),
		"duplicated key": strings.Replace(base, "image: i", "image: i\n          image: j", 1),
	} {
		if bad := kubeconform(t, []gvk{ds}, name, []byte(doc)); len(bad) == 0 {
			t.Errorf("%s: accepted", name)
		}
	}
}

// The schemas and the Go types the semantic checks decode into are of the
// same Kubernetes release.
func TestSchemaVersionMatchesAPITypes(t *testing.T) {
	b, err := os.ReadFile("go.mod")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^\s*k8s\.io/api (v\S+)`).FindSubmatch(b)
	if want := "v0." + strings.TrimPrefix(kubernetesVersion, "v1."); m == nil || string(m[1]) != want {
		t.Errorf("go.mod requires k8s.io/api %q; the schemas are of Kubernetes %s: want %s", m, kubernetesVersion, want)
	}
}
