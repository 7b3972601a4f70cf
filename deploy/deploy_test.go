package deploy

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// tool returns the path of a command `make setup` installs.
func tool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not installed (make setup)", name)
	}
	return p
}

// run runs a command and returns its combined output, failing the test on a
// non-zero exit.
func run(t *testing.T, dir, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// buildAgent builds the connwarden binary into a temporary directory.
func buildAgent(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "connwarden")
	run(t, "..", "go", "build", "-o", bin, "./cmd/connwarden")
	return bin
}

// verifyUnit runs systemd-analyze verify on the unit text (as
// connwarden.service in a temporary directory) and fails on any complaint,
// warnings included: verify exits 0 on unknown keys.
func verifyUnit(t *testing.T, unit string) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "connwarden.service")
	if err := os.WriteFile(p, []byte(unit), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(tool(t, "systemd-analyze"), "verify", "--man=no", p)
	out, err := cmd.CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// The unit passes systemd-analyze verify (with ExecStart= pointing at a built
// agent: verify checks the binaries exist) and keeps an exposure score of at
// most 2.5 in the offline security review, so a weakened sandbox is noticed.
func TestSystemdUnit(t *testing.T) {
	b, err := os.ReadFile("systemd/connwarden.service")
	if err != nil {
		t.Fatal(err)
	}
	unit := string(b)
	if !strings.Contains(unit, "ExecStart=/usr/local/bin/connwarden run") {
		t.Fatal("unit does not run /usr/local/bin/connwarden run (make install rewrites that path)")
	}
	bin := buildAgent(t)
	verifyUnit(t, strings.ReplaceAll(unit, "/usr/local/bin/connwarden", bin))

	// A unit with a typo must not verify cleanly, or the check above is void.
	cmd := exec.Command(tool(t, "systemd-analyze"), "verify", "--man=no", filepath.Join(t.TempDir(), "none.service"))
	if out, err := cmd.CombinedOutput(); err == nil && len(out) == 0 {
		t.Error("systemd-analyze verify accepts a missing unit; the check is void")
	}

	p := filepath.Join(t.TempDir(), "connwarden.service")
	os.WriteFile(p, []byte(strings.ReplaceAll(unit, "/usr/local/bin/connwarden", bin)), 0o644)
	out, err := exec.Command(tool(t, "systemd-analyze"), "security", "--offline=true", "--threshold=25", p).CombinedOutput()
	if err != nil {
		t.Errorf("systemd-analyze security: exposure above 2.5 or error: %v\n%s", err, out)
	}
	if m := regexp.MustCompile(`Overall exposure level for connwarden.service: ([0-9.]+)`).FindSubmatch(out); m != nil {
		t.Logf("exposure %s", m[1])
	} else {
		t.Errorf("no exposure level in:\n%s", out)
	}
}

// alertRules is the shape of a Prometheus rule file.
type alertRules struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

const runbookBase = "https://github.com/connwarden/connwarden/blob/main/docs/operations.md#"

// alerts.yaml passes promtool check rules and its unit tests; every alert has
// a severity, a summary, a description and a runbook section in
// docs/operations.md, and a unit test in which it fires.
func TestPrometheusAlerts(t *testing.T) {
	promtool := tool(t, "promtool")
	t.Log(run(t, "prometheus", promtool, "check", "rules", "alerts.yaml"))
	t.Log(run(t, "prometheus", promtool, "test", "rules", "alerts_test.yaml"))

	var rf alertRules
	readYAML(t, "prometheus/alerts.yaml", &rf)
	var tests struct {
		Tests []struct {
			AlertRuleTest []struct {
				Alertname string           `yaml:"alertname"`
				ExpAlerts []map[string]any `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		} `yaml:"tests"`
	}
	readYAML(t, "prometheus/alerts_test.yaml", &tests)
	fires := map[string]bool{}
	for _, tc := range tests.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			}
		}
	}
	docs, err := os.ReadFile("../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			n++
			if s := r.Labels["severity"]; s != "warning" && s != "critical" {
				t.Errorf("%s: severity %q, want warning or critical", r.Alert, s)
			}
			for _, k := range []string{"summary", "description", "runbook_url"} {
				if r.Annotations[k] == "" {
					t.Errorf("%s: no %s annotation", r.Alert, k)
				}
			}
			if want := runbookBase + strings.ToLower(r.Alert); r.Annotations["runbook_url"] != want {
				t.Errorf("%s: runbook_url %s, want %s", r.Alert, r.Annotations["runbook_url"], want)
			}
			if !regexp.MustCompile(`(?m)^### ` + r.Alert + `$`).Match(docs) {
				t.Errorf("%s: docs/operations.md has no section ### %s", r.Alert, r.Alert)
			}
			if !fires[r.Alert] {
				t.Errorf("%s: no test in alerts_test.yaml where it fires", r.Alert)
			}
		}
	}
	for _, want := range []string{"ConnwardenAgentDown", "ConnwardenEventsLost", "ConnwardenBlocklistNearCapacity", "ConnwardenRulesReloadFailed"} {
		if !strings.Contains(string(mustRead(t, "prometheus/alerts.yaml")), "alert: "+want+"\n") {
			t.Errorf("alerts.yaml lacks %s", want)
		}
	}
	t.Logf("%d alerts", n)
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	dec := yaml.NewDecoder(bytes.NewReader(mustRead(t, path)))
	dec.KnownFields(false)
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// dashboard is the part of Grafana's dashboard model the checks read.
type dashboard struct {
	UID           string `json:"uid"`
	Title         string `json:"title"`
	SchemaVersion int    `json:"schemaVersion"`
	Templating    struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
	Panels []dashPanel `json:"panels"`
}

type dashPanel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource *struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	} `json:"datasource"`
	GridPos struct{ X, Y, W, H int } `json:"gridPos"`
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
	Panels []dashPanel `json:"panels"`
}

