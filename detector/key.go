package detector

import (
	"encoding/binary"
	"net/netip"
	"strconv"
	"strings"

	"github.com/connwarden/connwarden/detector/event"
	"github.com/connwarden/connwarden/rules"
)

// groupKey is a rule's grouping key: the event fields named by the rule's
// "by", the others left zero. It is a fixed-size comparable value with no
// pointers, so it hashes without allocating and costs the GC nothing to
// scan. Addresses are held as 16 bytes (IPv4 as v4-mapped; the event decoder
// unmaps v4-mapped IPv6, so the forms cannot collide).
type groupKey struct {
	addr   [16]byte
	comm   [event.CommLen]byte
	cgroup uint64
	pid    uint32
	tgid   uint32
	uid    uint32
	rport  uint16
	lport  uint16
}

// hash mixes the fields that by uses into 64 bits: a few seeded
// multiply-xorshift rounds instead of the runtime's hash of all 64 bytes.
func (k *groupKey) hash(by rules.KeyFields, seed uint64) uint64 {
	h, _ := k.hash2(by, seed, seed)
	return h
}

// hash2 computes two independent hashes (different seeds) in one pass, so
// the key's fields are loaded once.
func (k *groupKey) hash2(by rules.KeyFields, s1, s2 uint64) (uint64, uint64) {
	w := uint64(k.pid) ^ uint64(k.tgid)<<32
	h1, h2 := mix(s1^w), mix(s2^w)
	if by&(rules.KeyRemoteIP|rules.KeyRemoteNet) != 0 {
		a, b := binary.LittleEndian.Uint64(k.addr[:8]), binary.LittleEndian.Uint64(k.addr[8:])
		h1, h2 = mix(mix(h1^a)^b), mix(mix(h2^a)^b)
	}
	if by&rules.KeyComm != 0 {
		a, b := binary.LittleEndian.Uint64(k.comm[:8]), binary.LittleEndian.Uint64(k.comm[8:])
		h1, h2 = mix(mix(h1^a)^b), mix(mix(h2^a)^b)
	}
	if by&rules.KeyCgroup != 0 {
		h1, h2 = mix(h1^k.cgroup), mix(h2^k.cgroup)
	}
	if by&(rules.KeyUID|rules.KeyRemotePort|rules.KeyLocalPort) != 0 {
		w := uint64(k.uid) ^ uint64(k.rport)<<32 ^ uint64(k.lport)<<48
		h1, h2 = mix(h1^w), mix(h2^w)
	}
	return h1, h2
}

// mix is a 64-bit finaliser (the murmur3 fmix64 constants).
func mix(x uint64) uint64 {
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	x *= 0xc4ceb9fe1a85ec53
	x ^= x >> 33
	return x
}

func makeKey(by rules.KeyFields, ev *event.Event) groupKey {
	var k groupKey
	if by == 0 {
		return k
	}
	if by&rules.KeyPID != 0 {
		k.pid = ev.PID
	}
	if by&rules.KeyTGID != 0 {
		k.tgid = ev.TGID
	}
	if by&rules.KeyComm != 0 {
		k.comm = ev.Comm
	}
	if by&rules.KeyUID != 0 {
		k.uid = ev.UID
	}
	if by&rules.KeyCgroup != 0 {
		k.cgroup = ev.Cgroup
	}
	if by&(rules.KeyRemoteIP|rules.KeyRemoteNet) != 0 {
		a := ev.Remote.Addr()
		k.addr = a.As16()
		if a.Is4() {
			if by&rules.KeyRemoteNet24 != 0 {
				k.addr[15] = 0
			}
		} else if by&rules.KeyRemoteNet64 != 0 {
			clear(k.addr[8:])
		}
	}
	if by&rules.KeyRemotePort != 0 {
		k.rport = ev.Remote.Port()
	}
	if by&rules.KeyLocalPort != 0 {
		k.lport = ev.Local.Port()
	}
	return k
}

// renderKey formats the key of ev under by as "field=value ..." in the
// rule's canonical field order. It allocates; it runs only when a rule fires.
func renderKey(by rules.KeyFields, ev *event.Event) string {
	if by == 0 {
		return "host"
	}
	var parts []string
	add := func(name, v string) { parts = append(parts, name+"="+v) }
	if by&rules.KeyPID != 0 {
		add("pid", strconv.FormatUint(uint64(ev.PID), 10))
	}
	if by&rules.KeyTGID != 0 {
		add("tgid", strconv.FormatUint(uint64(ev.TGID), 10))
	}
	if by&rules.KeyComm != 0 {
		add("comm", strconv.Quote(ev.CommString()))
	}
	if by&rules.KeyUID != 0 {
		add("uid", strconv.FormatUint(uint64(ev.UID), 10))
	}
	if by&rules.KeyCgroup != 0 {
		add("cgroup", strconv.FormatUint(ev.Cgroup, 10))
	}
	switch {
	case by&rules.KeyRemoteIP != 0:
		add("remote_ip", ev.Remote.Addr().String())
	case by&rules.KeyRemoteNet != 0:
		name := "remote_net"
		switch by & rules.KeyRemoteNet {
		case rules.KeyRemoteNet24:
			name = "remote_net24"
		case rules.KeyRemoteNet64:
			name = "remote_net64"
		}
		add(name, keyNet(by, ev.Remote.Addr()).String())
	}
	if by&rules.KeyRemotePort != 0 {
		add("remote_port", strconv.FormatUint(uint64(ev.Remote.Port()), 10))
	}
	if by&rules.KeyLocalPort != 0 {
		add("local_port", strconv.FormatUint(uint64(ev.Local.Port()), 10))
	}
	return strings.Join(parts, " ")
}

// keyNet is the network a remote_net* key groups a by.
func keyNet(by rules.KeyFields, a netip.Addr) netip.Prefix {
	bits := a.BitLen()
	if a.Is4() && by&rules.KeyRemoteNet24 != 0 {
		bits = 24
	}
	if !a.Is4() && by&rules.KeyRemoteNet64 != 0 {
		bits = 64
	}
	p, _ := a.Prefix(bits)
	return p
}
