// Package graph is the client-server flow graph: processes, local services and
// remote hosts as nodes, connections as edges with counts and first/last seen.
// It answers fan-out, new-edge and pivot questions, stays bounded (edges age
// out, nodes are capped) and exports itself as JSON and Graphviz DOT.
//
// Graph records the flows; FanOut, NewEdge and Pivot are rule detectors, each
// built from a config struct (validated, errors as FieldError with a field
// path) and fed the same events. Each keeps its own bounded state rather than
// reading the Graph, so a rule's memory and eviction do not depend on another
// rule's or the graph's caps.
//
// Everything runs on event time (event.Event.Timestamp, kernel monotonic ns);
// nothing reads the wall clock, so a replay gives identical results. Windows
// are inclusive: something seen exactly T ago is within T, T+1ns ago is not.
//
// Nothing here is safe for concurrent use: the detector serialises access.
// Observe does not allocate in steady state and never iterates a map; bounded
// tables are least-recently-used (internal/lru). gods containers appear only
// off the hot path (the ordered node walk of Snapshot), wrapped in typed
// helpers.
//
// Pure Go: it must not import cilium/ebpf or touch the kernel.
package graph