// grafanaVars stand in for Grafana's variables so promtool can parse the
// expressions.
var grafanaVars = strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$__range", "6h", "$job", "connwarden", "$instance", ".+")

// Every panel the issue asks for is on the dashboard, every panel queries the
// chosen Prometheus data source, panels do not overlap, and every expression
// is valid PromQL (promtool check rules on recording rules made of them).
// That each metric exists in the agent is checked against a running agent in
// test/deploy_metrics_test.go.
func TestGrafanaDashboard(t *testing.T) {
	var d dashboard
	// The rest of Grafana's model is not checked: decode loosely, but insist
	// on valid JSON and the fields above.
	if err := json.Unmarshal(mustRead(t, "grafana/connwarden.json"), &d); err != nil {
		t.Fatal(err)
	}
	if d.UID == "" || d.Title == "" || d.SchemaVersion < 36 {
		t.Errorf("uid %q title %q schemaVersion %d: want both set and schema 36 or later", d.UID, d.Title, d.SchemaVersion)
	}
	vars := map[string]string{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v.Type
	}
	if vars["datasource"] != "datasource" || vars["job"] != "query" || vars["instance"] != "query" {
		t.Errorf("templating %v: want datasource (datasource), job and instance (query)", vars)
	}

	var flat []dashPanel
	for _, p := range d.Panels {
		flat = append(flat, p)
		flat = append(flat, p.Panels...)
	}
	ids := map[int]bool{}
	var rules strings.Builder
	rules.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	byTitle := map[string]string{}
	var boxes []dashPanel
	for _, p := range flat {
		if ids[p.ID] {
			t.Errorf("panel id %d twice", p.ID)
		}
		ids[p.ID] = true
		if g := p.GridPos; g.W <= 0 || g.H <= 0 || g.X < 0 || g.X+g.W > 24 {
			t.Errorf("panel %q: gridPos %+v outside the 24-column grid", p.Title, g)
		}
		if p.Type == "row" {
			continue
		}
		for _, q := range boxes {
			a, b := p.GridPos, q.GridPos
			if a.X < b.X+b.W && b.X < a.X+a.W && a.Y < b.Y+b.H && b.Y < a.Y+a.H {
				t.Errorf("panels %q and %q overlap", p.Title, q.Title)
			}
		}
		boxes = append(boxes, p)
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" || p.Datasource.Type != "prometheus" {
			t.Errorf("panel %q: datasource %+v, want the ${datasource} variable", p.Title, p.Datasource)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		refs := map[string]bool{}
		for _, tg := range p.Targets {
			if tg.RefID == "" || refs[tg.RefID] || tg.Expr == "" {
				t.Errorf("panel %q: target %+v: want a unique refId and an expression", p.Title, tg)
			}
			refs[tg.RefID] = true
			byTitle[p.Title] += tg.Expr + "\n"
			expr := grafanaVars.Replace(tg.Expr)
			if strings.Contains(expr, "$") {
				t.Errorf("panel %q: unknown variable in %s", p.Title, tg.Expr)
			}
			fmt.Fprintf(&rules, "      - record: dashboard:panel%d:%s\n        expr: %q\n", p.ID, strings.ToLower(tg.RefID), expr)
		}
	}
	for title, metrics := range map[string][]string{
		"PASS / DROP rate":                {"connwarden_xdp_packets_total"},
		"Drop reasons":                    {"connwarden_xdp_verdicts_total"},
		"Kernel events received and lost": {"connwarden_events_received_total", "connwarden_events_lost_total"},
		"Alerts by rule":                  {"connwarden_alerts_total"},
		"Active blocks versus capacity":   {"connwarden_blocklist_entries", "connwarden_blocklist_capacity"},
		"Detection-to-block latency":      {"connwarden_detect_to_block_seconds_bucket"},
	} {
		exprs, ok := byTitle[title]
		if !ok {
			t.Errorf("no panel %q", title)
		}
		for _, m := range metrics {
			if !strings.Contains(exprs, m) {
				t.Errorf("panel %q does not query %s", title, m)
			}
		}
	}

	p := filepath.Join(t.TempDir(), "dashboard.rules.yaml")
	os.WriteFile(p, []byte(rules.String()), 0o644)
	t.Log(run(t, ".", tool(t, "promtool"), "check", "rules", p))
	// And promtool does reject a broken expression, or the check is void.
	bad := filepath.Join(t.TempDir(), "bad.rules.yaml")
	os.WriteFile(bad, []byte("groups:\n  - name: x\n    rules:\n      - record: x\n        expr: \"sum(rate(x[5m])\"\n"), 0o644)
	if out, err := exec.Command(tool(t, "promtool"), "check", "rules", bad).CombinedOutput(); err == nil {
		t.Errorf("promtool accepts an unbalanced expression:\n%s", out)
	}
}

