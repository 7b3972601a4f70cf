package bpf

import (
	"bufio"
	"bytes"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/connwarden/connwarden/detector/event"
	"github.com/connwarden/connwarden/internal/kerneltest"
)

// buildPAMCall compiles testdata/pamcall.c, a program that authenticates
// through the system's libpam while holding inbound connections.
func buildPAMCall(t *testing.T) string {
	t.Helper()
	cc, err := exec.LookPath("gcc")
	if err != nil {
		kerneltest.Unsupported(t, "gcc not found: cannot build the PAM test program")
	}
	bin := filepath.Join(t.TempDir(), "pamcall")
	out, err := exec.Command(cc, "-O2", "-Wall", "-o", bin, "testdata/pamcall.c", "-ldl").CombinedOutput()
	if err != nil {
		t.Fatalf("build pamcall: %v\n%s", err, out)
	}
	return bin
}

// pamRun is what one run of pamcall printed.
type pamRun struct {
	pid   uint32
	peers []netip.AddrPort // client ends of the inbound connections it held
	auth  int32
	acct  int32
}

func runPAMCall(t *testing.T, bin string, args ...string) pamRun {
	t.Helper()
	cmd := exec.Command(bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("pamcall %v: %v\n%s", args, err, stderr.String())
	}
	r := pamRun{pid: uint32(cmd.Process.Pid)}
	sc := bufio.NewScanner(&stdout)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) == 3 && f[0] == "peer":
			port, _ := strconv.ParseUint(f[2], 10, 16)
			r.peers = append(r.peers, netip.AddrPortFrom(netip.MustParseAddr(f[1]), uint16(port)))
		case len(f) == 2 && f[0] == "auth":
			n, _ := strconv.Atoi(f[1])
			r.auth = int32(n)
		case len(f) == 2 && f[0] == "acct":
			n, _ := strconv.Atoi(f[1])
			r.acct = int32(n)
		}
	}
	return r
}

// TestPAMEvents runs a real program through the system's libpam and checks
// the tracer's uprobes report each call with its result, the PAM service and
// user read from the handle, and the remote peer: the one inbound connection
// the process holds, or none when it holds none or several.
func TestPAMEvents(t *testing.T) {
	tr := newTestTracer(t, TracerOptions{ReadTimeout: 5e6})
	if err := tr.Hooks().Auth.Err; err != nil {
		if errors.Is(err, errNoLibrary) {
			kerneltest.Unsupported(t, "no libpam on this machine: %v", err)
		}
		t.Fatalf("authentication source: %v", err)
	}
	bin := buildPAMCall(t)
	c := collect(t, tr)

	for _, tc := range []struct {
		name    string
		inbound int
		v6      bool
		peers   uint8
		known   bool
	}{
		{name: "one inbound v4", inbound: 1, peers: 1, known: true},
		{name: "one inbound v6", inbound: 1, v6: true, peers: 1, known: true},
		{name: "no inbound", inbound: 0, peers: 0},
		{name: "two inbound", inbound: 2, peers: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := []string{"connwarden-test", "cw-nosuchuser", "wrong", strconv.Itoa(tc.inbound)}
			if tc.v6 {
				args = append(args, "v6")
			}
			run := runPAMCall(t, bin, args...)
			if len(run.peers) != tc.inbound {
				t.Fatalf("pamcall held %d connections, want %d", len(run.peers), tc.inbound)
			}
			for _, k := range []struct {
				kind   event.Kind
				result int32
			}{{event.KindAuth, run.auth}, {event.KindAuthAccount, run.acct}} {
				ev := c.waitFor(t, k.kind.String()+" event", func(ev *event.Event) bool {
					return ev.Kind == k.kind && ev.TGID == run.pid
				})
				if ev.Result != k.result || ev.Result == event.PAMSuccess {
					t.Errorf("%s result %s, pamcall saw %s (a failure)", k.kind,
						event.PAMResultName(ev.Result), event.PAMResultName(k.result))
				}
				if got := ev.Outcome(); got != event.OutcomeFailure {
					t.Errorf("%s outcome %s, want failure", k.kind, got)
				}
				if got := ev.CommString(); got != "pamcall" {
					t.Errorf("%s comm %q, want pamcall", k.kind, got)
				}
				if got, want := string(ev.ServiceBytes()), "connwarden-test"; got != want {
					t.Errorf("%s service %q, want %q", k.kind, got, want)
				}
				if got, want := string(ev.UserBytes()), "cw-nosuchuser"; got != want {
					t.Errorf("%s user %q, want %q", k.kind, got, want)
				}
				if ev.UID != uint32(os.Getuid()) {
					t.Errorf("%s uid %d, want %d", k.kind, ev.UID, os.Getuid())
				}
				if ev.Peers != tc.peers {
					t.Errorf("%s peers %d, want %d", k.kind, ev.Peers, tc.peers)
				}
				if !tc.known {
					if ev.PeerKnown() || ev.Direction != event.DirUnknown {
						t.Errorf("%s names peer %v (%s); want unknown", k.kind, ev.Remote, ev.Direction)
					}
					continue
				}
				want := run.peers[0]
				if diff := cmp.Diff(want.String(), ev.Remote.String()); diff != "" {
					t.Errorf("%s remote peer (-pamcall +event):\n%s", k.kind, diff)
				}
				if ev.Direction != event.DirInbound || !ev.Local.Addr().IsLoopback() {
					t.Errorf("%s local %v direction %s; want the loopback listener, inbound", k.kind, ev.Local, ev.Direction)
				}
			}
		})
	}
}

