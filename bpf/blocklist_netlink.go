package bpf

import (
	"encoding/binary"
	"fmt"
	"syscall"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Values of IFLA_XDP_ATTACHED (include/uapi/linux/if_link.h).
const (
	xdpAttachedDrv   = 1
	xdpAttachedSKB   = 2
	xdpAttachedMulti = 4
)

// xdpModeOf asks rtnetlink, in the calling thread's network namespace, how
// program prog is attached to interface ifname with index ifindex. An XDP
// link does not report its mode, so this is how an adopted link learns it.
// It returns AttachUnknown when the interface is not visible from here
// (another namespace) or does not run prog.
func xdpModeOf(ifname string, ifindex int, prog ebpf.ProgramID) (AttachMode, error) {
	rib, err := syscall.NetlinkRIB(syscall.RTM_GETLINK, syscall.AF_UNSPEC)
	if err != nil {
		return AttachUnknown, fmt.Errorf("dump links: %w", err)
	}
	msgs, err := syscall.ParseNetlinkMessage(rib)
	if err != nil {
		return AttachUnknown, fmt.Errorf("parse link dump: %w", err)
	}
	for i := range msgs {
		m := &msgs[i]
		if m.Header.Type != syscall.RTM_NEWLINK || len(m.Data) < unix.SizeofIfInfomsg {
			continue
		}
		if int(int32(binary.NativeEndian.Uint32(m.Data[4:8]))) != ifindex {
			continue
		}
		attrs, err := syscall.ParseNetlinkRouteAttr(m)
		if err != nil {
			return AttachUnknown, fmt.Errorf("parse link %d: %w", ifindex, err)
		}
		var (
			name     string
			xdpAttrs []byte
		)
		for _, a := range attrs {
			switch a.Attr.Type &^ unix.NLA_F_NESTED {
			case unix.IFLA_IFNAME:
				name = string(trimNUL(a.Value))
			case unix.IFLA_XDP:
				xdpAttrs = a.Value
			}
		}
		if name != ifname {
			return AttachUnknown, nil
		}
		return xdpModeFromAttrs(xdpAttrs, prog), nil
	}
	return AttachUnknown, nil
}

// xdpModeFromAttrs decodes the attributes nested in IFLA_XDP.
func xdpModeFromAttrs(b []byte, prog ebpf.ProgramID) AttachMode {
	var (
		attached     byte
		drvID, skbID uint32
		haveAttached bool
	)
	for len(b) >= unix.SizeofRtAttr {
		l := int(binary.NativeEndian.Uint16(b[0:2]))
		typ := binary.NativeEndian.Uint16(b[2:4]) &^ unix.NLA_F_NESTED
		if l < unix.SizeofRtAttr || l > len(b) {
			break
		}
		v := b[unix.SizeofRtAttr:l]
		switch {
		case typ == unix.IFLA_XDP_ATTACHED && len(v) >= 1:
			attached, haveAttached = v[0], true
		case typ == unix.IFLA_XDP_DRV_PROG_ID && len(v) >= 4:
			drvID = binary.NativeEndian.Uint32(v)
		case typ == unix.IFLA_XDP_SKB_PROG_ID && len(v) >= 4:
			skbID = binary.NativeEndian.Uint32(v)
		}
		b = b[min((l+unix.NLA_ALIGNTO-1)&^(unix.NLA_ALIGNTO-1), len(b)):]
	}
	if !haveAttached {
		return AttachUnknown
	}
	switch attached {
	case xdpAttachedDrv:
		return AttachNative
	case xdpAttachedSKB:
		return AttachGeneric
	case xdpAttachedMulti:
		switch uint32(prog) {
		case drvID:
			return AttachNative
		case skbID:
			return AttachGeneric
		}
	}
	return AttachUnknown
}

func trimNUL(b []byte) []byte {
	for i, c := range b {
		if c == 0 {
			return b[:i]
		}
	}
	return b
}
