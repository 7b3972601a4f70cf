package main

import (
	"bytes"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
)

// module is the import path prefix of the project's packages.
const module = "github.com/connwarden/connwarden"

// Target is a figure's goal, from issue #5.
type Target struct {
	Op    string // "<=", "<", ">=" or "=="
	Limit float64
}

func (t Target) String() string {
	op := map[string]string{"<=": "≤", "<": "<", ">=": "≥", "==": "="}[t.Op]
	return op + " " + strconv.FormatFloat(t.Limit, 'f', -1, 64)
}

// Met reports whether v meets the target.
func (t Target) Met(v float64) bool {
	switch t.Op {
	case "<=":
		return v <= t.Limit
	case "<":
		return v < t.Limit
	case ">=":
		return v >= t.Limit
	case "==":
		return v == t.Limit
	}
	return false
}

// Value is one key's figure, or why there is none.
type Value struct {
	V    float64
	OK   bool   // V is a measurement
	Runs int    // how many runs it was taken from
	Note string // without a value: why; with one: a caveat
}

// Key is one entry of bench.json.
type Key struct {
	Name   string
	From   string  // the benchmark metric and how runs are combined
	Target *Target // nil: reported without a goal
	value  func(*Results) Value
}

// source is one metric of one benchmark.
type source struct {
	pkg   string // relative to the module: "bpf", "test"
	bench string
	unit  string
}

func (s source) String() string { return s.bench + " " + s.unit }

// values returns the metric's value in every run that reported it, or a
// Value saying why there are none.
func (s source) values(r *Results) ([]float64, Value) {
	pkg := module + "/" + s.pkg
	b := r.Bench(pkg, s.bench)
	if b == nil || len(b.Runs) == 0 {
		return nil, Value{Note: whyMissing(r, pkg, s.bench)}
	}
	var vs []float64
	for _, run := range b.Runs {
		if v, ok := run.Metrics[s.unit]; ok {
			vs = append(vs, v)
		}
	}
	if len(vs) == 0 {
		return nil, Value{Note: fmt.Sprintf("%s reported no %s", s.bench, s.unit)}
	}
	v := Value{OK: true, Runs: len(vs)}
	if b.Failed != "" {
		v.Note = fmt.Sprintf("from the %d runs that completed; a run failed: %s", len(vs), b.Failed)
	}
	return vs, v
}

// whyMissing explains the absence of results for bench in pkg: its own
// skip or failure, a parent's, its package's failure, or its absence.
func whyMissing(r *Results, pkg, bench string) string {
	for name := bench; ; {
		if b := r.Bench(pkg, name); b != nil {
			switch {
			case b.Failed != "" && name == bench:
				return "failed: " + b.Failed
			case b.Failed != "":
				return name + " failed: " + b.Failed
			case b.Skipped != "" && name == bench:
				return "skipped: " + b.Skipped
			case b.Skipped != "":
				return name + " skipped: " + b.Skipped
			}
		}
		i := strings.LastIndexByte(name, '/')
		if i < 0 {
			break
		}
		name = name[:i]
	}
	if why, ok := r.PackageFailed[pkg]; ok {
		return "package " + strings.TrimPrefix(pkg, module+"/") + " failed: " + why
	}
	if !r.Packages[pkg] {
		return "package " + strings.TrimPrefix(pkg, module+"/") + " did not run"
	}
	return "did not run (not in the output)"
}

