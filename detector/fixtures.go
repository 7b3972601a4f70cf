package detector

import (
	"bufio"
	"bytes"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strings"

	"github.com/connwarden/connwarden/rules"
)

// FixtureResult is the outcome of one fixture: the alert summaries it
// wanted and those the engine raised.
type FixtureResult struct {
	Name string
	Want []string
	Got  []string
}

// Pass reports whether the engine raised exactly the wanted alerts, in order.
func (r FixtureResult) Pass() bool { return slices.Equal(r.Want, r.Got) }

// RunFixtures replays every NAME.jsonl in the root of fsys through a fresh
// engine for set (no extra allowlist, not dry-run) and compares the alerts'
// summaries (see Alert.Summary) with NAME.want. It returns an error only
// when a fixture cannot be read; a mismatch is a result that does not Pass.
// This backs `connwarden rules test` and the default pack's own test.
func RunFixtures(set *rules.Set, fsys fs.FS) ([]FixtureResult, error) {
	names, err := fs.Glob(fsys, "*.jsonl")
	if err != nil {
		return nil, err
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("fixtures: no *.jsonl files")
	}
	slices.Sort(names)
	var out []FixtureResult
	for _, n := range names {
		base := strings.TrimSuffix(n, ".jsonl")
		want, err := fs.ReadFile(fsys, base+".want")
		if err != nil {
			return nil, fmt.Errorf("fixtures: %s needs %s.want: %w", n, base, err)
		}
		res := FixtureResult{Name: base, Want: wantLines(want)}
		var got []string
		e, err := New(set, Options{OnAlert: func(a *Alert) { got = append(got, a.Summary()) }})
		if err != nil {
			return nil, err
		}
		f, err := fsys.Open(n)
		if err != nil {
			return nil, err
		}
		err = eachEvent(f, e.Process)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("fixtures: %s: %w", path.Base(n), err)
		}
		res.Got = got
		out = append(out, res)
	}
	return out, nil
}

func wantLines(b []byte) []string {
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if l == "" || l[0] == '#' {
			continue
		}
		out = append(out, l)
	}
	return out
}
