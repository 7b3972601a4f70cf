package main

import (
	"bufio"
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
)

// Run is one benchmark result line: b.N and the reported figures by unit
// ("ns/op", "allocs/op", "connects/s", ...).
type Run struct {
	N       int64
	Metrics map[string]float64
}

// Bench is everything the stream said about one benchmark.
type Bench struct {
	Package string
	Name    string // full name without the -GOMAXPROCS suffix: BenchmarkXDP/empty
	Runs    []Run
	Skipped string // the skip message, when the benchmark skipped
	Failed  string // the failure messages, when it failed (in any run)
}

// Results is a parsed `go test -json` stream of benchmark runs.
type Results struct {
	benches map[benchID]*Bench
	// Failed packages (build errors, panics, timeouts) and why.
	PackageFailed map[string]string
	// Packages that reported at all, ok or not.
	Packages map[string]bool
}

type benchID struct{ pkg, name string }

// Bench returns what is known about benchmark name of the package whose
// import path is pkg, or nil.
func (r *Results) Bench(pkg, name string) *Bench { return r.benches[benchID{pkg, name}] }

func (r *Results) bench(pkg, name string) *Bench {
	id := benchID{pkg, name}
	b := r.benches[id]
	if b == nil {
		b = &Bench{Package: pkg, Name: name}
		r.benches[id] = b
	}
	return b
}

// testEvent is one line of test2json output (go doc test2json).
type testEvent struct {
	Action     string
	Package    string
	Test       string
	Output     string
	ImportPath string // build-output and build-fail events
}

// resultLine matches a benchmark result: name, b.N, then value-unit pairs.
var resultLine = regexp.MustCompile(`^(Benchmark\S+)\s+(\d+)\s+(.*)$`)

// procSuffix is the -GOMAXPROCS suffix go test appends to benchmark names
// when GOMAXPROCS is not 1. A sub-benchmark whose own name ends in -digits
// would lose them when GOMAXPROCS is 1; none of this project's do.
var procSuffix = regexp.MustCompile(`-\d+$`)

// parseResult parses a benchmark result line.
func parseResult(line string) (name string, run Run, ok bool) {
	m := resultLine.FindStringSubmatch(strings.TrimRight(line, "\r\n"))
	if m == nil {
		return "", Run{}, false
	}
	n, err := strconv.ParseInt(m[2], 10, 64)
	if err != nil {
		return "", Run{}, false
	}
	f := strings.Fields(m[3])
	if len(f) == 0 || len(f)%2 != 0 {
		return "", Run{}, false
	}
	run = Run{N: n, Metrics: make(map[string]float64, len(f)/2)}
	for i := 0; i < len(f); i += 2 {
		v, err := strconv.ParseFloat(f[i], 64)
		if err != nil {
			return "", Run{}, false
		}
		run.Metrics[f[i+1]] = v
	}
	return procSuffix.ReplaceAllString(m[1], ""), run, true
}

