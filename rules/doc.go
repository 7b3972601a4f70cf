// Package rules parses, validates and compiles connwarden's YAML rule files,
// and embeds the default rule pack.
//
// Parsing is strict: unknown fields, bad types, durations without units and
// references to unknown lists or states are errors that name file:line:col, the
// rule and the field, and say what would be valid. All errors are reported at
// once (ErrorList), and a rule set either compiles completely or not at all.
//
// The language is described in README.md next to this file; JSONSchema
// returns a JSON Schema of it. LoadDir, LoadFS and Compile build a Set;
// Default builds the embedded pack, whose fixtures DefaultFixtures returns.
//
// A compiled Filter matches events without allocating; the detections'
// configs for flow-graph rules and state machines are those of packages
// graph and statemachine, validated by them as well as here.
//
// Pure Go: it must not import cilium/ebpf or touch the kernel.
package rules
