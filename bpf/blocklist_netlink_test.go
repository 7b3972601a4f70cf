package bpf

import (
	"encoding/binary"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// rtattr encodes one netlink attribute, padded to 4 bytes.
func rtattr(typ uint16, v []byte) []byte {
	b := make([]byte, unix.SizeofRtAttr, unix.SizeofRtAttr+len(v)+3)
	binary.NativeEndian.PutUint16(b[0:2], uint16(unix.SizeofRtAttr+len(v)))
	binary.NativeEndian.PutUint16(b[2:4], typ)
	b = append(b, v...)
	for len(b)%unix.NLA_ALIGNTO != 0 {
		b = append(b, 0)
	}
	return b
}

func u32(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }

func TestXDPModeFromAttrs(t *testing.T) {
	const prog = ebpf.ProgramID(42)
	cat := func(parts ...[]byte) []byte {
		var b []byte
		for _, p := range parts {
			b = append(b, p...)
		}
		return b
	}
	for _, tc := range []struct {
		name  string
		attrs []byte
		want  AttachMode
	}{
		{"none", nil, AttachUnknown},
		{"not attached", rtattr(unix.IFLA_XDP_ATTACHED, []byte{0}), AttachUnknown},
		{"driver", cat(rtattr(unix.IFLA_XDP_ATTACHED, []byte{xdpAttachedDrv}), rtattr(unix.IFLA_XDP_DRV_PROG_ID, u32(42))), AttachNative},
		{"skb", rtattr(unix.IFLA_XDP_ATTACHED, []byte{xdpAttachedSKB}), AttachGeneric},
		{"multi, ours in skb", cat(
			rtattr(unix.IFLA_XDP_ATTACHED, []byte{xdpAttachedMulti}),
			rtattr(unix.IFLA_XDP_DRV_PROG_ID, u32(7)),
			rtattr(unix.IFLA_XDP_SKB_PROG_ID, u32(42)),
		), AttachGeneric},
		{"multi, not ours", cat(
			rtattr(unix.IFLA_XDP_ATTACHED, []byte{xdpAttachedMulti}),
			rtattr(unix.IFLA_XDP_DRV_PROG_ID, u32(7)),
			rtattr(unix.IFLA_XDP_SKB_PROG_ID, u32(8)),
		), AttachUnknown},
		{"truncated attribute", rtattr(unix.IFLA_XDP_ATTACHED, []byte{xdpAttachedDrv})[:3], AttachUnknown},
		{"length past the end", []byte{0xff, 0, 2, 0, 1}, AttachUnknown},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := xdpModeFromAttrs(tc.attrs, prog); got != tc.want {
				t.Errorf("mode %s, want %s", got, tc.want)
			}
		})
	}
}
