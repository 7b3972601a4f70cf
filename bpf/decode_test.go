package bpf

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"slices"
	"testing"
	"unsafe"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/connwarden/connwarden/detector/event"
)

// TestEventLayout holds decode.go's offsets to struct event as compiled: the
// Go declaration bpf2go generated from the object's BTF.
func TestEventLayout(t *testing.T) {
	var e connectEvent
	var a connectAuthEvent
	got := map[string]uintptr{
		"size":      unsafe.Sizeof(e),
		"ts":        unsafe.Offsetof(e.Ts),
		"cgroup":    unsafe.Offsetof(e.Cgroup),
		"pid":       unsafe.Offsetof(e.Pid),
		"tgid":      unsafe.Offsetof(e.Tgid),
		"uid":       unsafe.Offsetof(e.Uid),
		"result":    unsafe.Offsetof(e.Result),
		"laddr":     unsafe.Offsetof(e.Laddr),
		"raddr":     unsafe.Offsetof(e.Raddr),
		"lport":     unsafe.Offsetof(e.Lport),
		"rport":     unsafe.Offsetof(e.Rport),
		"family":    unsafe.Offsetof(e.Family),
		"kind":      unsafe.Offsetof(e.Kind),
		"direction": unsafe.Offsetof(e.Direction),
		"state":     unsafe.Offsetof(e.State),
		"peers":     unsafe.Offsetof(e.Peers),
		"lifetime":  unsafe.Offsetof(e.LifetimeMs),
		"comm":      unsafe.Offsetof(e.Comm),
		"auth size": unsafe.Sizeof(a),
		"service":   unsafe.Offsetof(a.Service),
		"user":      unsafe.Offsetof(a.User),
		"str size":  unsafe.Sizeof(a.User),
		"addr size": unsafe.Sizeof(e.Laddr),
		"comm size": unsafe.Sizeof(e.Comm),
	}
	want := map[string]uintptr{
		"size":      eventSize,
		"ts":        offTimestamp,
		"cgroup":    offCgroup,
		"pid":       offPID,
		"tgid":      offTGID,
		"uid":       offUID,
		"result":    offResult,
		"laddr":     offLocalAddr,
		"raddr":     offRemoteAddr,
		"lport":     offLocalPort,
		"rport":     offRemotePort,
		"family":    offFamily,
		"kind":      offKind,
		"direction": offDirection,
		"state":     offState,
		"peers":     offPeers,
		"lifetime":  offLifetime,
		"comm":      offComm,
		"auth size": authEventSize,
		"service":   offService,
		"user":      offUser,
		"str size":  event.AuthStrLen,
		"addr size": addrFieldBytes,
		"comm size": event.CommLen,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("struct event layout (-decode.go +object):\n%s", diff)
	}
}

// TestKindMapping checks every event kind has exactly one kernel kind.
func TestKindMapping(t *testing.T) {
	var got []event.Kind
	for k := range 256 {
		if ek, ok := eventKind(connectKind(k)); ok {
			got = append(got, ek)
		}
	}
	slices.Sort(got)
	if diff := cmp.Diff(event.Kinds(), got); diff != "" {
		t.Errorf("kinds (-event package +kernel):\n%s", diff)
	}
}

// eventRecord is a kernel record as connect.bpf.c writes it, built from the
// generated declaration so the tests do not share decode.go's offsets.
func eventRecord(t testing.TB, e connectEvent) []byte {
	t.Helper()
	return kernelRecord(t, &e)
}

// kernelRecord encodes a generated record type in the kernel's layout.
func kernelRecord(t testing.TB, rec any) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := binary.Write(&buf, binary.NativeEndian, rec); err != nil {
		t.Fatalf("encode record: %v", err)
	}
	return buf.Bytes()
}

func addr16(s string) (a [16]byte) {
	ip := netip.MustParseAddr(s)
	if ip.Is4() {
		b := ip.As4()
		copy(a[:], b[:])
		return a
	}
	return ip.As16()
}

