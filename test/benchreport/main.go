// Command benchreport turns the `go test -json` output of connwarden's
// benchmarks into bench.json, the figures issue #5 names (medians of the
// runs, or the maximum for counts whose goal is zero), and prints them as a
// table against their targets. `make bench` runs it; it is no part of the
// agent.
//
//	go test -json -run '^$' -bench . -count 5 ./... | benchreport -o bench.json
//
// A figure whose benchmark did not run, skipped or failed in every run is
// null in bench.json, and the table says why. benchreport exits 1 when a
// benchmark or package failed (after writing its output), 2 on bad usage;
// missed targets are reported, not an error.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("benchreport", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("o", "bench.json", `where to write the figures ("" for nowhere)`)
	raw := fs.String("raw", "", "also copy the input stream to this file")
	progress := fs.Bool("progress", false, "echo the benchmarks' output to stderr as it arrives")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: benchreport [-o bench.json] [-raw FILE] [-progress] [go-test-json-file ...]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}

	var in io.Reader = stdin
	if fs.NArg() > 0 {
		var readers []io.Reader
		for _, name := range fs.Args() {
			if name == "-" {
				readers = append(readers, stdin)
				continue
			}
			f, err := os.Open(name)
			if err != nil {
				fmt.Fprintln(stderr, "benchreport:", err)
				return 2
			}
			defer f.Close()
			readers = append(readers, f)
		}
		in = io.MultiReader(readers...)
	}
	if *raw != "" {
		f, err := os.Create(*raw)
		if err != nil {
			fmt.Fprintln(stderr, "benchreport:", err)
			return 2
		}
		defer f.Close()
		in = io.TeeReader(in, f)
	}
	var echo io.Writer
	if *progress {
		echo = stderr
	}

	res, err := Parse(in, echo)
	if err != nil {
		fmt.Fprintln(stderr, "benchreport: read:", err)
		return 1
	}
	figs := Evaluate(res, Keys)
	if *out != "" {
		var b bytes.Buffer
		if err := WriteJSON(&b, figs); err == nil {
			err = os.WriteFile(*out, b.Bytes(), 0o644)
		}
		if err != nil {
			fmt.Fprintln(stderr, "benchreport:", err)
			return 1
		}
	}
	fmt.Fprintln(stdout)
	missed, absent := WriteTable(stdout, figs)
	fmt.Fprintf(stdout, "\n%d of %d targets missed; %d figures without data.", missed, countTargets(figs), absent)
	if *out != "" {
		fmt.Fprintf(stdout, " Wrote %s.", *out)
	}
	fmt.Fprintln(stdout)
	if fails := Failures(res); len(fails) > 0 {
		fmt.Fprintln(stdout, "\nFailed:")
		for _, f := range fails {
			fmt.Fprintln(stdout, "  "+f)
		}
		return 1
	}
	return 0
}

func countTargets(figs []Figure) int {
	n := 0
	for _, f := range figs {
		if f.Target != nil {
			n++
		}
	}
	return n
}
