// Package detector is the analyzer: connection events in, alerts and block
// decisions out.
//
// It keeps per-key state for compiled rules (package rules), feeds the flow
// graph (package graph) and session state machines (package statemachine), and
// emits decisions through the small Blocker interface it owns; the kernel side
// implements that interface. Time comes only from event timestamps, so replaying
// a recorded stream reproduces the live run's alerts exactly.
//
// It must not import cilium/ebpf or touch the kernel, and must not allocate per
// event on the hot path.
package detector
