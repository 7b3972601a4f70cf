package rules

import (
	"embed"
	"io/fs"
)

// defaultFS holds the default rule pack and its fixtures: for each rule,
// fixtures/<rule>.jsonl (events) and fixtures/<rule>.want (the alerts the
// whole pack must raise on them).
//
//go:embed default/*.yaml default/fixtures
var defaultFS embed.FS

// Default compiles the embedded default rule pack.
func Default() (*Set, error) {
	return LoadFS(defaultFS, "default", "rules/default")
}

// DefaultFixtures returns the default pack's fixtures directory.
func DefaultFixtures() fs.FS {
	sub, err := fs.Sub(defaultFS, "default/fixtures")
	if err != nil {
		panic(err) // the embedded path is fixed at build time
	}
	return sub
}
