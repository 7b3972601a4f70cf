// Package statemachine runs per-session state machines declared by rules:
// states, transitions on matching events, timeouts that return a session to a
// state, and violations. It validates a machine before it runs (no unreachable
// states, no transitions to undeclared states).
//
// Pure Go: it must not import cilium/ebpf or touch the kernel.
package statemachine
