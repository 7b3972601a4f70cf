// Package rules parses, validates and compiles connwarden's YAML rule files,
// and embeds the default rule pack.
//
// Parsing is strict: unknown fields, bad types, durations without units and
// references to unknown lists or states are errors that name file:line:col, the
// rule and the field, and say what would be valid. All errors are reported at
// once, and a rule set either compiles completely or not at all.
//
// Pure Go: it must not import cilium/ebpf or touch the kernel.
package rules
