package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/connwarden/connwarden/detector/event"
)

// Layout of struct event in connect.bpf.c, in bytes. TestEventLayout holds
// these against the Go declaration bpf2go generates from the object's BTF.
const (
	eventSize      = 96
	offTimestamp   = 0
	offCgroup      = 8
	offPID         = 16
	offTGID        = 20
	offUID         = 24
	offResult      = 28
	offLocalAddr   = 32
	offRemoteAddr  = 48
	offLocalPort   = 64
	offRemotePort  = 66
	offFamily      = 68
	offKind        = 70
	offDirection   = 71
	offState       = 72
	offPeers       = 73
	offLifetime    = 76
	offComm        = 80
	addrFieldBytes = 16

	// struct auth_event: struct event, then the PAM handle's strings.
	authEventSize = 160
	offService    = 96
	offUser       = 128
)

// Address families as the kernel numbers them.
const (
	afInet  = 2
	afInet6 = 10
)

// ErrMalformedRecord is wrapped by every decoding error: the record is not
// one that connect.bpf.c writes. Read returns it for such a record; the next
// Read goes on with the next one.
var ErrMalformedRecord = errors.New("malformed event record")

// decodeEvent fills ev from one ring buffer record written by connect.bpf.c.
// It is the only place kernel bytes become an event.Event, and it does not
// allocate unless the record is malformed.
//
// Kernel kinds and directions map to event.Kind and event.Direction; Result is
// copied as the kernel's 0 or negative errno; IPv4 addresses become 4-byte
// Addrs and v4-mapped IPv6 addresses are unmapped. A local address and port
// that are both zero mean the kernel did not know them yet (KindConnect), and
// decode to the zero netip.AddrPort.
func decodeEvent(raw []byte, ev *event.Event) error {
	if len(raw) < eventSize {
		return fmt.Errorf("decode event: %d bytes, want %d: %w", len(raw), eventSize, ErrMalformedRecord)
	}
	ne := binary.NativeEndian

	kind, ok := eventKind(connectKind(raw[offKind]))
	if !ok {
		return fmt.Errorf("decode event: kind %d: %w", raw[offKind], ErrMalformedRecord)
	}
	size := eventSize
	if kind.IsAuth() {
		size = authEventSize
		if len(raw) < size {
			return fmt.Errorf("decode event: %s record of %d bytes, want %d: %w", kind, len(raw), size, ErrMalformedRecord)
		}
	}
	raw = raw[:size]
	dir, ok := eventDirection(connectDirection(raw[offDirection]))
	family := ne.Uint16(raw[offFamily:])
	// An authentication whose peer is unknown has neither direction nor
	// addresses; every other record has both.
	noPeer := kind.IsAuth() && raw[offDirection] == 0 && family == 0
	if !ok && !noPeer {
		return fmt.Errorf("decode event: direction %d: %w", raw[offDirection], ErrMalformedRecord)
	}
	if family != afInet && family != afInet6 && !noPeer {
		return fmt.Errorf("decode event: address family %d: %w", family, ErrMalformedRecord)
	}

	ev.Timestamp = ne.Uint64(raw[offTimestamp:])
	ev.Cgroup = ne.Uint64(raw[offCgroup:])
	ev.PID = ne.Uint32(raw[offPID:])
	ev.TGID = ne.Uint32(raw[offTGID:])
	ev.UID = ne.Uint32(raw[offUID:])
	ev.Result = int32(ne.Uint32(raw[offResult:]))
	ev.Kind = kind
	ev.Direction = dir
	ev.State = raw[offState]
	ev.Peers = raw[offPeers]
	ev.LifetimeMS = ne.Uint32(raw[offLifetime:])
	copy(ev.Comm[:], raw[offComm:offComm+event.CommLen])
	if noPeer {
		ev.Local, ev.Remote = netip.AddrPort{}, netip.AddrPort{}
	} else {
		ev.Local = recordAddrPort(family, raw[offLocalAddr:offLocalAddr+addrFieldBytes], ne.Uint16(raw[offLocalPort:]))
		ev.Remote = recordAddrPort(family, raw[offRemoteAddr:offRemoteAddr+addrFieldBytes], ne.Uint16(raw[offRemotePort:]))
	}
	if size == authEventSize {
		copyCStr(ev.Service[:], raw[offService:offService+event.AuthStrLen])
		copyCStr(ev.User[:], raw[offUser:offUser+event.AuthStrLen])
	} else {
		ev.Service, ev.User = [event.AuthStrLen]byte{}, [event.AuthStrLen]byte{}
	}
	return nil
}

// copyCStr copies a NUL-terminated kernel string, keeping it only if it is
// printable ASCII: the kernel reads the PAM handle at fixed offsets, and a
// libpam with another layout must yield an empty name, never garbage.
func copyCStr(dst, src []byte) {
	clear(dst)
	n := 0
	for n < len(src) && src[n] != 0 {
		if src[n] < 0x20 || src[n] > 0x7e {
			return
		}
		n++
	}
	if n == len(src) {
		n-- // keep the NUL
	}
	copy(dst, src[:n])
}

func recordAddrPort(family uint16, b []byte, port uint16) netip.AddrPort {
	var addr netip.Addr
	if family == afInet {
		addr = netip.AddrFrom4([4]byte(b[:4]))
	} else {
		addr = netip.AddrFrom16([16]byte(b[:16])).Unmap()
	}
	if port == 0 && addr.IsUnspecified() {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(addr, port)
}

func eventKind(k connectKind) (event.Kind, bool) {
	switch k {
	case connectKindKIND_CONNECT:
		return event.KindConnect, true
	case connectKindKIND_TCP_ATTEMPT:
		return event.KindTCPAttempt, true
	case connectKindKIND_TCP_ESTABLISHED:
		return event.KindTCPEstablished, true
	case connectKindKIND_TCP_CLOSE:
		return event.KindTCPClose, true
	case connectKindKIND_INBOUND_ACCEPT:
		return event.KindInboundAccept, true
	case connectKindKIND_RESET_SENT:
		return event.KindResetSent, true
	case connectKindKIND_INBOUND_SHORT:
		return event.KindInboundShort, true
	case connectKindKIND_AUTH:
		return event.KindAuth, true
	case connectKindKIND_AUTH_ACCOUNT:
		return event.KindAuthAccount, true
	}
	return event.KindUnknown, false
}

func eventDirection(d connectDirection) (event.Direction, bool) {
	switch d {
	case connectDirectionDIR_OUTBOUND:
		return event.DirOutbound, true
	case connectDirectionDIR_INBOUND:
		return event.DirInbound, true
	}
	return event.DirUnknown, false
}