func median(vs []float64) float64 {
	s := slices.Clone(vs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// medianKey is the median of a metric over runs.
func medianKey(name string, s source, t *Target) Key {
	return Key{Name: name, From: s.String() + ", median", Target: t, value: func(r *Results) Value {
		vs, v := s.values(r)
		if v.OK {
			v.V = median(vs)
		}
		return v
	}}
}

// maxKey is the largest value of a metric over runs: for counts whose goal
// is zero, where a median would hide a bad run.
func maxKey(name string, s source, t *Target) Key {
	return Key{Name: name, From: s.String() + ", max over runs", Target: t, value: func(r *Results) Value {
		vs, v := s.values(r)
		if v.OK {
			v.V = slices.Max(vs)
		}
		return v
	}}
}

// ratioKey is the median over runs of num/den, pairing the i-th run of
// each: two sub-benchmarks of one benchmark function run one after the
// other, so its i-th runs of each were measured together.
func ratioKey(name string, num, den source, t *Target) Key {
	from := fmt.Sprintf("%s / %s, median of per-run ratios", num, den)
	return Key{Name: name, From: from, Target: t, value: func(r *Results) Value {
		ns, v := num.values(r)
		if !v.OK {
			return v
		}
		ds, dv := den.values(r)
		if !dv.OK {
			return dv
		}
		n := min(len(ns), len(ds))
		var ratios []float64
		for i := range n {
			if ds[i] != 0 {
				ratios = append(ratios, ns[i]/ds[i])
			}
		}
		if len(ratios) == 0 {
			return Value{Note: "no run pairs with a non-zero " + den.String()}
		}
		out := Value{V: median(ratios), OK: true, Runs: len(ratios), Note: joinNotes(v.Note, dv.Note)}
		if len(ns) != len(ds) {
			out.Note = joinNotes(out.Note, fmt.Sprintf("%d and %d runs; the first %d paired", len(ns), len(ds), n))
		}
		return out
	}}
}

func joinNotes(a, b string) string {
	switch {
	case a == "":
		return b
	case b == "" || a == b:
		return a
	}
	return a + "; " + b
}

// Keys are bench.json's entries, in order: issue #5's keys, and after the
// figures whose target is a ratio, that ratio. The XDP ratios are the
// benchmark's own x-empty metric: the empty program measured right after
// each case with the same repeat count.
var Keys = []Key{
	medianKey("xdp_empty_ns", source{"bpf", "BenchmarkXDP/empty", "ns/pkt"}, nil),
	medianKey("xdp_hit_ns", source{"bpf", "BenchmarkXDP/exact-hit", "ns/pkt"}, nil),
	medianKey("xdp_hit_over_empty", source{"bpf", "BenchmarkXDP/exact-hit", "x-empty"}, &Target{"<=", 2.5}),
	medianKey("xdp_miss_ns", source{"bpf", "BenchmarkXDP/miss", "ns/pkt"}, nil),
	medianKey("xdp_miss_over_empty", source{"bpf", "BenchmarkXDP/miss", "x-empty"}, &Target{"<=", 2.5}),
	medianKey("xdp_cidr_ns", source{"bpf", "BenchmarkXDP/cidr-hit", "ns/pkt"}, nil),
	medianKey("connect_rate_untraced", source{"bpf", "BenchmarkConnect/untraced", "connects/s"}, nil),
	medianKey("connect_rate_traced", source{"bpf", "BenchmarkConnect/traced", "connects/s"}, nil),
	ratioKey("connect_traced_over_untraced", source{"bpf", "BenchmarkConnect/traced", "connects/s"},
		source{"bpf", "BenchmarkConnect/untraced", "connects/s"}, &Target{">=", 0.9}),
	maxKey("events_lost", source{"bpf", "BenchmarkConnect/traced", "lost"}, &Target{"==", 0}),
	medianKey("engine_events_per_sec", source{"detector", "BenchmarkProcess/steady", "events/s"}, &Target{">=", 4e6}),
	maxKey("engine_allocs_per_event", source{"detector", "BenchmarkProcess/steady", "allocs/op"}, &Target{"==", 0}),
	medianKey("detect_to_block_p50_ms", source{"test", "BenchmarkAgentDetectToBlock", "p50-ms"}, nil),
	medianKey("detect_to_block_p99_ms", source{"test", "BenchmarkAgentDetectToBlock", "p99-ms"}, &Target{"<", 10}),
	medianKey("block_inserts_per_sec", source{"bpf", "BenchmarkBlockBatch/exact-v4", "entries/s"}, nil),
	medianKey("agent_rss_mb_100k_keys", source{"test", "BenchmarkAgentRSS100kKeys/default-pack", "rss-MB"}, &Target{"<", 40}),
	medianKey("startup_ms", source{"test", "BenchmarkAgentStartup", "startup-ms"}, &Target{"<", 300}),
}

// Figure is a key with its value.
type Figure struct {
	Key
	Value
}

// Evaluate computes every key from r.
func Evaluate(r *Results, keys []Key) []Figure {
	out := make([]Figure, len(keys))
	for i, k := range keys {
		out[i] = Figure{k, k.value(r)}
	}
	return out
}

// jsonNumber renders v for bench.json: plain decimal, at most 4 decimals.
func jsonNumber(v float64) string {
	return strconv.FormatFloat(math.Round(v*1e4)/1e4, 'f', -1, 64)
}

// WriteJSON writes bench.json: one object, the keys in order, each a
// number or null when it was not measured.
func WriteJSON(w io.Writer, figs []Figure) error {
	var b bytes.Buffer
	b.WriteString("{\n")
	for i, f := range figs {
		v := "null"
		if f.OK {
			v = jsonNumber(f.V)
		}
		sep := ","
		if i == len(figs)-1 {
			sep = ""
		}
		fmt.Fprintf(&b, "  %q: %s%s\n", f.Name, v, sep)
	}
	b.WriteString("}\n")
	_, err := w.Write(b.Bytes())
	return err
}

// formatNumber renders v for people: whole numbers from 100 up, two
// decimals from 1, three below.
func formatNumber(v float64) string {
	a := math.Abs(v)
	switch {
	case v == math.Trunc(v) && a < 1e15:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case a >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case a >= 1:
		return strconv.FormatFloat(v, 'f', 2, 64)
	}
	return strconv.FormatFloat(v, 'f', 3, 64)
}

// WriteTable prints the figures with their targets and verdicts, then the
// notes: why a figure is missing, or what to bear in mind about it.
// It returns how many targets were missed and how many figures are absent.
func WriteTable(w io.Writer, figs []Figure) (missed, absent int) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KEY\tVALUE\tTARGET\tRESULT\tRUNS\tFROM")
	var notes []string
	for _, f := range figs {
		val, target, result := "-", "-", ""
		if f.Target != nil {
			target = f.Target.String()
		}
		switch {
		case !f.OK:
			result = "NO DATA"
			absent++
		case f.Target == nil:
			val = formatNumber(f.V)
		case f.Target.Met(f.V):
			val, result = formatNumber(f.V), "pass"
		default:
			val, result = formatNumber(f.V), "FAIL"
			missed++
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", f.Name, val, target, result, f.Runs, f.From)
		if f.Note != "" {
			notes = append(notes, f.Name+": "+f.Note)
		}
	}
	tw.Flush()
	if len(notes) > 0 {
		fmt.Fprintln(w, "\nNotes:")
		for _, n := range notes {
			fmt.Fprintln(w, "  "+n)
		}
	}
	return missed, absent
}

// Failures lists benchmarks that failed in some run and packages that
// failed, for the exit status.
func Failures(r *Results) []string {
	var out []string
	for _, b := range r.benches {
		if b.Failed != "" {
			out = append(out, fmt.Sprintf("%s %s: %s", strings.TrimPrefix(b.Package, module+"/"), b.Name, b.Failed))
		}
	}
	for pkg, why := range r.PackageFailed {
		out = append(out, fmt.Sprintf("package %s: %s", strings.TrimPrefix(pkg, module+"/"), why))
	}
	slices.Sort(out)
	return out
}
