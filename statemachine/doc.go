// Package statemachine runs per-session state machines declared by rules:
// states, transitions on matching events, timeouts that return a session to a
// state, and violations. It validates a machine before it runs (no unreachable
// states, no transitions to undeclared states).
//
// The package does not know the rule language: the caller compiles each
// transition's and forbidden condition's filter into a Matcher, attached to
// the Spec by index. Sessions are keyed by any comparable type (a TGID, a
// UID, a netip.Addr), bounded in number (least recently stepped evicted) and
// expire when idle. Time comes only from event timestamps; timeouts are
// applied lazily when a session's next event arrives.
//
// A Machine is not safe for concurrent use; Step does not allocate in steady
// state and never iterates a map.
//
// Pure Go: it must not import cilium/ebpf or touch the kernel.
package statemachine
