package test

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// matcher is one label matcher of a PromQL selector.
type matcher struct{ label, op, value string }

// selector is a metric name and its matchers as written in an expression.
type selector struct {
	name     string
	matchers []matcher
}

// promqlWords are the identifiers of PromQL that are not metric names when
// not followed by "(": aggregations take "by (...)" between name and body.
var promqlWords = map[string]bool{
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
	"bool": true, "and": true, "or": true, "unless": true, "offset": true, "inf": true, "nan": true,
	"sum": true, "min": true, "max": true, "avg": true, "group": true, "stddev": true, "stdvar": true,
	"count": true, "count_values": true, "bottomk": true, "topk": true, "quantile": true,
}

var labelList = map[string]bool{"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true}

// selectors finds the metric selectors of a PromQL expression: identifiers
// that are not functions, keywords or label lists, with their {matchers}.
// Enough PromQL for dashboards and alert rules; TestSelectors holds it to
// that.
func selectors(expr string) []selector {
	var out []selector
	isStart := func(c byte) bool { return c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
	isPart := func(c byte) bool { return isStart(c) || c >= '0' && c <= '9' }
	skipSpace := func(i int) int {
		for i < len(expr) && (expr[i] == ' ' || expr[i] == '\n' || expr[i] == '\t') {
			i++
		}
		return i
	}
	// readString reads a quoted string starting at i; it returns the
	// unquoted value and the index after it.
	readString := func(i int) (string, int) {
		q := expr[i]
		var b strings.Builder
		for i++; i < len(expr) && expr[i] != q; i++ {
			if expr[i] == '\\' && i+1 < len(expr) {
				i++
			}
			b.WriteByte(expr[i])
		}
		return b.String(), i + 1
	}
	for i := 0; i < len(expr); {
		c := expr[i]
		switch {
		case c == '"' || c == '\'' || c == '`':
			_, i = readString(i)
		case c == '[': // range or subquery
			for i < len(expr) && expr[i] != ']' {
				i++
			}
		case c >= '0' && c <= '9' || c == '.':
			for i < len(expr) && (isPart(expr[i]) || expr[i] == '.') {
				i++
			}
		case isStart(c):
			j := i
			for j < len(expr) && isPart(expr[j]) {
				j++
			}
			word := expr[i:j]
			k := skipSpace(j)
			switch {
			case labelList[word]:
				if k < len(expr) && expr[k] == '(' { // skip "(label, ...)"
					for k < len(expr) && expr[k] != ')' {
						k++
					}
					k++
				}
				i = k
				continue
			case k < len(expr) && expr[k] == '(' || promqlWords[strings.ToLower(word)]:
				i = j
				continue
			}
			sel := selector{name: word}
			if k < len(expr) && expr[k] == '{' {
				for k++; ; {
					k = skipSpace(k)
					if k >= len(expr) || expr[k] == '}' {
						k++
						break
					}
					if expr[k] == ',' {
						k++
						continue
					}
					l := k
					for k < len(expr) && isPart(expr[k]) {
						k++
					}
					label := expr[l:k]
					k = skipSpace(k)
					o := k
					for k < len(expr) && strings.ContainsRune("=!~", rune(expr[k])) {
						k++
					}
					op := expr[o:k]
					k = skipSpace(k)
					var v string
					v, k = readString(k)
					sel.matchers = append(sel.matchers, matcher{label, op, v})
				}
			}
			out = append(out, sel)
			i = k
		default:
			i++
		}
	}
	return out
}

func TestSelectors(t *testing.T) {
	got := selectors(`histogram_quantile(0.99, sum by (le, job) (rate(connwarden_detect_to_block_seconds_bucket{job=~"$job",instance=~"$instance"}[5m]))) / on(instance) group_left up{job="x"} > bool 0.5 or absent(up)`)
	want := []selector{
		{"connwarden_detect_to_block_seconds_bucket", []matcher{{"job", "=~", "$job"}, {"instance", "=~", "$instance"}}},
		{"up", []matcher{{"job", "=", "x"}}},
		{"up", nil},
	}
	if !slicesEqualFunc(got, want) {
		t.Errorf("selectors:\n got %+v\nwant %+v", got, want)
	}
}

func slicesEqualFunc(a, b []selector) bool {
	return slices.EqualFunc(a, b, func(x, y selector) bool { return x.name == y.name && slices.Equal(x.matchers, y.matchers) })
}

// series parses the exposition format: metric name -> each sample's labels.
func series(body string) map[string][]map[string]string {
	out := map[string][]map[string]string{}
	lbl := regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"`)
	for _, l := range strings.Split(body, "\n") {
		if l == "" || l[0] == '#' {
			continue
		}
		name, rest, _ := strings.Cut(l, "{")
		if i := strings.IndexByte(name, ' '); i >= 0 {
			name, rest = name[:i], ""
		}
		ls := map[string]string{}
		for _, m := range lbl.FindAllStringSubmatch(rest, -1) {
			ls[m[1]] = m[2]
		}
		out[name] = append(out[name], ls)
	}
	return out
}

// deployExprs returns every PromQL expression of the dashboard and the
// alert rules, by where it comes from.
func deployExprs(t *testing.T) map[string]string {
	t.Helper()
	exprs := map[string]string{}
	b, err := os.ReadFile("../deploy/grafana/connwarden.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				RefID string `json:"refId"`
				Expr  string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			exprs["dashboard "+p.Title+" "+tg.RefID] = tg.Expr
		}
	}
	b, err = os.ReadFile("../deploy/prometheus/alerts.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var rf struct {
		Groups []struct {
			Rules []struct{ Alert, Expr string } `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(b, &rf); err != nil {
		t.Fatal(err)
	}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			exprs["alert "+r.Alert] = r.Expr
		}
	}
	return exprs
}

// Every metric the dashboard and the alert rules query is one a running agent
// exports, with the label values they select: a renamed metric or label
// value breaks this test, not a 3 a.m. page that never fires.
func TestDeployFilesUseExportedMetrics(t *testing.T) {
	top := requireKernel(t)
	a := newAgent(t, top, map[string]string{"burst.yaml": burstRule})
	a.start()
	svc := serve(t, top.Victim, top.Victim.IPv4, 0)
	dial(t, top.Attacker, svc, 5, 2*time.Second)
	a.waitBlocked(top.Attacker.IPv4, 10*time.Second)
	var body []byte
	if err := a.client().Do("GET", "/metrics", nil, &body); err != nil {
		t.Fatal(err)
	}
	have := series(string(body))
	// Prometheus adds up{job, instance} to every scrape itself.
	have["up"] = []map[string]string{{}}

	used := map[string]bool{}
	for where, expr := range deployExprs(t) {
		sels := selectors(expr)
		if len(sels) == 0 {
			t.Errorf("%s: no metric in %s", where, expr)
		}
		for _, s := range sels {
			used[s.name] = true
			samples, ok := have[s.name]
			if !ok {
				t.Errorf("%s: the agent exports no %s", where, s.name)
				continue
			}
			for _, m := range s.matchers {
				if m.label == "job" || m.label == "instance" {
					continue // Prometheus' target labels
				}
				match := func(v string) bool { return v == m.value }
				switch m.op {
				case "=":
				case "=~":
					re, err := regexp.Compile("^(?:" + m.value + ")$")
					if err != nil {
						t.Errorf("%s: %s: %v", where, m.value, err)
						continue
					}
					match = re.MatchString
				default:
					continue // negative matchers select by absence
				}
				if !slices.ContainsFunc(samples, func(ls map[string]string) bool { return match(ls[m.label]) }) {
					t.Errorf("%s: no %s series has %s%s%q", where, s.name, m.label, m.op, m.value)
				}
			}
		}
	}
	n := 0
	for name := range used {
		if strings.HasPrefix(name, "connwarden_") {
			n++
		}
	}
	if n < 12 {
		t.Errorf("only %d connwarden metrics found in the dashboard and alerts: %v", n, used)
	}
	t.Logf("%d metrics used, all exported", len(used))
}
