// Package bpf is the only package of connwarden that talks to the kernel.
//
// It owns the BPF C programs (*.bpf.c, compiled by bpf2go; the generated
// objects and bindings are committed), the connection tracer that turns ring
// buffer records into event.Event values (decoding kernel bytes happens here and
// nowhere else), and the shared, pinned XDP blocklist with its counters.
//
// It must not make detection decisions: it reports what the kernel saw and
// carries out blocks that package detector decides.
package bpf
