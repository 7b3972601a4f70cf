package bpf

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"

	"github.com/connwarden/connwarden/detector/event"
	"github.com/connwarden/connwarden/internal/kerneltest"
)

// eventWait bounds how long a test waits for the events of its own
// connections; they normally arrive within one ReadTimeout.
const eventWait = 5 * time.Second

var (
	loopback4       = netip.MustParseAddr("127.0.0.1")
	loopback6       = netip.MustParseAddr("::1")
	loopback4Mapped = netip.AddrFrom16(loopback4.As16())
)

// newTestTracer starts a tracer that is closed when the test ends.
func newTestTracer(t testing.TB, opts TracerOptions) *Tracer {
	t.Helper()
	kerneltest.Require(t)
	if opts.Logger == nil {
		opts.Logger = zaptest.NewLogger(t)
	}
	tr, err := NewTracer(opts)
	if err != nil {
		t.Fatalf("NewTracer: %v", err)
	}
	t.Cleanup(func() {
		if err := tr.Close(); err != nil {
			t.Errorf("close tracer: %v", err)
		}
	})
	return tr
}

// collector reads a tracer's events in the background and keeps those that
// involve this process or a loopback address, and every authentication event
// (tests match those by the pid of the program they ran).
type collector struct {
	tr   *Tracer
	mu   sync.Mutex
	evs  []event.Event
	err  error
	done chan struct{}
}

func collect(t testing.TB, tr *Tracer) *collector {
	t.Helper()
	c := &collector{tr: tr, done: make(chan struct{})}
	self := uint32(os.Getpid())
	go func() {
		defer close(c.done)
		var ev event.Event
		for {
			if err := tr.Read(&ev); err != nil {
				if !errors.Is(err, ErrClosed) {
					c.mu.Lock()
					c.err = err
					c.mu.Unlock()
				}
				return
			}
			if ev.TGID == self || ev.Local.Addr().IsLoopback() || ev.Remote.Addr().IsLoopback() || ev.Kind.IsAuth() {
				c.mu.Lock()
				c.evs = append(c.evs, ev)
				c.mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() {
		tr.Close()
		<-c.done
		if c.err != nil {
			t.Errorf("tracer read: %v", c.err)
		}
	})
	return c
}

// waitFor returns the first collected event that match accepts, failing the
// test if none arrives within eventWait.
func (c *collector) waitFor(t testing.TB, what string, match func(*event.Event) bool) event.Event {
	t.Helper()
	deadline := time.Now().Add(eventWait)
	for {
		c.mu.Lock()
		for i := range c.evs {
			if match(&c.evs[i]) {
				ev := c.evs[i]
				c.mu.Unlock()
				return ev
			}
		}
		err := c.err
		c.mu.Unlock()
		if err != nil {
			t.Fatalf("waiting for %s: tracer read: %v", what, err)
		}
		if time.Now().After(deadline) {
			lost, err := c.tr.Lost()
			c.mu.Lock()
			n := len(c.evs)
			c.mu.Unlock()
			t.Fatalf("no %s event within %s (%d events kept; tracer lost %d, %v)", what, eventWait, n, lost, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// all returns a copy of the events collected so far.
func (c *collector) all() []event.Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]event.Event(nil), c.evs...)
}

// listenLoopback starts a loopback TCP listener that accepts and holds connections
// until the test ends.
func listenLoopback(t testing.TB, addr netip.Addr) netip.AddrPort {
	t.Helper()
	network := "tcp4"
	if addr.Is6() {
		network = "tcp6"
	}
	ln, err := net.Listen(network, netip.AddrPortFrom(addr, 0).String())
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
		for _, c := range conns {
			c.Close()
		}
	})
	return netip.MustParseAddrPort(ln.Addr().String())
}

// closedPort reserves a loopback port that nothing listens on: a bound TCP
// socket that never calls listenLoopback(). A SYN to it is answered with a RST.
func closedPort(t testing.TB, addr netip.Addr) netip.AddrPort {
	t.Helper()
	fd, local := boundSocket(t, addr)
	t.Cleanup(func() { unix.Close(fd) })
	return local
}

func boundSocket(t testing.TB, addr netip.Addr) (int, netip.AddrPort) {
	t.Helper()
	family := unix.AF_INET
	if addr.Is6() {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("socket: %v", err)
	}
	if err := unix.Bind(fd, toSockaddr(netip.AddrPortFrom(addr, 0))); err != nil {
		unix.Close(fd)
		t.Fatalf("bind %s: %v", addr, err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		unix.Close(fd)
		t.Fatalf("getsockname: %v", err)
	}
	return fd, fromSockaddr(sa)
}

func toSockaddr(ap netip.AddrPort) unix.Sockaddr {
	if ap.Addr().Is4() {
		return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	}
	return &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
}

func fromSockaddr(sa unix.Sockaddr) netip.AddrPort {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port))
	}
	return netip.AddrPort{}
}

// dialed is one blocking connect made by dialFrom.
type dialed struct {
	local netip.AddrPort // as bound before connect, v4-mapped unmapped
	tid   int
	comm  [event.CommLen]byte
	err   error // connect's result
	start uint64
	end   uint64 // CLOCK_MONOTONIC ns around the connect
}

// dialFrom connects a TCP socket, bound first to from so its port is known, to
// dst with a blocking connect() from a locked OS thread, and closes it when
// the test ends.
func dialFrom(t testing.TB, from netip.Addr, dst netip.AddrPort) dialed {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	fd, local := boundSocket(t, from)
	t.Cleanup(func() { unix.Close(fd) })
	d := dialed{
		local: netip.AddrPortFrom(local.Addr().Unmap(), local.Port()),
		tid:   unix.Gettid(),
		comm:  threadComm(t, unix.Gettid()),
	}
	d.start = monotonicNow(t)
	d.err = unix.Connect(fd, toSockaddr(dst))
	d.end = monotonicNow(t)
	return d
}

func threadComm(t testing.TB, tid int) [event.CommLen]byte {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/comm", tid))
	if err != nil {
		t.Fatalf("thread comm: %v", err)
	}
	var c [event.CommLen]byte
	copy(c[:event.CommLen-1], bytes.TrimSuffix(b, []byte("\n")))
	return c
}

func monotonicNow(t testing.TB) uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatalf("clock_gettime: %v", err)
	}
	return uint64(ts.Nano())
}

// selfCgroupID returns the cgroup v2 id (the inode of the cgroup directory) of
// this process, or 0 when there is no cgroup v2 hierarchy to look it up in.
func selfCgroupID(t testing.TB) uint64 {
	t.Helper()
	mount := ""
	mi, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatalf("mountinfo: %v", err)
	}
	defer mi.Close()
	sc := bufio.NewScanner(mi)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		for i, v := range f {
			if v == "-" && i+1 < len(f) && f[i+1] == "cgroup2" {
				mount = f[4]
			}
		}
	}
	cg, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatalf("cgroup: %v", err)
	}
	path := ""
	for _, line := range strings.Split(string(cg), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			path = p
		}
	}
	if mount == "" || path == "" {
		return 0
	}
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(mount, path), &st); err != nil {
		return 0
	}
	return st.Ino
}
