// Package detector is the analyzer: connection events in, alerts and block
// decisions out.
//
// An Engine runs a compiled rules.Set. For each event it visits only the
// rules whose filter admits the event's kind, matches the filter, and feeds
// the rule's detection: per-key sliding windows (threshold, distinct), the
// flow-graph detectors of package graph (fanout, new_edge, pivot) or the
// session machines of package statemachine (sequence). Block decisions go
// out through the small Blocker interface this package owns; the kernel side
// implements it.
//
// Time comes only from event timestamps (kernel monotonic ns): windows,
// block expiry, the block rate limit and escalation all run on event time,
// so Replay of a recorded stream reproduces a live run's alerts exactly.
//
// Windows are closed: an event at t sees events in [t-window, t]. A key
// alerts at most once per window. Per-rule state is bounded (LRU eviction at
// settings.max_keys_per_rule, idle keys dropped after their window), kept in
// slot-indexed slices behind a map of fixed-size hashes, so steady state
// allocates nothing per event (TestProcessDoesNotAllocate,
// BenchmarkProcess).
//
// It must not import cilium/ebpf or touch the kernel, and must not allocate
// per event on the hot path.
package detector
