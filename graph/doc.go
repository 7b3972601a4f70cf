// Package graph is the client-server flow graph: processes, local services and
// remote hosts as nodes, connections as edges with counts and first/last seen.
// It answers fan-out, new-edge and pivot questions, stays bounded (edges age
// out, nodes are capped) and exports itself as JSON and Graphviz DOT.
//
// Pure Go: it must not import cilium/ebpf or touch the kernel.
package graph