// Parse reads a `go test -json` stream (several concatenated are fine).
// Lines that are not JSON, such as a go command's own error output, are
// kept as output of an unknown package. echo, when not nil, receives the
// human-readable output as it arrives.
//
// test2json attributes a benchmark's output to it only in its first run;
// later runs' lines come as the package's. So the package's output is read
// as one stream: result lines are attributed by the name they carry, and a
// skip or failure takes the t.Log-style messages printed since the last
// result line.
func Parse(in io.Reader, echo io.Writer) (*Results, error) {
	r := &Results{
		benches:       map[benchID]*Bench{},
		PackageFailed: map[string]string{},
		Packages:      map[string]bool{},
	}
	partial := map[string]string{}   // package -> output not yet ended by a newline
	pkgOut := map[string][]string{}  // package -> its last output lines
	pending := map[string][]string{} // package -> messages since its last result
	line := func(pkg, s string) {
		if name, run, ok := parseResult(s); ok {
			b := r.bench(pkg, name)
			b.Runs = append(b.Runs, run)
			pending[pkg] = nil
		} else if strings.HasPrefix(s, "=== RUN") {
			pending[pkg] = nil
		} else if msg, ok := logMessage(s); ok {
			pending[pkg] = append(pending[pkg], msg)
		}
		if out := append(pkgOut[pkg], s); len(out) > 40 {
			pkgOut[pkg] = out[len(out)-40:]
		} else {
			pkgOut[pkg] = out
		}
		if echo != nil && worthEchoing(s) {
			fmt.Fprintln(echo, s)
		}
	}
	// reason takes the package's pending messages for a skip or failure.
	reason := func(pkg string) string {
		msgs := pending[pkg]
		pending[pkg] = nil
		if len(msgs) > 3 {
			msgs = msgs[len(msgs)-3:]
		}
		s := strings.Join(msgs, "; ")
		if len(s) > 300 {
			s = s[:297] + "..."
		}
		return s
	}
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		raw := sc.Bytes()
		var ev testEvent
		if len(raw) == 0 || raw[0] != '{' || json.Unmarshal(raw, &ev) != nil {
			line("", string(raw))
			continue
		}
		pkg := ev.Package
		if pkg == "" {
			pkg = ev.ImportPath
		}
		if pkg != "" {
			r.Packages[pkg] = true
		}
		test := procSuffix.ReplaceAllString(ev.Test, "")
		switch ev.Action {
		case "output", "build-output":
			// A result line can arrive in pieces (the name, then the
			// figures).
			text := partial[pkg] + ev.Output
			for {
				i := strings.IndexByte(text, '\n')
				if i < 0 {
					break
				}
				line(pkg, text[:i])
				text = text[i+1:]
			}
			partial[pkg] = text
		case "skip":
			if strings.HasPrefix(test, "Benchmark") {
				b := r.bench(pkg, test)
				if msg := reason(pkg); msg != "" || b.Skipped == "" {
					b.Skipped = cmp.Or(msg, "no reason given")
				}
			}
		case "fail", "build-fail":
			switch {
			case strings.HasPrefix(test, "Benchmark"):
				// One failure can be reported twice (with and without
				// the -N suffix): the first takes the messages.
				b := r.bench(pkg, test)
				if msg := reason(pkg); msg != "" || b.Failed == "" {
					b.Failed = cmp.Or(msg, "no message")
				}
			case test == "" && pkg != "":
				if rest := partial[pkg]; rest != "" {
					line(pkg, rest)
					partial[pkg] = ""
				}
				r.PackageFailed[pkg] = packageFailure(pkgOut[pkg])
			}
		}
	}
	for pkg, rest := range partial {
		if rest != "" {
			line(pkg, rest)
		}
	}
	return r, sc.Err()
}

// logMessage returns the text of a t.Log-style line ("    file.go:12:
// text"). Lines that introduce a block of continuation lines ("agent log:")
// say nothing on their own and are left out, as are the continuations.
func logMessage(s string) (string, bool) {
	t := strings.TrimSpace(s)
	file, rest, ok := strings.Cut(t, ".go:")
	if !ok || strings.ContainsAny(file, " \t") {
		return "", false
	}
	num, text, ok := strings.Cut(rest, ": ")
	if !ok || num == "" || strings.Trim(num, "0123456789") != "" {
		return "", false
	}
	if text == "" || strings.HasSuffix(text, ":") {
		return "", false
	}
	return text, true
}

// worthEchoing leaves out the -v framing that go test -json adds: run
// markers and the bare benchmark name printed before each run.
func worthEchoing(s string) bool {
	t := strings.TrimSpace(s)
	switch {
	case t == "":
		return false
	case strings.HasPrefix(t, "=== "):
		return false
	case strings.HasPrefix(t, "Benchmark") && !strings.ContainsAny(t, " \t"):
		return false
	}
	return true
}

// packageFailure says why a package failed from its last output lines: the
// first line that looks like a cause (panic, timeout, build error), else
// the last lines.
func packageFailure(out []string) string {
	for _, l := range out {
		t := strings.TrimSpace(l)
		for _, cause := range []string{"panic:", "build failed", "cannot find", "undefined:", "[setup failed]", "test timed out"} {
			if strings.Contains(t, cause) {
				return t
			}
		}
	}
	var tail []string
	for _, l := range out {
		if t := strings.TrimSpace(l); t != "" && t != "FAIL" && !strings.HasPrefix(t, "FAIL\t") && !strings.HasPrefix(t, "exit status") {
			tail = append(tail, t)
		}
	}
	if len(tail) > 3 {
		tail = tail[len(tail)-3:]
	}
	if len(tail) == 0 {
		return "failed without output"
	}
	return strings.Join(tail, "; ")
}