// make install DESTDIR=... PREFIX=... SYSCONFDIR=... lays out the binary, the
// unit, the config and the rules with every path rewritten; the installed unit
// verifies, the installed binary accepts the installed rules, and a second
// install (an upgrade) keeps the operator's config and rules.
func TestMakeInstall(t *testing.T) {
	tool(t, "make")
	dest := t.TempDir()
	bin := filepath.Join(t.TempDir(), "connwarden")
	mk := func(args ...string) string {
		return run(t, "..", "make", append([]string{"--no-print-directory", "install", "BIN=" + bin, "DESTDIR=" + dest}, args...)...)
	}
	mk("PREFIX=/opt/cw", "SYSCONFDIR=/opt/cw/etc")

	var files []string
	filepath.WalkDir(dest, func(p string, e fs.DirEntry, err error) error {
		if err == nil && !e.IsDir() {
			info, _ := e.Info()
			files = append(files, fmt.Sprintf("%s %o", strings.TrimPrefix(p, dest), info.Mode().Perm()))
		}
		return nil
	})
	want := []string{
		"/opt/cw/bin/connwarden 755",
		"/opt/cw/etc/connwarden/config.yaml 644",
		"/opt/cw/lib/systemd/system/connwarden.service 644",
	}
	defaults, _ := filepath.Glob("../rules/default/*.yaml")
	if len(defaults) == 0 {
		t.Fatal("no default rules to install")
	}
	for _, r := range defaults {
		want = append(want, "/opt/cw/etc/connwarden/rules/"+filepath.Base(r)+" 644")
	}
	slices.Sort(want)
	slices.Sort(files)
	if !slices.Equal(files, want) {
		t.Errorf("installed tree:\n%s\nwant:\n%s", strings.Join(files, "\n"), strings.Join(want, "\n"))
	}

	unit := string(mustRead(t, filepath.Join(dest, "/opt/cw/lib/systemd/system/connwarden.service")))
	for _, l := range []string{
		"ExecStartPre=/opt/cw/bin/connwarden rules validate /opt/cw/etc/connwarden/rules",
		"ExecStart=/opt/cw/bin/connwarden run --config /opt/cw/etc/connwarden/config.yaml",
	} {
		if !strings.Contains(unit, "\n"+l+"\n") {
			t.Errorf("installed unit lacks %s", l)
		}
	}
	if strings.Contains(unit, "/usr/local/bin/connwarden") || strings.Count(unit, "/etc/connwarden/") != strings.Count(unit, "/opt/cw/etc/connwarden/") {
		t.Errorf("installed unit still names the default paths:\n%s", unit)
	}
	cfg := mustRead(t, filepath.Join(dest, "/opt/cw/etc/connwarden/config.yaml"))
	if !bytes.Contains(cfg, []byte("\nrules_dir: /opt/cw/etc/connwarden/rules\n")) {
		t.Errorf("installed config does not point at the installed rules:\n%s", cfg)
	}
	// The installed unit verifies with its paths under DESTDIR.
	verifyUnit(t, strings.ReplaceAll(unit, "/opt/cw/", dest+"/opt/cw/"))
	out := run(t, ".", filepath.Join(dest, "/opt/cw/bin/connwarden"), "rules", "validate", filepath.Join(dest, "/opt/cw/etc/connwarden/rules"))
	if !strings.HasPrefix(out, "ok: ") {
		t.Errorf("installed rules: %s", out)
	}

	// An upgrade keeps what the operator changed.
	cfgPath := filepath.Join(dest, "/opt/cw/etc/connwarden/config.yaml")
	edited := append(cfg, "# edited by the operator\n"...)
	os.WriteFile(cfgPath, edited, 0o644)
	os.Remove(filepath.Join(dest, "/opt/cw/etc/connwarden/rules/lateral.yaml"))
	out = mk("PREFIX=/opt/cw", "SYSCONFDIR=/opt/cw/etc")
	if !bytes.Equal(mustRead(t, cfgPath), edited) || !strings.Contains(out, "keeping") {
		t.Errorf("a second install replaced the operator's config:\n%s", out)
	}
	if _, err := os.Stat(filepath.Join(dest, "/opt/cw/etc/connwarden/rules/lateral.yaml")); err == nil {
		t.Error("a second install put back a rule file the operator removed")
	}

	// With the defaults, the installed unit is the one in the repository.
	dest2 := t.TempDir()
	run(t, "..", "make", "--no-print-directory", "install", "BIN="+bin, "DESTDIR="+dest2)
	if got := mustRead(t, filepath.Join(dest2, "/usr/local/lib/systemd/system/connwarden.service")); !bytes.Equal(got, mustRead(t, "systemd/connwarden.service")) {
		t.Error("make install with the default PREFIX changed the unit")
	}
	if _, err := os.Stat(filepath.Join(dest2, "/etc/connwarden/config.yaml")); err != nil {
		t.Error(err)
	}
}

