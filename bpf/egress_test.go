package bpf

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/connwarden/connwarden/internal/kerneltest"
	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
)

const (
	cgroup2Root   = "/sys/fs/cgroup/unified"
	helperConnect = "connect"
	envTargets    = "CWBL_TARGETS"
)

// TestBlocklistEgressHelper is not a test: it is the body of the process that
// TestBlocklistEgress starts inside its own cgroup. It connects to each
// address in CWBL_TARGETS and prints "<addr> ok" or "<addr> <errno>".
func TestBlocklistEgressHelper(t *testing.T) {
	if os.Getenv(envHelper) != helperConnect {
		return
	}
	for _, target := range strings.Split(os.Getenv(envTargets), ",") {
		if err := connectOnce(netip.MustParseAddrPort(target)); err != nil {
			var errno syscall.Errno
			if errors.As(err, &errno) {
				fmt.Printf("%s %s\n", target, unix.ErrnoName(errno))
			} else {
				fmt.Printf("%s %v\n", target, err)
			}
			continue
		}
		fmt.Printf("%s ok\n", target)
	}
}

// connectOnce makes one blocking TCP connect with the socket family the
// address calls for: an IPv4-mapped IPv6 address goes through an AF_INET6
// socket, as a dual-stack program would (Go's net refuses that).
func connectOnce(ap netip.AddrPort) error {
	family := unix.AF_INET6
	var sa unix.Sockaddr = &unix.SockaddrInet6{Addr: ap.Addr().As16(), Port: int(ap.Port())}
	if ap.Addr().Is4() {
		family = unix.AF_INET
		sa = &unix.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())}
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	tv := unix.NsecToTimeval((2 * time.Second).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv); err != nil {
		return err
	}
	return unix.Connect(fd, sa)
}

// TestBlocklistEgress attaches connect4/connect6 to a cgroup of its own and
// checks that only a process inside it is refused blocked destinations.
func TestBlocklistEgress(t *testing.T) {
	kerneltest.Require(t)
	var st unix.Statfs_t
	if err := unix.Statfs(cgroup2Root, &st); err != nil || st.Type != unix.CGROUP2_SUPER_MAGIC {
		kerneltest.Unsupported(t, "no cgroup v2 hierarchy at %s (%v)", cgroup2Root, err)
	}
	cg := filepath.Join(cgroup2Root, "connwarden-test-"+randSuffix(t, 12))
	if err := os.Mkdir(cg, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.Remove(cg); err != nil {
			t.Errorf("remove cgroup: %v", err)
		}
	})

	// Listeners on loopback only; the test process itself stays outside the
	// cgroup and must never be refused.
	listen := func(network, addr string) string {
		l, err := net.Listen(network, addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		return l.Addr().String()
	}
	var (
		exact4  = listen("tcp4", "127.0.0.2:0")
		other4  = listen("tcp4", "127.0.0.3:0")
		cidr4   = listen("tcp4", "127.0.1.5:0")
		allowed = listen("tcp4", "127.0.1.7:0")
		exact6  = listen("tcp6", "[::1]:0")
		mapped  = "[::ffff:127.0.0.2]:" + exact4[strings.LastIndex(exact4, ":")+1:]
	)
	targets := []string{exact4, other4, cidr4, allowed, exact6, mapped}

	dir := testPinDir(t)
	b := openTestBlocklist(t, BlocklistOptions{PinDir: dir})
	if err := b.EnableEgress(cg); err != nil {
		t.Fatalf("enable egress: %v", err)
	}
	if err := b.EnableEgress(cg); err != nil {
		t.Errorf("enable egress twice: %v", err)
	}
	for _, s := range []string{"127.0.0.2", "127.0.1.0/24", "::1"} {
		if err := b.Block(mustPrefix(t, s), time.Hour, ReasonManual); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Allow(mustPrefix(t, "127.0.1.7")); err != nil {
		t.Fatal(err)
	}

	blocked := map[string]string{
		exact4: "EPERM", other4: "ok", cidr4: "EPERM", allowed: "ok", exact6: "EPERM", mapped: "EPERM",
	}
	if diff := cmp.Diff(blocked, connectFromCgroup(t, cg, targets)); diff != "" {
		t.Errorf("connects from the cgroup while blocked (-want +got):\n%s", diff)
	}
	s, err := b.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if s.EgressRefused != 4 {
		t.Errorf("EgressRefused = %d, want 4", s.EgressRefused)
	}
	// Outside the cgroup nothing is refused.
	if c, err := net.DialTimeout("tcp4", exact4, 2*time.Second); err != nil {
		t.Errorf("connect from outside the cgroup: %v", err)
	} else {
		c.Close()
	}

	// A restarted agent adopts the egress links.
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	b = openTestBlocklist(t, BlocklistOptions{PinDir: dir})
	if diff := cmp.Diff(blocked, connectFromCgroup(t, cg, targets)); diff != "" {
		t.Errorf("connects after adoption (-want +got):\n%s", diff)
	}

	for _, s := range []string{"127.0.0.2", "127.0.1.0/24", "::1"} {
		if err := b.Unblock(mustPrefix(t, s)); err != nil {
			t.Fatal(err)
		}
	}
	open := map[string]string{}
	for _, target := range targets {
		open[target] = "ok"
	}
	if diff := cmp.Diff(open, connectFromCgroup(t, cg, targets)); diff != "" {
		t.Errorf("connects after Unblock (-want +got):\n%s", diff)
	}

	if err := b.DisableEgress(cg); err != nil {
		t.Errorf("disable egress: %v", err)
	}
	if err := b.DisableEgress(cg); !errors.Is(err, ErrNotAttached) {
		t.Errorf("disable egress twice: error %v, want ErrNotAttached", err)
	}
}

// connectFromCgroup runs the helper process inside cgroup cg (placed there
// at clone, so it never runs outside it) and returns its outcome per target.
func connectFromCgroup(t testing.TB, cg string, targets []string) map[string]string {
	t.Helper()
	dir, err := os.Open(cg)
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^TestBlocklistEgressHelper$", "-test.count=1")
	cmd.Env = append(os.Environ(), envHelper+"="+helperConnect, envTargets+"="+strings.Join(targets, ","))
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(dir.Fd())}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helper in cgroup: %v\n%s", err, out)
	}
	got := map[string]string{}
	for _, line := range strings.Split(string(out), "\n") {
		target, result, ok := strings.Cut(line, " ")
		if ok && strings.Contains(target, ":") {
			got[target] = result
		}
	}
	return got
}
