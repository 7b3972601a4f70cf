package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// stream builds a go test -json stream. Each entry is one event: "pkg|test|output"
// for output, or "pkg|test|!action" for another action.
func stream(t *testing.T, events ...string) string {
	t.Helper()
	var b strings.Builder
	for _, e := range events {
		f := strings.SplitN(e, "|", 3)
		if len(f) != 3 {
			t.Fatalf("bad event %q", e)
		}
		ev := map[string]string{"Action": "output", "Package": module + "/" + f[0], "Output": f[2]}
		if f[1] != "" {
			ev["Test"] = f[1]
		}
		if a, ok := strings.CutPrefix(f[2], "!"); ok {
			ev["Action"] = a
			delete(ev, "Output")
		}
		line, _ := json.Marshal(ev)
		b.Write(line)
		b.WriteByte('\n')
	}
	return b.String()
}

func TestParseResult(t *testing.T) {
	for _, tt := range []struct {
		line string
		name string
		run  Run
		ok   bool
	}{
		{"BenchmarkXDP/empty-2   \t 1000000\t  21.00 ns/op\t 21 ns/pkt\t 1.000 x-empty\n",
			"BenchmarkXDP/empty", Run{1000000, map[string]float64{"ns/op": 21, "ns/pkt": 21, "x-empty": 1}}, true},
		{"BenchmarkBlockBatch/exact-v4-2 \t 13\t 77485585 ns/op\t 845786 entries/s\t 10213461 B/op\t 65595 allocs/op",
			"BenchmarkBlockBatch/exact-v4", Run{13, map[string]float64{"ns/op": 77485585, "entries/s": 845786, "B/op": 10213461, "allocs/op": 65595}}, true},
		// GOMAXPROCS=1: no suffix, and -v4 is part of the name.
		{"BenchmarkBlockBatch/exact-v4 \t 13\t 7 ns/op", "BenchmarkBlockBatch/exact-v4", Run{13, map[string]float64{"ns/op": 7}}, true},
		{"BenchmarkSkip", "", Run{}, false},
		{"BenchmarkX-2 \t 10\t 5 ns/op\t 3", "", Run{}, false},            // odd field count
		{"BenchmarkX-2 \t 10\t fast ns/op", "", Run{}, false},             // not a number
		{"    bench_test.go:12: BenchmarkX 10 5 ns/op", "", Run{}, false}, // a log line
	} {
		name, run, ok := parseResult(tt.line)
		if ok != tt.ok || name != tt.name {
			t.Errorf("parseResult(%q) = %q, ok %v; want %q, ok %v", tt.line, name, ok, tt.name, tt.ok)
			continue
		}
		if diff := cmp.Diff(tt.run, run); ok && diff != "" {
			t.Errorf("parseResult(%q) run (-want +got):\n%s", tt.line, diff)
		}
	}
}

