package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/connwarden/connwarden/internal/kerneltest"
	"golang.org/x/sys/unix"
)

// testNet is two network namespaces joined by a veth pair: the attacker side
// sends from two addresses, the victim side carries the XDP program. IPv6 is
// off and neighbours are static, so the only frames reaching the victim's
// veth are the ones a test sends: counters can be checked exactly.
type testNet struct {
	attacker, victim   string // namespace names
	vethA, vethV       string
	victimAddr         netip.Addr
	srcBad, srcGood    netip.Addr // two attacker addresses
	macA, macV         string
	attackerNs, victNs string // /run/netns paths
}

// requireNetns is kerneltest.Require plus the iproute2 the namespaces need.
func requireNetns(t testing.TB) {
	t.Helper()
	kerneltest.Require(t)
	if _, err := exec.LookPath("ip"); err != nil {
		kerneltest.Unsupported(t, "network namespace test needs iproute2: %v", err)
	}
}

func run(t testing.TB, args ...string) {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func newTestNet(t testing.TB) *testNet {
	t.Helper()
	sfx := randSuffix(t, 8)
	n := &testNet{
		attacker:   "cwblA" + sfx,
		victim:     "cwblV" + sfx,
		vethA:      "cwbla" + sfx,
		vethV:      "cwblv" + sfx,
		victimAddr: netip.MustParseAddr("10.201.0.2"),
		srcBad:     netip.MustParseAddr("10.201.0.1"),
		srcGood:    netip.MustParseAddr("10.201.0.3"),
		macA:       "02:cb:00:00:00:0a",
		macV:       "02:cb:00:00:00:0b",
	}
	n.attackerNs, n.victNs = "/run/netns/"+n.attacker, "/run/netns/"+n.victim
	for _, ns := range []string{n.attacker, n.victim} {
		run(t, "ip", "netns", "add", ns)
		t.Cleanup(func() {
			if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
				t.Errorf("ip netns del %s: %v\n%s", ns, err, out)
			}
		})
		run(t, "ip", "netns", "exec", ns, "sysctl", "-q", "-w",
			"net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
	}
	n.addVeth(t)
	return n
}

// addVeth creates the veth pair between the namespaces, with addresses and
// static neighbours, and brings it up.
func (n *testNet) addVeth(t testing.TB) {
	t.Helper()
	run(t, "ip", "link", "add", n.vethA, "address", n.macA, "netns", n.attacker, "type", "veth",
		"peer", "name", n.vethV, "address", n.macV, "netns", n.victim)
	run(t, "ip", "-n", n.attacker, "addr", "add", n.srcBad.String()+"/24", "dev", n.vethA)
	run(t, "ip", "-n", n.attacker, "addr", "add", n.srcGood.String()+"/24", "dev", n.vethA)
	run(t, "ip", "-n", n.victim, "addr", "add", n.victimAddr.String()+"/24", "dev", n.vethV)
	run(t, "ip", "-n", n.attacker, "neigh", "add", n.victimAddr.String(), "lladdr", n.macV, "dev", n.vethA, "nud", "permanent")
	for _, src := range []netip.Addr{n.srcBad, n.srcGood} {
		run(t, "ip", "-n", n.victim, "neigh", "add", src.String(), "lladdr", n.macA, "dev", n.vethV, "nud", "permanent")
	}
	run(t, "ip", "-n", n.attacker, "link", "set", n.vethA, "up")
	run(t, "ip", "-n", n.victim, "link", "set", n.vethV, "up")
}

// inNetns runs fn on an OS thread that has joined the namespace at nsPath
// (the mount namespace, and so bpffs, stays the caller's). The thread is
// thrown away if it cannot return to its own namespace.
func inNetns(nsPath string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		target, err := os.Open(nsPath)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("setns %s: %w", nsPath, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			// Leave the thread locked: it exits with this goroutine.
			errc <- errors.Join(ferr, fmt.Errorf("setns back: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// prober sends hand-made IPv4 packets from the attacker namespace with any
// source address and collects the victim's answers.
type prober struct {
	t                   testing.TB
	send, icmpIn, tcpIn int
	dst                 netip.Addr
	nextID              uint16
}

func (n *testNet) prober(t testing.TB) *prober {
	t.Helper()
	p := &prober{t: t, dst: n.victimAddr, nextID: uint16(os.Getpid())}
	err := inNetns(n.attackerNs, func() error {
		var err error
		if p.send, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW); err != nil {
			return err
		}
		if p.icmpIn, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_ICMP); err != nil {
			return err
		}
		p.tcpIn, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_TCP)
		return err
	})
	t.Cleanup(func() {
		for _, fd := range []int{p.send, p.icmpIn, p.tcpIn} {
			if fd > 0 {
				unix.Close(fd)
			}
		}
	})
	if err != nil {
		t.Fatalf("raw sockets in %s: %v", n.attacker, err)
	}
	tv := unix.NsecToTimeval((20 * time.Millisecond).Nanoseconds())
	for _, fd := range []int{p.icmpIn, p.tcpIn} {
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

// probe sends count ICMP echo requests and count TCP SYNs (to a closed port,
// so a reached victim answers RST) from src, and returns how many echo
// replies and RSTs came back within wait.
func (p *prober) probe(src netip.Addr, count int, wait time.Duration) (echoes, resets int) {
	p.t.Helper()
	p.nextID++
	id := p.nextID
	basePort := 20000 + id%20000
	const dport = 9 // discard: closed in the victim namespace
	sa := &unix.SockaddrInet4{Addr: p.dst.As4()}
	for i := range count {
		pkts := [][]byte{
			ipv4Packet(src, p.dst, protoICMP, icmpEcho(id, uint16(i))),
			ipv4Packet(src, p.dst, protoTCP, tcpSYN(src, p.dst, basePort+uint16(i), dport, 1000)),
		}
		for _, pkt := range pkts {
			if err := unix.Sendto(p.send, pkt, 0, sa); err != nil {
				p.t.Fatalf("send from %s: %v", src, err)
			}
		}
	}

	seenEcho, seenRST := map[uint16]bool{}, map[uint16]bool{}
	buf := make([]byte, 1500)
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) && (len(seenEcho) < count || len(seenRST) < count) {
		for _, fd := range []int{p.icmpIn, p.tcpIn} {
			n, _, err := unix.Recvfrom(fd, buf, 0)
			if err != nil {
				continue // timeout: poll the other socket
			}
			pkt := buf[:n]
			if len(pkt) < 20 || netip.AddrFrom4([4]byte(pkt[12:16])) != p.dst || netip.AddrFrom4([4]byte(pkt[16:20])) != src {
				continue
			}
			l4 := pkt[int(pkt[0]&0x0f)*4:]
			switch {
			case pkt[9] == protoICMP && len(l4) >= 8 && l4[0] == 0 && binary.BigEndian.Uint16(l4[4:6]) == id:
				seenEcho[binary.BigEndian.Uint16(l4[6:8])] = true
			case pkt[9] == protoTCP && len(l4) >= 14 && binary.BigEndian.Uint16(l4[0:2]) == dport && l4[13]&0x04 != 0:
				port := binary.BigEndian.Uint16(l4[2:4])
				if port >= basePort && port < basePort+uint16(count) {
					seenRST[port] = true
				}
			}
		}
	}
	return len(seenEcho), len(seenRST)
}

// passesWithin probes from src, one echo and one SYN at a time, until both
// are answered or the timeout passes. For after a link was unpinned: the
// kernel releases the last reference, and so detaches, asynchronously.
func (p *prober) passesWithin(src netip.Addr, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if e, r := p.probe(src, 1, 100*time.Millisecond); e == 1 && r == 1 {
			return true
		}
	}
	return false
}

// TestXDPNetns drops a blocked source's real traffic on a veth in a network
// namespace, lets another source through, and restores traffic on Unblock.
func TestXDPNetns(t *testing.T) {
	requireNetns(t)
	n := newTestNet(t)
	b := openTestBlocklist(t, BlocklistOptions{})

	var mode AttachMode
	if err := inNetns(n.victNs, func() (err error) {
		mode, err = b.Attach(n.vethV, AttachAuto)
		return err
	}); err != nil {
		t.Fatalf("attach: %v", err)
	}
	if mode != AttachNative {
		t.Errorf("attach mode %s, want native (veth supports it)", mode)
	}
	if got := b.Attached(); len(got) != 1 || got[0].Interface != n.vethV || got[0].Mode != mode {
		t.Errorf("Attached() = %+v", got)
	}
	if err := b.Block(netip.PrefixFrom(n.srcBad, 32), 0, ReasonDetector); err != nil {
		t.Fatal(err)
	}

	p := n.prober(t)
	const count = 5
	if e, r := p.probe(n.srcGood, count, 3*time.Second); e != count || r != count {
		t.Errorf("unblocked source: %d echo replies, %d resets; want %d each", e, r, count)
	}
	if e, r := p.probe(n.srcBad, count, 300*time.Millisecond); e != 0 || r != 0 {
		t.Errorf("blocked source: %d echo replies, %d resets; want none", e, r)
	}
	s, err := b.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if want := (Stats{Passed: 2 * count, Dropped: 2 * count, DroppedExact: 2 * count}); s != want {
		t.Errorf("stats %+v, want %+v", s, want)
	}
	if h := entryHits(t, b, n.srcBad.String()+"/32"); h != 2*count {
		t.Errorf("entry hits %d, want %d", h, 2*count)
	}

	if err := b.Unblock(netip.PrefixFrom(n.srcBad, 32)); err != nil {
		t.Fatal(err)
	}
	if e, r := p.probe(n.srcBad, count, 3*time.Second); e != count || r != count {
		t.Errorf("unblocked again: %d echo replies, %d resets; want %d each", e, r, count)
	}
	s, err = b.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if s.Passed != 4*count || s.Dropped != 2*count {
		t.Errorf("stats after unblock %+v, want %d passed, %d dropped", s, 4*count, 2*count)
	}

	if err := b.Detach(n.vethV); err != nil {
		t.Errorf("detach: %v", err)
	}
	if err := b.Detach(n.vethV); !errors.Is(err, ErrNotAttached) {
		t.Errorf("second detach: error %v, want ErrNotAttached", err)
	}

	// Generic (skb) mode drops too.
	if err := inNetns(n.victNs, func() (err error) {
		mode, err = b.Attach(n.vethV, AttachGeneric)
		return err
	}); err != nil || mode != AttachGeneric {
		t.Fatalf("attach generic: %s, %v", mode, err)
	}
	if err := b.Block(netip.PrefixFrom(n.srcBad, 32), 0, ReasonDetector); err != nil {
		t.Fatal(err)
	}
	if e, r := p.probe(n.srcBad, count, 300*time.Millisecond); e != 0 || r != 0 {
		t.Errorf("blocked source, generic mode: %d echo replies, %d resets; want none", e, r)
	}
	if e, r := p.probe(n.srcGood, count, 3*time.Second); e != count || r != count {
		t.Errorf("unblocked source, generic mode: %d echo replies, %d resets; want %d each", e, r, count)
	}
	s2, err := b.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if d := statsDelta(s, s2); d != (Stats{Passed: 2 * count, Dropped: 2 * count, DroppedExact: 2 * count}) {
		t.Errorf("generic mode counter delta %+v", d)
	}
}

// TestXDPReattachAfterInterfaceRecreated deletes and recreates the attached
// interface: the kernel detaches the link with the device, and Attach must
// notice and attach to the new device rather than report the dead link.
func TestXDPReattachAfterInterfaceRecreated(t *testing.T) {
	requireNetns(t)
	n := newTestNet(t)
	b := openTestBlocklist(t, BlocklistOptions{})
	attach := func() {
		t.Helper()
		if err := inNetns(n.victNs, func() error {
			_, err := b.Attach(n.vethV, AttachAuto)
			return err
		}); err != nil {
			t.Fatalf("attach: %v", err)
		}
	}
	attach()
	if err := b.Block(netip.PrefixFrom(n.srcBad, 32), 0, ReasonManual); err != nil {
		t.Fatal(err)
	}

	run(t, "ip", "-n", n.victim, "link", "del", n.vethV)
	n.addVeth(t)
	p := n.prober(t)
	if e, _ := p.probe(n.srcBad, 2, 3*time.Second); e != 2 {
		t.Fatalf("new interface without the program: %d echo replies, want 2", e)
	}
	attach()
	if e, r := p.probe(n.srcBad, 2, 300*time.Millisecond); e != 0 || r != 0 {
		t.Errorf("after re-attach: %d echo replies, %d resets; want none", e, r)
	}
	if got := b.Attached(); len(got) != 1 || got[0].Mode != AttachNative {
		t.Errorf("Attached() = %+v", got)
	}
}