// TestPAMSourceUnavailable: without a usable libpam the tracer still runs,
// and says why it has no authentication events.
func TestPAMSourceUnavailable(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts PAMOptions
		want func(error) bool
	}{
		{"disabled", PAMOptions{Disabled: true}, func(err error) bool { return errors.Is(err, ErrAuthDisabled) }},
		{"no such library", PAMOptions{Library: filepath.Join(t.TempDir(), "libpam.so.0")},
			func(err error) bool { return errors.Is(err, os.ErrNotExist) }},
		{"no libpam below root", PAMOptions{Root: t.TempDir()}, func(err error) bool { return errors.Is(err, errNoLibrary) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := newTestTracer(t, TracerOptions{PAM: tc.opts})
			r := tr.Hooks()
			if r.Auth.Library != "" || !tc.want(r.Auth.Err) {
				t.Errorf("auth report %+v, want no library and the reason", r.Auth)
			}
			for _, p := range r.Programs {
				if strings.Contains(p, "pam_") {
					t.Errorf("program %s attached without a source", p)
				}
			}
			// The connection tracer works regardless.
			c := collect(t, tr)
			srv := listenLoopback(t, loopback4)
			dialAndClose(t, srv)
			c.waitFor(t, "inbound accept", func(ev *event.Event) bool {
				return ev.Kind == event.KindInboundAccept && ev.Local == srv
			})
		})
	}
}

// TestInboundShort: an inbound connection that ends within ShortSession of
// its passive open is reported with its lifetime; one that outlives it is not.
func TestInboundShort(t *testing.T) {
	const short = 400 * time.Millisecond
	tr := newTestTracer(t, TracerOptions{ShortSession: short, ReadTimeout: 5 * time.Millisecond})
	c := collect(t, tr)
	for _, addr := range []netip.Addr{loopback4, loopback6} {
		t.Run(addr.String(), func(t *testing.T) {
			srv := listenLoopback(t, addr)
			quick := dialHold(t, srv, 0)
			longStart := monoNow(t)
			long := dialHold(t, srv, 2*short)
			longEnd := monoNow(t)
			ev := c.waitFor(t, "short session", func(ev *event.Event) bool {
				return ev.Kind == event.KindInboundShort && ev.Remote == quick
			})
			if ev.Local != srv || ev.Direction != event.DirInbound || ev.LifetimeMS >= uint32(short.Milliseconds()) {
				t.Errorf("short session %+v: want local %v, inbound, lifetime under %v", ev, srv, short)
			}
			// A quick connection made after the long one closed is reported
			// after anything the long one's close caused: one ring, records
			// in the order they were reserved. (Loopback reuses a TIME_WAIT
			// four-tuple at once, so the marker may have the long one's
			// address: the check below goes by time too.)
			marker := dialHold(t, srv, 0)
			c.waitFor(t, "marker short session", func(ev *event.Event) bool {
				return ev.Kind == event.KindInboundShort && ev.Remote == marker
			})
			for _, ev := range c.all() {
				if ev.Kind == event.KindInboundShort && ev.Remote == long && ev.Timestamp >= longStart && ev.Timestamp <= longEnd {
					t.Errorf("connection held %v reported short: %+v", 2*short, ev)
				}
			}
		})
	}
}

// dialHold connects to srv, keeps the connection for hold, closes it, and
// returns its local end (the peer the listener sees).
func dialHold(t *testing.T, srv netip.AddrPort, hold time.Duration) netip.AddrPort {
	t.Helper()
	conn, err := net.DialTimeout("tcp", srv.String(), eventWait)
	if err != nil {
		t.Fatalf("dial %v: %v", srv, err)
	}
	local := netip.MustParseAddrPort(conn.LocalAddr().String())
	time.Sleep(hold)
	conn.Close()
	return netip.AddrPortFrom(local.Addr().Unmap(), local.Port())
}

func dialAndClose(t *testing.T, srv netip.AddrPort) { dialHold(t, srv, 0) }

// monoNow is CLOCK_MONOTONIC in ns, the clock of event timestamps.
func monoNow(t *testing.T) uint64 {
	t.Helper()
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	return uint64(ts.Nano())
}

// TestPAMEventsThroughTracefs: the fallback that needs no CAP_SYS_ADMIN (a
// uprobe made through uprobe_events) reports the same events, and removes
// its uprobe events when the tracer closes.
func TestPAMEventsThroughTracefs(t *testing.T) {
	tracefsUprobesOnly = true
	t.Cleanup(func() { tracefsUprobesOnly = false })
	opts := TracerOptions{ReadTimeout: 5 * time.Millisecond}
	kerneltest.Require(t)
	tr, err := NewTracer(opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.Hooks().Auth.Err; err != nil {
		if errors.Is(err, errNoLibrary) {
			kerneltest.Unsupported(t, "no libpam on this machine: %v", err)
		}
		t.Fatalf("authentication source through tracefs: %v", err)
	}
	group := "connwarden_" + strconv.Itoa(os.Getpid()) + "/"
	if b, _ := os.ReadFile(filepath.Join(tracefsDir, "uprobe_events")); strings.Count(string(b), group) != 4 {
		t.Errorf("uprobe_events holds %d of our events, want 4:\n%s", strings.Count(string(b), group), b)
	}
	bin := buildPAMCall(t)
	c := collect(t, tr)
	run := runPAMCall(t, bin, "connwarden-test", "cw-nosuchuser", "wrong", "1")
	ev := c.waitFor(t, "auth event", func(ev *event.Event) bool { return ev.Kind == event.KindAuth && ev.TGID == run.pid })
	if ev.Remote != run.peers[0] || ev.Result != run.auth {
		t.Errorf("auth event peer %v result %d, want %v and %d", ev.Remote, ev.Result, run.peers[0], run.auth)
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(tracefsDir, "uprobe_events")); strings.Contains(string(b), group) {
		t.Errorf("uprobe events left after Close:\n%s", b)
	}
}