func TestParse(t *testing.T) {
	in := stream(t,
		"bpf||goos: linux\n",
		"bpf||pkg: "+module+"/bpf\n",
		// The first run is attributed to the test, later ones are not; a
		// result line may arrive in two pieces.
		"bpf|BenchmarkXDP|=== RUN   BenchmarkXDP\n",
		"bpf|BenchmarkXDP/empty|BenchmarkXDP/empty\n",
		"bpf|BenchmarkXDP/empty|    xdp_bench_test.go:60: loaded 1010000 entries in 2s\n",
		"bpf|BenchmarkXDP/empty|BenchmarkXDP/empty-2   \t",
		"bpf|BenchmarkXDP/empty|1000000\t 21 ns/pkt\n",
		"bpf||BenchmarkXDP/empty-2   \t 1000000\t 23 ns/pkt\n",
		// A skip and its reason.
		"bpf|BenchmarkConnect|=== RUN   BenchmarkConnect\n",
		"bpf|BenchmarkConnect|    tracer_bench_test.go:35: kernel test skipped: not root\n",
		"bpf|BenchmarkConnect|--- SKIP: BenchmarkConnect\n",
		"bpf|BenchmarkConnect|!skip",
		"bpf||ok  \t"+module+"/bpf\t3.1s\n",
		"bpf||!pass",
		// One run of three fails; the agent log after the message is not
		// part of it.
		"test|BenchmarkAgentRSS100kKeys/default-pack|BenchmarkAgentRSS100kKeys/default-pack-2 \t 1\t 9 ns/op\t 700 rss-MB\n",
		"test||    bench_test.go:218: 100100 connections in 8.6s\n",
		"test||BenchmarkAgentRSS100kKeys/default-pack-2 \t 1\t 9 ns/op\t 660 rss-MB\n",
		"test||    bench_test.go:201: rule r tracks 96758 keys, want 100000\n",
		"test||    bench_agent_test.go:122: agent log:\n",
		"test||        {\"level\":\"info\"}\n",
		"test|BenchmarkAgentRSS100kKeys/default-pack|--- FAIL: BenchmarkAgentRSS100kKeys/default-pack\n",
		"test|BenchmarkAgentRSS100kKeys/default-pack|!fail",
		"test|BenchmarkAgentRSS100kKeys/default-pack-2|!fail",
		"test|BenchmarkAgentRSS100kKeys|!fail",
		// A package that panics.
		"detector||panic: runtime error: index out of range\n",
		"detector||FAIL\t"+module+"/detector\t0.2s\n",
		"detector||!fail",
	) + "go: some error the go command printed\n"

	var echo bytes.Buffer
	r, err := Parse(strings.NewReader(in), &echo)
	if err != nil {
		t.Fatal(err)
	}
	type summary struct {
		Runs            []Run
		Skipped, Failed string
	}
	got := map[string]summary{}
	for id, b := range r.benches {
		got[strings.TrimPrefix(id.pkg, module+"/")+" "+id.name] = summary{b.Runs, b.Skipped, b.Failed}
	}
	want := map[string]summary{
		"bpf BenchmarkXDP/empty": {Runs: []Run{
			{1000000, map[string]float64{"ns/pkt": 21}},
			{1000000, map[string]float64{"ns/pkt": 23}},
		}},
		"bpf BenchmarkConnect": {Skipped: "kernel test skipped: not root"},
		"test BenchmarkAgentRSS100kKeys/default-pack": {
			Runs: []Run{
				{1, map[string]float64{"ns/op": 9, "rss-MB": 700}},
				{1, map[string]float64{"ns/op": 9, "rss-MB": 660}},
			},
			Failed: "rule r tracks 96758 keys, want 100000",
		},
		"test BenchmarkAgentRSS100kKeys": {Failed: "no message"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("benchmarks (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[string]string{module + "/detector": "panic: runtime error: index out of range"}, r.PackageFailed); diff != "" {
		t.Errorf("package failures (-want +got):\n%s", diff)
	}
	for _, s := range []string{"BenchmarkXDP/empty-2   \t1000000\t 21 ns/pkt", "go: some error the go command printed", "kernel test skipped"} {
		if !strings.Contains(echo.String(), s) {
			t.Errorf("echo lacks %q:\n%s", s, echo.String())
		}
	}
	if strings.Contains(echo.String(), "=== RUN") {
		t.Errorf("echo has run markers:\n%s", echo.String())
	}
}

func TestEvaluate(t *testing.T) {
	in := stream(t,
		"bpf||BenchmarkXDP/exact-hit-2 \t 100\t 50 ns/pkt\t 2.0 x-empty\n",
		"bpf||BenchmarkXDP/exact-hit-2 \t 100\t 60 ns/pkt\t 3.0 x-empty\n",
		"bpf||BenchmarkXDP/exact-hit-2 \t 100\t 40 ns/pkt\t 2.2 x-empty\n",
		// Untraced and traced alternate, as the benchmark runs them.
		"bpf||BenchmarkConnect/untraced-2 \t 100\t 1000 connects/s\n",
		"bpf||BenchmarkConnect/traced-2 \t 100\t 950 connects/s\t 0 lost\n",
		"bpf||BenchmarkConnect/untraced-2 \t 100\t 2000 connects/s\n",
		"bpf||BenchmarkConnect/traced-2 \t 100\t 1000 connects/s\t 7 lost\n",
		"bpf||BenchmarkBlockBatch/exact-v4-2 \t 1\t 5 ns/op\n",
		"bpf|BenchmarkXDP/miss|!skip", // a skip without a message
		"bpf||!pass",
		"detector|BenchmarkProcess|    bench_test.go:40: boom\n",
		"detector|BenchmarkProcess|!fail",
		"detector||!pass",
		"test||    bench_test.go:12: kernel test skipped: not root\n",
		"test|BenchmarkAgentRSS100kKeys|!skip",
		"test||!pass",
		"graph||panic: nil map\n",
		"graph||!fail",
	)
	r, err := Parse(strings.NewReader(in), nil)
	if err != nil {
		t.Fatal(err)
	}
	keys := []Key{
		medianKey("hit", source{"bpf", "BenchmarkXDP/exact-hit", "ns/pkt"}, nil),
		medianKey("hit_ratio", source{"bpf", "BenchmarkXDP/exact-hit", "x-empty"}, &Target{"<=", 2.5}),
		ratioKey("traced_ratio", source{"bpf", "BenchmarkConnect/traced", "connects/s"}, source{"bpf", "BenchmarkConnect/untraced", "connects/s"}, &Target{">=", 0.9}),
		maxKey("lost", source{"bpf", "BenchmarkConnect/traced", "lost"}, &Target{"==", 0}),
		medianKey("miss", source{"bpf", "BenchmarkXDP/miss", "ns/pkt"}, nil),
		medianKey("inserts", source{"bpf", "BenchmarkBlockBatch/exact-v4", "entries/s"}, nil),
		medianKey("engine", source{"detector", "BenchmarkProcess/steady", "events/s"}, nil),
		medianKey("rss", source{"test", "BenchmarkAgentRSS100kKeys/default-pack", "rss-MB"}, nil),
		medianKey("graph", source{"graph", "BenchmarkGraphObserve", "ns/op"}, nil),
		medianKey("lru", source{"internal/lru", "BenchmarkChurn", "ns/op"}, nil),
		medianKey("absent", source{"bpf", "BenchmarkNope", "ns/op"}, nil),
	}
	got := map[string]Value{}
	for _, f := range Evaluate(r, keys) {
		got[f.Name] = f.Value
	}
	want := map[string]Value{
		"hit":          {V: 50, OK: true, Runs: 3},
		"hit_ratio":    {V: 2.2, OK: true, Runs: 3},
		"traced_ratio": {V: 0.725, OK: true, Runs: 2}, // median of 0.95 and 0.5
		"lost":         {V: 7, OK: true, Runs: 2},
		"miss":         {Note: "skipped: no reason given"},
		"inserts":      {Note: "BenchmarkBlockBatch/exact-v4 reported no entries/s"},
		"engine":       {Note: "BenchmarkProcess failed: boom"},
		"rss":          {Note: "BenchmarkAgentRSS100kKeys skipped: kernel test skipped: not root"},
		"graph":        {Note: "package graph failed: panic: nil map"},
		"lru":          {Note: "package internal/lru did not run"},
		"absent":       {Note: "did not run (not in the output)"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("values (-want +got):\n%s", diff)
	}
}

func TestEvaluatePartialFailure(t *testing.T) {
	in := stream(t,
		"test||BenchmarkAgentStartup-2 \t 5\t 1 ns/op\t 150 startup-ms\n",
		"test||    bench_test.go:50: agent exited during start-up\n",
		"test|BenchmarkAgentStartup|!fail",
		"test||BenchmarkAgentStartup-2 \t 5\t 1 ns/op\t 170 startup-ms\n",
	)
	r, err := Parse(strings.NewReader(in), nil)
	if err != nil {
		t.Fatal(err)
	}
	f := Evaluate(r, []Key{medianKey("startup", source{"test", "BenchmarkAgentStartup", "startup-ms"}, &Target{"<", 300})})[0]
	want := Value{V: 160, OK: true, Runs: 2, Note: "from the 2 runs that completed; a run failed: agent exited during start-up"}
	if diff := cmp.Diff(want, f.Value); diff != "" {
		t.Errorf("value (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"test BenchmarkAgentStartup: agent exited during start-up"}, Failures(r)); diff != "" {
		t.Errorf("failures (-want +got):\n%s", diff)
	}
}

func TestWriteJSONAndTable(t *testing.T) {
	figs := []Figure{
		{Key{Name: "a_ns", From: "A ns/op, median"}, Value{V: 21.123456, OK: true, Runs: 5}},
		{Key{Name: "ratio", From: "r", Target: &Target{"<=", 2.5}}, Value{V: 2.6, OK: true, Runs: 5}},
		{Key{Name: "rate", From: "r", Target: &Target{">=", 4e6}}, Value{V: 4.5e6, OK: true, Runs: 5}},
		{Key{Name: "lost", From: "l", Target: &Target{"==", 0}}, Value{V: 0, OK: true, Runs: 5}},
		{Key{Name: "rss_mb", From: "m", Target: &Target{"<", 40}}, Value{Note: "skipped: not root"}},
	}
	var j bytes.Buffer
	if err := WriteJSON(&j, figs); err != nil {
		t.Fatal(err)
	}
	wantJSON := `{
  "a_ns": 21.1235,
  "ratio": 2.6,
  "rate": 4500000,
  "lost": 0,
  "rss_mb": null
}
`
	if diff := cmp.Diff(wantJSON, j.String()); diff != "" {
		t.Errorf("bench.json (-want +got):\n%s", diff)
	}
	var decoded map[string]*float64
	if err := json.Unmarshal(j.Bytes(), &decoded); err != nil {
		t.Fatalf("bench.json is not JSON: %v", err)
	}

	var tb bytes.Buffer
	missed, absent := WriteTable(&tb, figs)
	if missed != 1 || absent != 1 {
		t.Errorf("WriteTable = %d missed, %d absent; want 1, 1", missed, absent)
	}
	rows := map[string][]string{}
	for _, l := range strings.Split(tb.String(), "\n") {
		if f := strings.Fields(l); len(f) > 0 {
			rows[f[0]] = f
		}
	}
	for key, want := range map[string][]string{
		"a_ns":   {"a_ns", "21.12", "-", "5"},
		"ratio":  {"ratio", "2.60", "≤", "2.5", "FAIL", "5"},
		"rate":   {"rate", "4500000", "≥", "4000000", "pass", "5"},
		"lost":   {"lost", "0", "=", "0", "pass", "5"},
		"rss_mb": {"rss_mb", "-", "<", "40", "NO", "DATA", "0"},
	} {
		if got := rows[key]; len(got) < len(want) || !cmp.Equal(want, got[:len(want)]) {
			t.Errorf("row %s = %q, want it to start with %q", key, got, want)
		}
	}
	if !strings.Contains(tb.String(), "rss_mb: skipped: not root") {
		t.Errorf("table lacks the reason for rss_mb:\n%s", tb.String())
	}
}

func TestRun(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "bench.jsonl")
	ok := stream(t, "detector||BenchmarkProcess/steady-2 \t 100\t 250 ns/op\t 4100000 events/s\t 0 allocs/op\n", "detector||!pass")
	if err := os.WriteFile(in, []byte(ok), 0o644); err != nil {
		t.Fatal(err)
	}
	out, raw := filepath.Join(dir, "bench.json"), filepath.Join(dir, "raw.jsonl")
	var stdout, stderr bytes.Buffer
	if code := run([]string{"-o", out, "-raw", raw, in}, nil, &stdout, &stderr); code != 0 {
		t.Fatalf("run = %d; stderr:\n%s", code, stderr.String())
	}
	var got map[string]*float64
	b, _ := os.ReadFile(out)
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatalf("%s: %v", out, err)
	}
	if len(got) != len(Keys) {
		t.Errorf("bench.json has %d keys, want %d", len(got), len(Keys))
	}
	if v := got["engine_events_per_sec"]; v == nil || *v != 4100000 {
		t.Errorf("engine_events_per_sec = %v, want 4100000", v)
	}
	if v, present := got["startup_ms"]; !present || v != nil {
		t.Errorf("startup_ms = %v (present %v), want null", v, present)
	}
	if r, _ := os.ReadFile(raw); string(r) != ok {
		t.Errorf("raw copy differs from the input")
	}

	// A failed benchmark makes the exit status 1, after the output is written.
	failed := stream(t, "bpf||    x_test.go:1: broke\n", "bpf|BenchmarkXDP|!fail")
	stdout.Reset()
	if code := run([]string{"-o", ""}, strings.NewReader(failed), &stdout, &stderr); code != 1 {
		t.Errorf("run with a failed benchmark = %d, want 1", code)
	}
	if !strings.Contains(stdout.String(), "bpf BenchmarkXDP: broke") {
		t.Errorf("output does not name the failure:\n%s", stdout.String())
	}
	if code := run([]string{"-nope"}, nil, &stdout, &stderr); code != 2 {
		t.Errorf("run with a bad flag = %d, want 2", code)
	}
}

// Every key of issue #5 is in Keys, in bench.json's order.
func TestKeysCoverIssue(t *testing.T) {
	want := []string{
		"xdp_empty_ns", "xdp_hit_ns", "xdp_miss_ns", "xdp_cidr_ns",
		"connect_rate_untraced", "connect_rate_traced", "events_lost",
		"engine_events_per_sec", "engine_allocs_per_event",
		"detect_to_block_p50_ms", "detect_to_block_p99_ms",
		"block_inserts_per_sec", "agent_rss_mb_100k_keys", "startup_ms",
	}
	have := map[string]bool{}
	for _, k := range Keys {
		if have[k.Name] {
			t.Errorf("key %s twice", k.Name)
		}
		have[k.Name] = true
	}
	for _, k := range want {
		if !have[k] {
			t.Errorf("key %s missing", k)
		}
	}
}
