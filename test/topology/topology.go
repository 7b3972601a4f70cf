// Package topology builds throw-away test networks: hosts as network
// namespaces joined by veth pairs, with IPv4 and IPv6 addresses that exist only
// inside those namespaces. Everything is removed when the test ends, also when
// it fails. Traffic in tests goes only to these addresses.
//
// The shape is a star around the victim:
//
//	attacker (10.A.1.2, fdcw:A:1::2) ---- (10.A.1.1, fdcw:A:1::1) victim
//	internal (10.A.2.2, fdcw:A:2::2) ---- (10.A.2.1, fdcw:A:2::1) victim
//
// where A is drawn per topology so parallel tests do not collide. The victim
// routes between the two links, so the attacker can reach the internal host
// only through it.
package topology

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Host is one namespace.
type Host struct {
	Name string // namespace name (ip netns)
	// Addrs of this host: v4 and v6 on its link toward the victim (for the
	// victim: on its link toward the attacker).
	IPv4, IPv6 netip.Addr
	// IfName is this host's interface toward the victim (for the victim: toward
	// the attacker, where its XDP program attaches).
	IfName string
}

// Topology is the attacker / victim / internal star.
type Topology struct {
	Attacker, Victim, Internal *Host
	// VictimInternal4/6 are the victim's addresses on the internal link;
	// VictimInternalIf its interface there.
	VictimInternal4, VictimInternal6 netip.Addr
	VictimInternalIf                 string
	id                               string
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func run(args ...string) error {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// New builds the star and registers its removal with t.Cleanup.
func New(t testing.TB) *Topology {
	t.Helper()
	top, err := Build()
	if top != nil {
		t.Cleanup(func() { top.Remove() })
	}
	if err != nil {
		t.Fatalf("build topology: %v", err)
	}
	return top
}

// Build creates the star. On error it removes what it created; otherwise the
// caller must call Remove.
func Build() (_ *Topology, err error) {
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, fmt.Errorf("topology needs iproute2: %w", err)
	}
	id := randHex(2)
	n, _ := rand.Int(rand.Reader, big.NewInt(200))
	a := int(n.Int64()) + 20 // 10.20-219.x
	top := &Topology{id: id}
	mk := func(role string) *Host { return &Host{Name: "cw" + id + role} }
	top.Attacker, top.Victim, top.Internal = mk("att"), mk("vic"), mk("int")
	defer func() {
		if err != nil {
			top.Remove()
		}
	}()
	var firstErr error
	must := func(args ...string) {
		if firstErr == nil {
			firstErr = run(args...)
		}
	}
	for _, h := range []*Host{top.Attacker, top.Victim, top.Internal} {
		must("ip", "netns", "add", h.Name)
		must("ip", "-n", h.Name, "link", "set", "lo", "up")
	}
	// link 1: attacker <-> victim; link 2: internal <-> victim.
	top.Attacker.IfName, top.Victim.IfName = "cw"+id+"a0", "cw"+id+"v1"
	top.Internal.IfName, top.VictimInternalIf = "cw"+id+"i0", "cw"+id+"v2"
	link := func(h *Host, hIf, vIf string, sub int) (netip.Addr, netip.Addr, netip.Addr, netip.Addr) {
		must("ip", "link", "add", hIf, "netns", h.Name, "type", "veth", "peer", "name", vIf, "netns", top.Victim.Name)
		h4 := netip.MustParseAddr(fmt.Sprintf("10.%d.%d.2", a, sub))
		v4 := netip.MustParseAddr(fmt.Sprintf("10.%d.%d.1", a, sub))
		h6 := netip.MustParseAddr(fmt.Sprintf("fd00:c3:%x:%d::2", a, sub))
		v6 := netip.MustParseAddr(fmt.Sprintf("fd00:c3:%x:%d::1", a, sub))
		must("ip", "-n", h.Name, "addr", "add", h4.String()+"/24", "dev", hIf)
		must("ip", "-n", h.Name, "addr", "add", h6.String()+"/64", "dev", hIf, "nodad")
		must("ip", "-n", top.Victim.Name, "addr", "add", v4.String()+"/24", "dev", vIf)
		must("ip", "-n", top.Victim.Name, "addr", "add", v6.String()+"/64", "dev", vIf, "nodad")
		must("ip", "-n", h.Name, "link", "set", hIf, "up")
		must("ip", "-n", top.Victim.Name, "link", "set", vIf, "up")
		must("ip", "-n", h.Name, "route", "add", "default", "via", v4.String())
		must("ip", "-n", h.Name, "-6", "route", "add", "default", "via", v6.String())
		return h4, v4, h6, v6
	}
	var v4, v6 netip.Addr
	top.Attacker.IPv4, v4, top.Attacker.IPv6, v6 = link(top.Attacker, top.Attacker.IfName, top.Victim.IfName, 1)
	top.Victim.IPv4, top.Victim.IPv6 = v4, v6
	top.Internal.IPv4, top.VictimInternal4, top.Internal.IPv6, top.VictimInternal6 = link(top.Internal, top.Internal.IfName, top.VictimInternalIf, 2)
	must("ip", "netns", "exec", top.Victim.Name, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	must("ip", "netns", "exec", top.Victim.Name, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
	return top, firstErr
}

// Remove deletes the namespaces (and with them the veths). Idempotent.
func (top *Topology) Remove() error {
	var first error
	for _, h := range []*Host{top.Attacker, top.Victim, top.Internal} {
		if h == nil {
			continue
		}
		if _, err := os.Stat("/run/netns/" + h.Name); err != nil {
			continue
		}
		if err := run("ip", "netns", "del", h.Name); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// KillAll SIGKILLs every process whose network namespace is h's: servers a
// test started there and everything they forked (sshd's per-connection
// processes rename themselves, so only their namespace finds them all).
// It returns how many it killed.
func (h *Host) KillAll() (int, error) {
	var want unix.Stat_t
	if err := unix.Stat("/run/netns/"+h.Name, &want); err != nil {
		return 0, fmt.Errorf("namespace %s: %w", h.Name, err)
	}
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	n := 0
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		var st unix.Stat_t
		if unix.Stat("/proc/"+p.Name()+"/ns/net", &st) != nil {
			continue
		}
		if st.Ino == want.Ino && st.Dev == want.Dev {
			if unix.Kill(pid, unix.SIGKILL) == nil {
				n++
			}
		}
	}
	return n, nil
}

// Command returns a command that runs inside h's network namespace only
// (nsenter --net): unlike `ip netns exec` it keeps the mount namespace, so
// bpffs pins and unix sockets are shared with the test.
func (h *Host) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--net=/run/netns/" + h.Name, "--", name}, args...)...)
}

// Do runs fn on an OS thread switched into h's network namespace. Sockets fn
// creates live in that namespace. The thread is discarded afterwards rather
// than returned to the Go scheduler in a foreign namespace.
func (h *Host) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// Not unlocking: the goroutine's exit then terminates the thread.
		f, err := os.Open("/run/netns/" + h.Name)
		if err != nil {
			errc <- err
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", h.Name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// PinNeighbors installs permanent neighbour (ARP/NDP) entries between the
// attacker and the victim, so that no address resolution packets cross their
// link and packet counters count exactly what a test sends.
func (top *Topology) PinNeighbors() error {
	mac := func(h *Host, ifname string) (string, error) {
		out, err := exec.Command("ip", "-n", h.Name, "-br", "link", "show", ifname).Output()
		if err != nil {
			return "", fmt.Errorf("link %s in %s: %w", ifname, h.Name, err)
		}
		f := strings.Fields(string(out))
		if len(f) < 3 {
			return "", fmt.Errorf("link %s in %s: unexpected %q", ifname, h.Name, out)
		}
		return f[2], nil
	}
	am, err := mac(top.Attacker, top.Attacker.IfName)
	if err != nil {
		return err
	}
	vm, err := mac(top.Victim, top.Victim.IfName)
	if err != nil {
		return err
	}
	for _, n := range []struct {
		h          *Host
		ifname, ll string
		addrs      []netip.Addr
	}{
		{top.Attacker, top.Attacker.IfName, vm, []netip.Addr{top.Victim.IPv4, top.Victim.IPv6}},
		{top.Victim, top.Victim.IfName, am, []netip.Addr{top.Attacker.IPv4, top.Attacker.IPv6}},
	} {
		for _, a := range n.addrs {
			if err := run("ip", "-n", n.h.Name, "neigh", "replace", a.String(), "lladdr", n.ll, "dev", n.ifname, "nud", "permanent"); err != nil {
				return err
			}
		}
	}
	return nil
}

// Serve starts a TCP listener inside h on ip:port (port 0: any) that accepts
// connections and closes each once its client has (a client that resets, as
// Dial does, then ends both sides and no FIN from h is left to be
// retransmitted after a block). Close the returned listener to stop it.
func (h *Host) Serve(ip netip.Addr, port uint16) (netip.AddrPort, io.Closer, error) {
	var ln net.Listener
	if err := h.Do(func() (err error) {
		ln, err = net.Listen("tcp", netip.AddrPortFrom(ip, port).String())
		return err
	}); err != nil {
		return netip.AddrPort{}, nil, err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				c.SetReadDeadline(time.Now().Add(30 * time.Second))
				io.Copy(io.Discard, c)
				c.Close()
			}()
		}
	}()
	return netip.MustParseAddrPort(ln.Addr().String()), ln, nil
}

// Dial makes n connections from h to dst, each with timeout, and resets each
// at once (a FIN could race a block and be retransmitted for minutes,
// muddling packet counts); it returns how many connected.
func (h *Host) Dial(dst netip.AddrPort, n int, timeout time.Duration) (int, error) {
	ok := 0
	err := h.Do(func() error {
		for i := 0; i < n; i++ {
			c, err := net.DialTimeout("tcp", dst.String(), timeout)
			if err == nil {
				ok++
				c.(*net.TCPConn).SetLinger(0)
				c.Close()
			}
		}
		return nil
	})
	return ok, err
}

var pingReceived = regexp.MustCompile(`(\d+) received`)

// Ping sends count echo requests from h to dst, 50ms apart, and returns how
// many were answered.
func (h *Host) Ping(dst netip.Addr, count int) (int, error) {
	out, _ := h.Command("ping", "-n", "-q", "-c", strconv.Itoa(count), "-i", "0.05", "-W", "1", dst.String()).CombinedOutput()
	m := pingReceived.FindSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("ping %v from %s: %s", dst, h.Name, out)
	}
	return strconv.Atoi(string(m[1]))
}
