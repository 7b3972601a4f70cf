package detector

import (
	"math/rand/v2"
	"net/netip"

	"github.com/connwarden/connwarden/detector/event"
)

// mixedStream is a busy server's mix for benchmarks and the allocation
// test: 300 processes opening HTTPS connections (in all three event
// shapes) to their own ~20 of 2000 hosts, resolvers connecting UDP sockets
// to DNS, 3000 clients accepted on local services, resets sent to probes
// from 5000 addresses and the odd refused connect. Timestamps advance 2µs
// per event, so a pass of the stream is far shorter than any window and
// every key stays live: the tables hold their full working set.
func mixedStream(n int) []event.Event { return mixedStreamScaled(n, 1) }

// mixedStreamScaled divides every population (processes, hosts, clients,
// probe sources) by div: a smaller host whose state fits in cache.
func mixedStreamScaled(n, div int) []event.Event {
	rng := rand.New(rand.NewPCG(1, 2))
	local := netip.MustParseAddr("10.0.0.1")
	comms := []string{"firefox", "Socket Thread", "apt", "curl", "python3", "sshd", "systemd-resolve", "node"}
	out := make([]event.Event, 0, n)
	ts := uint64(1_000_000_000_000)
	// remote picks one of pool addresses: a host talks to a working set of
	// peers, and most inbound peers come back.
	addr := func(x int) netip.Addr {
		return netip.AddrFrom4([4]byte{byte(100 + x>>16), byte(x >> 8), byte(x), 7})
	}
	remote := func(pool int) netip.Addr { return addr(rng.IntN(pool)) }
	// peerOf picks one of the ~20 hosts a process talks to, out of 2000:
	// processes have their own working sets, not the whole internet each.
	peerOf := func(pid uint32) netip.Addr { return addr((int(pid)*131 + rng.IntN(20)) % (2000 / div)) }
	for len(out) < n {
		ts += 2000
		var ev event.Event
		ev.Timestamp = ts
		pid := uint32(1000 + rng.IntN(300/div))
		switch r := rng.IntN(100); {
		case r < 45: // outbound TCP to web ports
			ev.Kind = []event.Kind{event.KindConnect, event.KindTCPAttempt, event.KindTCPEstablished}[rng.IntN(3)]
			ev.Direction = event.DirOutbound
			ev.Remote = netip.AddrPortFrom(peerOf(pid), []uint16{443, 443, 443, 80}[rng.IntN(4)])
			if ev.Kind == event.KindConnect {
				ev.Result = -event.EINPROGRESS
			}
		case r < 60: // DNS
			ev.Kind, ev.Direction = event.KindConnect, event.DirOutbound
			ev.Remote = netip.AddrPortFrom(netip.MustParseAddr("10.0.0.53"), 53)
		case r < 68: // outbound to other ports (ssh, databases)
			ev.Kind, ev.Direction = event.KindTCPAttempt, event.DirOutbound
			ev.Remote = netip.AddrPortFrom(remote(50/div+1), []uint16{22, 5432, 6379, 9000}[rng.IntN(4)])
		case r < 70: // refused
			ev.Kind, ev.Direction, ev.Result = event.KindTCPClose, event.DirOutbound, -event.ECONNREFUSED
			ev.Remote = netip.AddrPortFrom(remote(50/div+1), 8080)
		case r < 90: // inbound clients
			ev.Kind, ev.Direction = event.KindInboundAccept, event.DirInbound
			ev.Remote = netip.AddrPortFrom(remote(3000/div), uint16(30000+rng.IntN(30000)))
			ev.Local = netip.AddrPortFrom(local, []uint16{22, 443, 443, 443}[rng.IntN(4)])
		default: // stray probes answered with a reset
			ev.Kind, ev.Direction = event.KindResetSent, event.DirInbound
			ev.Remote = netip.AddrPortFrom(remote(5000/div), uint16(30000+rng.IntN(30000)))
			ev.Local = netip.AddrPortFrom(local, uint16(1+rng.IntN(1024)))
		}
		if ev.Kind.HasProcess() {
			ev.PID, ev.TGID, ev.UID, ev.Cgroup = pid, pid, 1000, 4242
			ev.SetComm(comms[rng.IntN(len(comms))])
			ev.Local = netip.AddrPortFrom(local, uint16(32768+rng.IntN(28000)))
		}
		out = append(out, ev)
	}
	return out
}

// attackStream is an inbound port scan by one address within a background
// of mixed traffic.
func attackStream() []event.Event {
	evs := mixedStream(2000)
	scanner := netip.MustParseAddr("203.0.113.66")
	local := netip.MustParseAddr("10.0.0.1")
	for i := range 40 {
		j := 100 + i*20
		evs[j] = event.Event{
			Timestamp: evs[j].Timestamp, Kind: event.KindResetSent, Direction: event.DirInbound,
			Local: netip.AddrPortFrom(local, uint16(20+i)), Remote: netip.AddrPortFrom(scanner, 61000),
		}
	}
	return evs
}