// make release builds a static binary whose `connwarden version` names the
// version and commit given, the Go toolchain and the cilium/ebpf module in
// go.mod; the tarball holds it with the deploy files, matches its sha256
// file, and is byte-for-byte reproducible.
func TestMakeRelease(t *testing.T) {
	tool(t, "make")
	if testing.Short() {
		t.Skip("builds the release twice")
	}
	dist := t.TempDir()
	const version, commit = "v0.0.0-test", "0123abc"
	name := "connwarden-" + version + "-linux-" + runtime.GOARCH
	mk := func() []byte {
		run(t, "..", "make", "--no-print-directory", "release", "VERSION="+version, "COMMIT="+commit, "DIST="+dist, "GOARCH="+runtime.GOARCH)
		return mustRead(t, filepath.Join(dist, name+".tar.gz"))
	}
	tgz := mk()
	sum := sha256.Sum256(tgz)
	if want := hex.EncodeToString(sum[:]) + "  " + name + ".tar.gz\n"; string(mustRead(t, filepath.Join(dist, name+".tar.gz.sha256"))) != want {
		t.Errorf("sha256 file does not match the tarball: want %q", want)
	}
	run(t, dist, tool(t, "sha256sum"), "-c", name+".tar.gz.sha256")

	// Unpack, checking owners and modes on the way.
	root := t.TempDir()
	zr, err := gzip.NewReader(bytes.NewReader(tgz))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	var names []string
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		if h.Uid != 0 || h.Gid != 0 {
			t.Errorf("%s owned by %d:%d, want 0:0", h.Name, h.Uid, h.Gid)
		}
		if !strings.HasPrefix(h.Name, name+"/") {
			t.Errorf("%s outside %s/", h.Name, name)
			continue
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		names = append(names, strings.TrimPrefix(h.Name, name+"/"))
		p := filepath.Join(root, h.Name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		b, _ := io.ReadAll(tr)
		os.WriteFile(p, b, os.FileMode(h.Mode).Perm())
	}
	for _, want := range []string{"connwarden", "README.md", "docs/operations.md", "deploy/config.yaml",
		"deploy/systemd/connwarden.service", "deploy/grafana/connwarden.json", "deploy/prometheus/alerts.yaml",
		"rules/default/inbound.yaml"} {
		if !slices.Contains(names, want) {
			t.Errorf("tarball lacks %s (has %q)", want, names)
		}
	}
	if !slices.ContainsFunc(names, func(n string) bool { return strings.HasPrefix(n, "deploy/kubernetes/") }) {
		t.Errorf("tarball has no Kubernetes manifests (has %q)", names)
	}
	if slices.ContainsFunc(names, func(n string) bool { return strings.HasSuffix(n, ".go") }) {
		t.Errorf("tarball carries Go sources: %q", names)
	}

	bin := filepath.Join(root, name, "connwarden")
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("release binary has an ELF interpreter: it is not static")
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("release binary needs %q", libs)
	}
	f.Close()

	ebpf := regexp.MustCompile(`(?m)^\s*github\.com/cilium/ebpf (v\S+)`).FindSubmatch(mustRead(t, "../go.mod"))
	if ebpf == nil {
		t.Fatal("go.mod names no cilium/ebpf version")
	}
	want := fmt.Sprintf("connwarden %s (commit %s, %s, cilium/ebpf %s)\n", version, commit, runtime.Version(), ebpf[1])
	if got := run(t, ".", bin, "version"); got != want {
		t.Errorf("connwarden version:\n got %q\nwant %q", got, want)
	}
	var v map[string]string
	if err := json.Unmarshal([]byte(run(t, ".", bin, "version", "--json")), &v); err != nil {
		t.Fatal(err)
	}
	if v["version"] != version || v["commit"] != commit || v["go_version"] != runtime.Version() || v["cilium_ebpf_version"] != string(ebpf[1]) {
		t.Errorf("connwarden version --json: %v", v)
	}

	if again := mk(); !bytes.Equal(again, tgz) {
		t.Error("a second make release produced a different tarball: the release is not reproducible")
	}
}