func commBytes(s string) (c [16]uint8) {
	copy(c[:], s)
	return c
}

func TestDecodeEvent(t *testing.T) {
	ap := netip.MustParseAddrPort
	for _, tc := range []struct {
		name string
		in   connectEvent
		want event.Event
	}{
		{
			name: "ipv4 connect refused",
			in: connectEvent{
				Ts: 123456789, Cgroup: 42, Pid: 1001, Tgid: 1000, Uid: 1000, Result: -111,
				Raddr: addr16("10.1.2.3"), Rport: 22, Family: afInet,
				Kind: uint8(connectKindKIND_CONNECT), Direction: uint8(connectDirectionDIR_OUTBOUND),
				Comm: commBytes("curl"),
			},
			want: event.Event{
				Timestamp: 123456789, Cgroup: 42, PID: 1001, TGID: 1000, UID: 1000, Result: -event.ECONNREFUSED,
				Kind: event.KindConnect, Direction: event.DirOutbound, Comm: commBytes("curl"),
				Remote: ap("10.1.2.3:22"),
			},
		},
		{
			name: "ipv6 established",
			in: connectEvent{
				Ts: 5, Cgroup: 7, Pid: 9, Tgid: 9, Laddr: addr16("2001:db8::1"), Lport: 40000,
				Raddr: addr16("2001:db8::2"), Rport: 443, Family: afInet6,
				Kind: uint8(connectKindKIND_TCP_ESTABLISHED), Direction: uint8(connectDirectionDIR_OUTBOUND),
				State: 1, Comm: commBytes("a-fifteen-chars"),
			},
			want: event.Event{
				Timestamp: 5, Cgroup: 7, PID: 9, TGID: 9, Kind: event.KindTCPEstablished,
				Direction: event.DirOutbound, State: 1, Comm: commBytes("a-fifteen-chars"),
				Local: ap("[2001:db8::1]:40000"), Remote: ap("[2001:db8::2]:443"),
			},
		},
		{
			name: "v4-mapped ipv6 is unmapped",
			in: connectEvent{
				Laddr: addr16("::ffff:127.0.0.1"), Lport: 5000, Raddr: addr16("::ffff:192.0.2.7"), Rport: 80,
				Family: afInet6, Kind: uint8(connectKindKIND_TCP_CLOSE), Direction: uint8(connectDirectionDIR_OUTBOUND),
				State: 7, Result: -110,
			},
			want: event.Event{
				Kind: event.KindTCPClose, Direction: event.DirOutbound, State: 7, Result: -event.ETIMEDOUT,
				Local: ap("127.0.0.1:5000"), Remote: ap("192.0.2.7:80"),
			},
		},
		{
			name: "inbound accept without process",
			in: connectEvent{
				Ts: 1, Laddr: addr16("192.0.2.1"), Lport: 22, Raddr: addr16("198.51.100.9"), Rport: 51000,
				Family: afInet, Kind: uint8(connectKindKIND_INBOUND_ACCEPT), Direction: uint8(connectDirectionDIR_INBOUND),
				State: 1,
			},
			want: event.Event{
				Timestamp: 1, Kind: event.KindInboundAccept, Direction: event.DirInbound, State: 1,
				Local: ap("192.0.2.1:22"), Remote: ap("198.51.100.9:51000"),
			},
		},
		{
			name: "attempt with unassigned source port keeps the address",
			in: connectEvent{
				Laddr: addr16("192.0.2.1"), Raddr: addr16("192.0.2.2"), Rport: 25, Family: afInet,
				Kind: uint8(connectKindKIND_TCP_ATTEMPT), Direction: uint8(connectDirectionDIR_OUTBOUND), State: 2,
			},
			want: event.Event{
				Kind: event.KindTCPAttempt, Direction: event.DirOutbound, State: 2,
				Local: ap("192.0.2.1:0"), Remote: ap("192.0.2.2:25"),
			},
		},
		{
			name: "ipv6 reset sent",
			in: connectEvent{
				Laddr: addr16("::1"), Lport: 9, Raddr: addr16("::1"), Rport: 33000, Family: afInet6,
				Kind: uint8(connectKindKIND_RESET_SENT), Direction: uint8(connectDirectionDIR_INBOUND),
			},
			want: event.Event{
				Kind: event.KindResetSent, Direction: event.DirInbound,
				Local: ap("[::1]:9"), Remote: ap("[::1]:33000"),
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Decode over a dirty event: every field must be written.
			got := event.Event{Timestamp: 99, PID: 99, Comm: commBytes("stale"), Local: ap("1.1.1.1:1")}
			if err := decodeEvent(eventRecord(t, tc.in), &got); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got, cmpopts.EquateComparable(netip.AddrPort{})); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// authRecord is a struct auth_event as pam.bpf.c writes it.
func authRecord(t testing.TB, a connectAuthEvent) []byte {
	t.Helper()
	return kernelRecord(t, &a)
}

func str32(s string) (b [32]uint8) {
	copy(b[:], s)
	return b
}

func TestDecodeAuthEvent(t *testing.T) {
	ap := netip.MustParseAddrPort
	withStrs := func(e event.Event, service, user string) event.Event {
		e.SetService(service)
		e.SetUser(user)
		return e
	}
	for _, tc := range []struct {
		name string
		in   connectAuthEvent
		want event.Event
	}{
		{
			name: "failure with a known ipv6 peer",
			in: connectAuthEvent{
				Base: connectEvent{
					Ts: 10, Pid: 7, Tgid: 7, Result: 7, Kind: uint8(connectKindKIND_AUTH),
					Direction: uint8(connectDirectionDIR_INBOUND), Family: afInet6, Peers: 1,
					Laddr: addr16("2001:db8::1"), Lport: 22, Raddr: addr16("2001:db8::99"), Rport: 50000,
					Comm: commBytes("sshd"),
				},
				Service: str32("sshd"), User: str32("root"),
			},
			want: withStrs(event.Event{
				Timestamp: 10, PID: 7, TGID: 7, Result: event.PAMAuthErr, Kind: event.KindAuth,
				Direction: event.DirInbound, Peers: 1, Comm: commBytes("sshd"),
				Local: ap("[2001:db8::1]:22"), Remote: ap("[2001:db8::99]:50000"),
			}, "sshd", "root"),
		},
		{
			name: "account check, peer unknown among two",
			in: connectAuthEvent{
				Base:    connectEvent{Ts: 11, Kind: uint8(connectKindKIND_AUTH_ACCOUNT), Peers: 2},
				Service: str32("login"), User: str32("a-user-name-of-exactly-31-bytes"),
			},
			want: withStrs(event.Event{Timestamp: 11, Kind: event.KindAuthAccount, Peers: 2},
				"login", "a-user-name-of-exactly-31-bytes"),
		},
		{
			name: "unreadable or foreign strings are dropped",
			in: connectAuthEvent{
				Base:    connectEvent{Kind: uint8(connectKindKIND_AUTH), Peers: event.PeersUnknown},
				Service: str32("ss\x01hd"), User: [32]uint8{0xff, 'x'},
			},
			want: withStrs(event.Event{Kind: event.KindAuth, Peers: event.PeersUnknown}, "", ""),
		},
		{
			name: "inbound short session",
			in: connectAuthEvent{Base: connectEvent{
				Ts: 3, Kind: uint8(connectKindKIND_INBOUND_SHORT), Direction: uint8(connectDirectionDIR_INBOUND),
				Family: afInet, Laddr: addr16("192.0.2.1"), Lport: 22, Raddr: addr16("198.51.100.2"), Rport: 4000,
				State: 8, LifetimeMs: 1234,
			}},
			want: event.Event{
				Timestamp: 3, Kind: event.KindInboundShort, Direction: event.DirInbound, State: 8, LifetimeMS: 1234,
				Local: ap("192.0.2.1:22"), Remote: ap("198.51.100.2:4000"),
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := withStrs(event.Event{Timestamp: 99, Local: ap("1.1.1.1:1"), Remote: ap("1.1.1.1:2")}, "stale", "stale")
			if err := decodeEvent(authRecord(t, tc.in), &got); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got, cmpopts.EquateComparable(netip.AddrPort{})); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestDecodeEventMalformed(t *testing.T) {
	good := connectEvent{
		Family: afInet, Kind: uint8(connectKindKIND_CONNECT), Direction: uint8(connectDirectionDIR_OUTBOUND),
	}
	for _, tc := range []struct {
		name string
		raw  func() []byte
	}{
		{"empty", func() []byte { return nil }},
		{"short", func() []byte { return eventRecord(t, good)[:eventSize-1] }},
		{"kind 0", func() []byte { e := good; e.Kind = 0; return eventRecord(t, e) }},
		{"kind 10", func() []byte { e := good; e.Kind = 10; return eventRecord(t, e) }},
		{"auth record cut to an event's size", func() []byte {
			e := good
			e.Kind = uint8(connectKindKIND_AUTH)
			return eventRecord(t, e)
		}},
		{"connect without a direction", func() []byte { e := good; e.Direction = 0; e.Family = 0; return eventRecord(t, e) }},
		{"auth with a family but no direction", func() []byte {
			return authRecord(t, connectAuthEvent{Base: connectEvent{Kind: uint8(connectKindKIND_AUTH), Family: afInet}})
		}},
		{"direction 3", func() []byte { e := good; e.Direction = 3; return eventRecord(t, e) }},
		{"family 1", func() []byte { e := good; e.Family = 1; return eventRecord(t, e) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ev event.Event
			if err := decodeEvent(tc.raw(), &ev); !errors.Is(err, ErrMalformedRecord) {
				t.Errorf("decodeEvent: %v, want ErrMalformedRecord", err)
			}
		})
	}
}

func TestDecodeEventAllocs(t *testing.T) {
	raw := eventRecord(t, connectEvent{
		Laddr: addr16("::ffff:127.0.0.1"), Raddr: addr16("2001:db8::1"), Family: afInet6,
		Kind: uint8(connectKindKIND_TCP_ATTEMPT), Direction: uint8(connectDirectionDIR_OUTBOUND),
	})
	var ev event.Event
	if n := testing.AllocsPerRun(1000, func() { _ = decodeEvent(raw, &ev) }); n != 0 {
		t.Errorf("decodeEvent allocates %v times per record, want 0", n)
	}
}

// encodeEvent is the inverse of decodeEvent, for the fuzz target: IPv4 when
// neither endpoint is IPv6, IPv6 (v4-mapped where needed) otherwise.
func encodeEvent(t testing.TB, ev *event.Event) []byte {
	e := connectEvent{
		Ts: ev.Timestamp, Cgroup: ev.Cgroup, Pid: ev.PID, Tgid: ev.TGID, Uid: ev.UID, Result: ev.Result,
		Lport: ev.Local.Port(), Rport: ev.Remote.Port(), State: ev.State, Comm: ev.Comm, Family: afInet,
	}
	for k := range 256 {
		if ek, _ := eventKind(connectKind(k)); ek == ev.Kind {
			e.Kind = uint8(k)
		}
		if ed, _ := eventDirection(connectDirection(k)); ed == ev.Direction {
			e.Direction = uint8(k)
		}
	}
	e.Peers, e.LifetimeMs = ev.Peers, ev.LifetimeMS
	if ev.Kind.IsAuth() && !ev.Remote.IsValid() && !ev.Local.IsValid() && ev.Direction == event.DirUnknown {
		e.Family, e.Direction = 0, 0
		return authRecord(t, connectAuthEvent{Base: e, Service: ev.Service, User: ev.User})
	}
	if ev.Local.Addr().Is6() || ev.Remote.Addr().Is6() {
		e.Family = afInet6
		if ev.Local.IsValid() {
			e.Laddr = ev.Local.Addr().As16()
		}
		if ev.Remote.IsValid() {
			e.Raddr = ev.Remote.Addr().As16()
		}
	} else {
		if ev.Local.IsValid() {
			b := ev.Local.Addr().As4()
			copy(e.Laddr[:], b[:])
		}
		if ev.Remote.IsValid() {
			b := ev.Remote.Addr().As4()
			copy(e.Raddr[:], b[:])
		}
	}
	if ev.Kind.IsAuth() {
		return authRecord(t, connectAuthEvent{Base: e, Service: ev.Service, User: ev.User})
	}
	return eventRecord(t, e)
}

func FuzzDecodeEvent(f *testing.F) {
	for _, e := range []connectEvent{
		{Family: afInet, Kind: 1, Direction: 1, Raddr: addr16("127.0.0.1"), Rport: 80, Result: -111},
		{Family: afInet6, Kind: 3, Direction: 1, Laddr: addr16("::1"), Lport: 1, Raddr: addr16("::ffff:10.0.0.1"), Rport: 2},
		{Family: afInet6, Kind: 5, Direction: 2, Laddr: addr16("2001:db8::1"), Raddr: addr16("::")},
		{Family: afInet, Kind: 7, Direction: 2, Raddr: addr16("10.0.0.1"), Rport: 9, LifetimeMs: 5},
	} {
		f.Add(eventRecord(f, e))
	}
	f.Add(authRecord(f, connectAuthEvent{Base: connectEvent{Kind: 8, Peers: 2}, Service: str32("sshd")}))
	f.Add(authRecord(f, connectAuthEvent{Base: connectEvent{Kind: 9, Family: afInet, Direction: 2, Peers: 1,
		Raddr: addr16("10.0.0.1")}, User: str32("root")}))
	f.Fuzz(func(t *testing.T, raw []byte) {
		var ev event.Event
		if err := decodeEvent(raw, &ev); err != nil {
			if !errors.Is(err, ErrMalformedRecord) {
				t.Fatalf("error %v does not wrap ErrMalformedRecord", err)
			}
			return
		}
		if ev.Kind == event.KindUnknown {
			t.Fatalf("decoded unknown kind: %+v", ev)
		}
		if ev.Direction == event.DirUnknown && (!ev.Kind.IsAuth() || ev.PeerKnown()) {
			t.Fatalf("decoded unknown direction for a %s event with a peer: %+v", ev.Kind, ev)
		}
		for _, b := range [][]byte{ev.ServiceBytes(), ev.UserBytes()} {
			for _, c := range b {
				if c < 0x20 || c > 0x7e {
					t.Fatalf("decoded unprintable name %q", b)
				}
			}
		}
		for _, a := range []netip.AddrPort{ev.Local, ev.Remote} {
			if a.IsValid() && a.Addr().Is4In6() {
				t.Fatalf("v4-mapped address left mapped: %v", a)
			}
		}
		// Decoding is a function of the event's content: re-encoding what was
		// decoded and decoding again gives the same event.
		var again event.Event
		if err := decodeEvent(encodeEvent(t, &ev), &again); err != nil {
			t.Fatalf("decode re-encoded %+v: %v", ev, err)
		}
		if diff := cmp.Diff(ev, again, cmpopts.EquateComparable(netip.AddrPort{})); diff != "" {
			t.Fatalf("round trip (-first +second):\n%s", diff)
		}
	})
}

func BenchmarkDecodeEvent(b *testing.B) {
	raw := eventRecord(b, connectEvent{
		Ts: 1, Pid: 2, Tgid: 2, Laddr: addr16("::ffff:127.0.0.1"), Lport: 1, Raddr: addr16("2001:db8::1"), Rport: 443,
		Family: afInet6, Kind: uint8(connectKindKIND_TCP_ESTABLISHED), Direction: uint8(connectDirectionDIR_OUTBOUND),
		Comm: commBytes("bench"),
	})
	var ev event.Event
	b.ReportAllocs()
	b.SetBytes(int64(len(raw)))
	for b.Loop() {
		if err := decodeEvent(raw, &ev); err != nil {
			b.Fatal(err)
		}
	}
}
