package graph

import (
	"bytes"
	"fmt"
	"net/netip"
	"strings"

	"github.com/connwarden/connwarden/detector/event"
	"github.com/connwarden/connwarden/internal/fielderr"
)

// FieldError is one config validation problem: Path is the field with
// indexes only ("services[1].port"), Msg what is wrong and what would be
// valid. Validate methods return every problem joined with errors.Join.
type FieldError = fielderr.Error

// NodeKind says what a node stands for.
type NodeKind uint8

const (
	NodeUnknown NodeKind = iota
	// NodeProcess is a local program, identified by its command name (all
	// processes with one comm share a node).
	NodeProcess
	// NodeService is a local address:port that accepted inbound connections
	// (or answered one with a reset).
	NodeService
	// NodeHost is a remote address.
	NodeHost
)

var nodeKindNames = [...]string{"unknown", "process", "service", "host"}

func (k NodeKind) String() string {
	if int(k) < len(nodeKindNames) {
		return nodeKindNames[k]
	}
	return "unknown"
}

// MarshalText encodes the kind by name.
func (k NodeKind) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// UnmarshalText is the inverse of MarshalText.
func (k *NodeKind) UnmarshalText(b []byte) error {
	for i, n := range nodeKindNames {
		if n == string(b) && i != 0 {
			*k = NodeKind(i)
			return nil
		}
	}
	return fmt.Errorf("unknown node kind %q; valid: process, service, host", b)
}

// NodeKey identifies a node. It is comparable and holds no pointers to
// per-event data, so it is used directly as a map key. Build it with
// ProcessNode, ServiceNode or HostNode; fields not used by the kind are zero.
//
// A process is its comm today. When the tracer reports the executable, an
// interned exe identifier can join the key for NodeProcess without changing
// the constructors or the other kinds.
type NodeKey struct {
	Kind NodeKind
	Comm [event.CommLen]byte // NodeProcess: NUL padded command name
	Addr netip.Addr          // NodeService: local address; NodeHost: remote address
	Port uint16              // NodeService: local port
}

// ProcessNode is the node of the program named comm (truncated to
// event.CommLen-1 bytes as the kernel does).
func ProcessNode(comm string) NodeKey {
	k := NodeKey{Kind: NodeProcess}
	copy(k.Comm[:event.CommLen-1], comm)
	return k
}

// ServiceNode is the node of a local service.
func ServiceNode(local netip.AddrPort) NodeKey {
	return NodeKey{Kind: NodeService, Addr: local.Addr(), Port: local.Port()}
}

// HostNode is the node of a remote host.
func HostNode(addr netip.Addr) NodeKey { return NodeKey{Kind: NodeHost, Addr: addr} }

// CommBytes is the command name up to its first NUL, without allocating.
func (k *NodeKey) CommBytes() []byte {
	if i := bytes.IndexByte(k.Comm[:], 0); i >= 0 {
		return k.Comm[:i]
	}
	return k.Comm[:]
}

// Name is the node's name without its kind: the comm (bytes outside
// printable ASCII written as \xNN), the service's addr:port, or the host's
// address. It allocates.
func (k NodeKey) Name() string {
	switch k.Kind {
	case NodeProcess:
		return printable(k.CommBytes())
	case NodeService:
		return netip.AddrPortFrom(k.Addr, k.Port).String()
	case NodeHost:
		return k.Addr.String()
	}
	return ""
}

// String is "kind:name", for logs.
func (k NodeKey) String() string { return k.Kind.String() + ":" + k.Name() }

// printable renders b with every byte outside printable ASCII, and the
// backslash itself, as \xNN, so a hostile comm cannot forge output structure
// in logs, labels or JSON.
func printable(b []byte) string {
	var sb strings.Builder
	for _, c := range b {
		if c < 0x20 || c >= 0x7f || c == '\\' {
			fmt.Fprintf(&sb, `\x%02x`, c)
			continue
		}
		sb.WriteByte(c)
	}
	return sb.String()
}

// compareKeys orders keys by kind, then comm, address and port.
func compareKeys(a, b NodeKey) int {
	if a.Kind != b.Kind {
		return int(a.Kind) - int(b.Kind)
	}
	if c := bytes.Compare(a.Comm[:], b.Comm[:]); c != 0 {
		return c
	}
	if c := a.Addr.Compare(b.Addr); c != 0 {
		return c
	}
	return int(a.Port) - int(b.Port)
}
