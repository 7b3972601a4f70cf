package bpf

import (
	"errors"
	"net/netip"
	"os"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"

	"github.com/connwarden/connwarden/detector/event"
	"github.com/connwarden/connwarden/internal/kerneltest"
)

// TCP states as the kernel numbers them (include/net/tcp_states.h).
const (
	tcpEstablished = 1
	tcpSynSent     = 2
	tcpClose       = 7
)

// TestTracerConnect makes this test's own connects, IPv4, IPv6 and v4-mapped
// IPv6, to an open and to a closed loopback port, and checks every event the
// tracer reports for them.
func TestTracerConnect(t *testing.T) {
	tr := newTestTracer(t, TracerOptions{})
	c := collect(t, tr)
	pid := uint32(os.Getpid())
	uid := uint32(os.Getuid())
	cgroup := selfCgroupID(t)

	for _, tc := range []struct {
		name   string
		from   netip.Addr // the client socket's address and family
		server netip.Addr // where the listener or closed port is
		open   bool
	}{
		{"ipv4 open", loopback4, loopback4, true},
		{"ipv4 closed", loopback4, loopback4, false},
		{"ipv6 open", loopback6, loopback6, true},
		{"ipv6 closed", loopback6, loopback6, false},
		{"v4-mapped open", loopback4Mapped, loopback4, true},
		{"v4-mapped closed", loopback4Mapped, loopback4, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var server netip.AddrPort
			if tc.open {
				server = listenLoopback(t, tc.server)
			} else {
				server = closedPort(t, tc.server)
			}
			dst := server
			if tc.from.Is4In6() {
				dst = netip.AddrPortFrom(loopback4Mapped, server.Port())
			}
			d := dialFrom(t, tc.from, dst)
			wantErr := error(nil)
			result := int32(0)
			if !tc.open {
				wantErr = unix.ECONNREFUSED
				result = -event.ECONNREFUSED
			}
			if !errors.Is(d.err, wantErr) && d.err != wantErr {
				t.Fatalf("connect %s: %v, want %v", dst, d.err, wantErr)
			}

			proc := event.Event{
				PID:       uint32(d.tid),
				TGID:      pid,
				UID:       uid,
				Comm:      d.comm,
				Direction: event.DirOutbound,
			}
			with := func(kind event.Kind, state uint8, res int32, local, remote netip.AddrPort) event.Event {
				ev := proc
				ev.Kind, ev.State, ev.Result, ev.Local, ev.Remote = kind, state, res, local, remote
				return ev
			}
			want := []event.Event{
				with(event.KindConnect, 0, result, netip.AddrPort{}, server),
				with(event.KindTCPAttempt, tcpSynSent, 0, d.local, server),
			}
			if tc.open {
				want = append(want,
					with(event.KindTCPEstablished, tcpEstablished, 0, d.local, server),
					event.Event{Kind: event.KindInboundAccept, Direction: event.DirInbound, State: tcpEstablished, Local: server, Remote: d.local},
				)
			} else {
				want = append(want,
					with(event.KindTCPClose, tcpClose, result, d.local, server),
					event.Event{Kind: event.KindResetSent, Direction: event.DirInbound, Local: server, Remote: d.local},
				)
			}

			for _, w := range want {
				got := c.waitFor(t, w.Kind.String(), func(ev *event.Event) bool {
					return ev.Kind == w.Kind && ev.Remote == w.Remote &&
						(ev.Local == w.Local || w.Kind == event.KindConnect && ev.PID == w.PID)
				})
				// All but the server's passive open happen before connect()
				// returns; that one waits for the client's last ACK, which the
				// kernel may process a little later (ksoftirqd under load).
				end := d.end
				if w.Kind == event.KindInboundAccept {
					end = monotonicNow(t)
				}
				if got.Timestamp < d.start || got.Timestamp > end {
					t.Errorf("%s: timestamp %d outside [%d, %d]", w.Kind, got.Timestamp, d.start, end)
				}
				if w.Kind.HasProcess() {
					if got.Cgroup == 0 || cgroup != 0 && got.Cgroup != cgroup {
						t.Errorf("%s: cgroup %d, want %d (this process's cgroup v2 id)", w.Kind, got.Cgroup, cgroup)
					}
				} else if got.Cgroup != 0 {
					t.Errorf("%s: cgroup %d, want 0 for a kind without process", w.Kind, got.Cgroup)
				}
				got.Timestamp, got.Cgroup = 0, 0
				if diff := cmp.Diff(w, got, cmpopts.EquateComparable(netip.AddrPort{})); diff != "" {
					t.Errorf("%s event (-want +got):\n%s", w.Kind, diff)
				}
			}
		})
	}
}

// TestTracerHooks checks that the tracer picks the best TCP attempt hook the
// kernel accepts, reports why each better one was refused, and says so once in
// the log. On our machines (no kprobes, no trampolines) that must be the
// socket state tracepoint, with the kprobe refused for a missing kprobe
// interface and fentry for EPERM.
func TestTracerHooks(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	tr := newTestTracer(t, TracerOptions{Logger: zap.New(core)})
	r := tr.Hooks()

	// Which hook should win, found out independently: kprobes exist when the
	// kernel offers an interface for them; fentry when its program loads.
	kprobes := tracefsHasKprobes()
	fentryErr := loadAttemptProgram(t, HookFentry)
	want := HookTracepoint
	switch {
	case kprobes:
		want = HookKprobe
	case fentryErr == nil:
		want = HookFentry
	}
	if r.Attempt != want {
		t.Errorf("attempt hook %s, want %s (kprobes: %v, fentry load: %v): %s", r.Attempt, want, kprobes, fentryErr, r)
	}
	// Our machines (KERNEL.md): no kprobe_events, trampolines refused with
	// EPERM, so the tracepoint carries attempts and both refusals say why.
	if !kprobes && errors.Is(fentryErr, syscall.EPERM) {
		if len(r.Refused) != 2 || !errors.Is(r.Refused[0].Err, os.ErrNotExist) || !errors.Is(r.Refused[1].Err, syscall.EPERM) {
			t.Errorf("refusals %v, want kprobe with os.ErrNotExist and fentry with EPERM", r.Refused)
		}
	}

	// Every hook ranked above the chosen one is refused, in order, with a reason.
	var wantRefused []AttemptHook
	for _, h := range attemptHooks {
		if h == r.Attempt {
			break
		}
		wantRefused = append(wantRefused, h)
	}
	var gotRefused []AttemptHook
	for _, ref := range r.Refused {
		gotRefused = append(gotRefused, ref.Hook)
		if ref.Err == nil {
			t.Errorf("%s refused without a reason", ref.Hook)
		}
	}
	if diff := cmp.Diff(wantRefused, gotRefused); diff != "" {
		t.Errorf("refused hooks (-want +got):\n%s", diff)
	}

	wantPrograms := []string{
		"tracepoint/syscalls/sys_enter_connect",
		"tracepoint/syscalls/sys_exit_connect",
		"tracepoint/sock/inet_sock_set_state",
		"tracepoint/tcp/tcp_send_reset",
	}
	if r.Attempt != HookTracepoint {
		wantPrograms = append([]string{r.Attempt.String()}, wantPrograms...)
	}
	if r.Auth.Err == nil {
		wantPrograms = append(wantPrograms, "uprobe/pam_authenticate", "uretprobe/pam_authenticate",
			"uprobe/pam_acct_mgmt", "uretprobe/pam_acct_mgmt")
	} else if _, ok := entries0(logs)["authentication source unavailable"]; !ok {
		t.Errorf("authentication source unavailable (%v) but not logged", r.Auth.Err)
	}
	if diff := cmp.Diff(wantPrograms, r.Programs); diff != "" {
		t.Errorf("attached programs (-want +got):\n%s", diff)
	}

	entries := logs.All()
	if len(entries) != 1 {
		t.Fatalf("%d log entries at start-up, want 1: %v", len(entries), entries)
	}
	if entries[0].LoggerName != "tracer" || entries[0].Level != zapcore.InfoLevel {
		t.Errorf("start-up line from logger %q at %s, want \"tracer\" at info", entries[0].LoggerName, entries[0].Level)
	}
	fields := entries[0].ContextMap()
	if got := fields["attempt_hook"]; got != r.Attempt.String() {
		t.Errorf("logged attempt_hook %v, want %s", got, r.Attempt)
	}
	for _, ref := range r.Refused {
		if _, ok := fields[ref.Hook.String()+" refused"]; !ok {
			t.Errorf("log entry lacks the %s refusal: %v", ref.Hook, fields)
		}
	}
}

// entries0 returns the fields of the first log entry, or nil.
func entries0(logs *observer.ObservedLogs) map[string]any {
	if all := logs.All(); len(all) > 0 {
		return all[0].ContextMap()
	}
	return nil
}

// tracefsHasKprobes reports whether the kernel offers kprobes through either
// interface the library uses: the kprobe PMU or tracefs kprobe_events.
func tracefsHasKprobes() bool {
	for _, p := range []string{
		"/sys/bus/event_source/devices/kprobe/type",
		"/sys/kernel/tracing/kprobe_events",
		"/sys/kernel/debug/tracing/kprobe_events",
	} {
		if _, err := os.Stat(p); err == nil {
			return true
		}
	}
	return false
}

// TestTracerLost fills a one-page ring buffer that nobody reads with a bounded
// burst of connects and checks the kernel counts what did not fit.
func TestTracerLost(t *testing.T) {
	tr := newTestTracer(t, TracerOptions{
		RingBufferBytes: os.Getpagesize(),
		WakeupBytes:     1,
		ReadTimeout:     time.Hour,
	})
	server := listenLoopback(t, loopback4)
	// Each connect makes at least four records of 104 bytes; 200 of them are
	// many times one page.
	const n = 200
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; i < n && time.Now().Before(deadline); i++ {
		d := dialFrom(t, loopback4, server)
		if d.err != nil {
			t.Fatalf("connect %d: %v", i, d.err)
		}
	}
	lost, err := tr.Lost()
	if err != nil {
		t.Fatal(err)
	}
	if lost == 0 {
		t.Errorf("Lost() = 0 after a burst of %d connects into a %d-byte ring", n, os.Getpagesize())
	}
	t.Logf("lost %d events", lost)
}

// TestTracerProcesses checks the per-process counters show this test's
// attempts and failures.
func TestTracerProcesses(t *testing.T) {
	tr := newTestTracer(t, TracerOptions{})
	c := collect(t, tr)
	open := listenLoopback(t, loopback4)
	closed := closedPort(t, loopback4)
	const attempts, failures = 3, 2
	var last dialed
	for i := 0; i < attempts; i++ {
		last = dialFrom(t, loopback4, open)
	}
	for i := 0; i < failures; i++ {
		last = dialFrom(t, loopback4, closed)
	}
	// The last failure's outcome is counted before its event is written.
	c.waitFor(t, "tcp_close", func(ev *event.Event) bool {
		return ev.Kind == event.KindTCPClose && ev.Local == last.local
	})

	procs, err := tr.Processes()
	if err != nil {
		t.Fatal(err)
	}
	var self *ProcessStats
	for i := range procs {
		if procs[i].TGID == uint32(os.Getpid()) {
			self = &procs[i]
		}
	}
	if self == nil {
		t.Fatalf("tgid %d not among %d processes", os.Getpid(), len(procs))
	}
	if self.Attempts != attempts+failures || self.Failures != failures {
		t.Errorf("attempts %d, failures %d; want %d, %d", self.Attempts, self.Failures, attempts+failures, failures)
	}
	if self.LastSeen < last.start {
		t.Errorf("last seen %d before the last connect started (%d)", self.LastSeen, last.start)
	}
	want := event.Event{Comm: last.comm}
	if self.Comm != want.CommString() {
		t.Errorf("comm %q, want %q", self.Comm, want.CommString())
	}
}

// TestTracerExcludeTGID checks that the kernel drops this process's own
// events when asked to, while still reporting the inbound side.
func TestTracerExcludeTGID(t *testing.T) {
	self := uint32(os.Getpid())
	tr := newTestTracer(t, TracerOptions{ExcludeTGID: self})
	c := collect(t, tr)
	open := listenLoopback(t, loopback4)
	closed := closedPort(t, loopback4)
	dialFrom(t, loopback4, open)
	dialFrom(t, loopback4, closed)
	// Records are read in the order they were written. The accept of a later
	// connection was written after every record of the earlier ones, so once
	// it is read, nothing of those is still on its way.
	marker := dialFrom(t, loopback4, open)
	c.waitFor(t, "inbound accept", func(ev *event.Event) bool {
		return ev.Kind == event.KindInboundAccept && ev.Remote == marker.local
	})
	for _, ev := range c.all() {
		if ev.TGID == self {
			t.Errorf("event of the excluded process: %+v", ev)
		}
	}
	procs, err := tr.Processes()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range procs {
		if p.TGID == self {
			t.Errorf("excluded process counted: %+v", p)
		}
	}
}

// TestTracerClose checks that Close unblocks a pending Read and that every
// accessor then reports ErrClosed.
func TestTracerClose(t *testing.T) {
	tr := newTestTracer(t, TracerOptions{ReadTimeout: 10 * time.Millisecond})
	errc := make(chan error, 1)
	go func() {
		var ev event.Event
		for {
			if err := tr.Read(&ev); err != nil {
				errc <- err
				return
			}
		}
	}()
	time.Sleep(50 * time.Millisecond) // let Read block, and poll a few times
	if err := tr.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, ErrClosed) {
			t.Errorf("Read after Close: %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Read still blocked 5s after Close")
	}
	var ev event.Event
	if err := tr.Read(&ev); !errors.Is(err, ErrClosed) {
		t.Errorf("second Read after Close: %v, want ErrClosed", err)
	}
	if _, err := tr.Lost(); !errors.Is(err, ErrClosed) {
		t.Errorf("Lost after Close: %v, want ErrClosed", err)
	}
	if _, err := tr.Processes(); !errors.Is(err, ErrClosed) {
		t.Errorf("Processes after Close: %v, want ErrClosed", err)
	}
	if err := tr.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// TestTracerOptions checks the option validation that needs no kernel.
func TestTracerOptions(t *testing.T) {
	page := os.Getpagesize()
	for _, tc := range []struct {
		name string
		opts TracerOptions
		ok   bool
	}{
		{"defaults", TracerOptions{}, true},
		{"one page", TracerOptions{RingBufferBytes: page}, true},
		{"not a power of two", TracerOptions{RingBufferBytes: 3 * page}, false},
		{"below a page", TracerOptions{RingBufferBytes: page / 2}, false},
		{"wakeup at ring size", TracerOptions{RingBufferBytes: page, WakeupBytes: page}, false},
		{"negative wakeup", TracerOptions{WakeupBytes: -1}, false},
		{"short timeout", TracerOptions{ReadTimeout: time.Microsecond}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, err := tc.opts.withDefaults()
			if (err == nil) != tc.ok {
				t.Fatalf("withDefaults: %v, want ok=%v", err, tc.ok)
			}
			if err != nil {
				return
			}
			if o.WakeupBytes <= 0 || o.WakeupBytes >= o.RingBufferBytes || o.ReadTimeout <= 0 || o.Logger == nil {
				t.Errorf("defaults not applied: %+v", o)
			}
		})
	}
}

// TestTracerReadAllocs checks that Read does not allocate per event: the
// events of a burst of connects are already in the ring when the reads are
// counted, and nothing else in the process runs meanwhile.
func TestTracerReadAllocs(t *testing.T) {
	tr := newTestTracer(t, TracerOptions{})
	closed := closedPort(t, loopback4)
	// Each refused connect writes four records (connect, attempt, close, reset).
	const connects, reads = 100, 300
	for range connects {
		if d := dialFrom(t, loopback4, closed); !errors.Is(d.err, unix.ECONNREFUSED) {
			t.Fatalf("connect to closed port: %v", d.err)
		}
	}
	var ev event.Event
	var err error
	allocs := testing.AllocsPerRun(reads, func() {
		if e := tr.Read(&ev); e != nil && err == nil {
			err = e
		}
	})
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	if allocs != 0 {
		t.Errorf("Read allocates %v times per event, want 0", allocs)
	}
}

// TestTracerConnectTimeout checks that a handshake that times out is reported
// with -ETIMEDOUT, read from the socket's error in the kernel. The listener's
// accept queue (backlog 0) is filled by a first connection, so the kernel
// drops the second one's SYNs; TCP_SYNCNT 1 gives up after about 3s.
func TestTracerConnectTimeout(t *testing.T) {
	tr := newTestTracer(t, TracerOptions{})
	c := collect(t, tr)
	lfd, server := boundSocket(t, loopback4)
	t.Cleanup(func() { unix.Close(lfd) })
	if err := unix.Listen(lfd, 0); err != nil {
		t.Fatalf("listen: %v", err)
	}
	if d := dialFrom(t, loopback4, server); d.err != nil {
		t.Fatalf("connect to fill the accept queue: %v", d.err)
	}

	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	fd, local := boundSocket(t, loopback4)
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_SYNCNT, 1); err != nil {
		t.Fatalf("TCP_SYNCNT: %v", err)
	}
	tid := unix.Gettid()
	start := monotonicNow(t)
	err := unix.Connect(fd, toSockaddr(server))
	if !errors.Is(err, unix.ETIMEDOUT) {
		t.Fatalf("connect to a full accept queue: %v, want ETIMEDOUT", err)
	}

	want := event.Event{
		Kind: event.KindTCPClose, Direction: event.DirOutbound, State: tcpClose, Result: -event.ETIMEDOUT,
		PID: uint32(tid), TGID: uint32(os.Getpid()), UID: uint32(os.Getuid()), Comm: threadComm(t, tid),
		Local: local, Remote: server,
	}
	got := c.waitFor(t, "tcp_close", func(ev *event.Event) bool {
		return ev.Kind == event.KindTCPClose && ev.Local == local
	})
	got.Timestamp, got.Cgroup = 0, 0
	if diff := cmp.Diff(want, got, cmpopts.EquateComparable(netip.AddrPort{})); diff != "" {
		t.Errorf("tcp_close (-want +got):\n%s", diff)
	}
	connect := c.waitFor(t, "connect", func(ev *event.Event) bool {
		return ev.Kind == event.KindConnect && ev.PID == uint32(tid) && ev.Remote == server && ev.Timestamp >= start
	})
	if connect.Result != -event.ETIMEDOUT {
		t.Errorf("connect result %d, want %d", connect.Result, -event.ETIMEDOUT)
	}
}

// TestAttemptHookProgramsVerify loads the tcp_connect programs the way
// NewTracer does, against shared maps, without attaching them: the verifier
// must accept the kprobe program even where kprobes cannot be attached, so a
// change that breaks it is caught on our machines too. fentry needs
// trampolines to load at all; where the kernel refuses it, that is logged.
func TestAttemptHookProgramsVerify(t *testing.T) {
	kerneltest.Require(t)
	if err := loadAttemptProgram(t, HookKprobe); err != nil {
		t.Errorf("load kprobe program: %v", err)
	}
	switch err := loadAttemptProgram(t, HookFentry); {
	case err == nil:
	case errors.Is(err, syscall.EPERM):
		t.Logf("fentry program not loadable here: %v", err)
	default:
		t.Errorf("load fentry program: %v", err)
	}
}

// loadAttemptProgram loads one tcp_connect program set (kprobe or fentry)
// as NewTracer does, against freshly loaded maps, without attaching it, and
// closes it again. It returns the load error.
func loadAttemptProgram(t *testing.T, h AttemptHook) error {
	t.Helper()
	spec, err := loadConnect()
	if err != nil {
		t.Fatal(err)
	}
	spec.Maps["events"].MaxEntries = uint32(os.Getpagesize())
	var maps connectMaps
	if err := spec.LoadAndAssign(&maps, nil); err != nil {
		t.Fatalf("load maps: %v", err)
	}
	defer maps.Close()
	shared, err := sharedMaps(spec, &maps)
	if err != nil {
		t.Fatal(err)
	}
	var prog *ebpf.Program
	switch h {
	case HookKprobe:
		var set kprobeSet
		err = spec.LoadAndAssign(&set, shared)
		prog = set.Prog
	case HookFentry:
		var set fentrySet
		err = spec.LoadAndAssign(&set, shared)
		prog = set.Prog
	default:
		t.Fatalf("%s has no program of its own", h)
	}
	if err != nil {
		return err
	}
	return prog.Close()
}

// TestTracerNonBlockingConnect checks the asynchronous path: connect()
// returns -EINPROGRESS, and the outcome arrives later as an established
// handshake carrying the process recorded at the attempt.
func TestTracerNonBlockingConnect(t *testing.T) {
	tr := newTestTracer(t, TracerOptions{})
	c := collect(t, tr)
	server := listenLoopback(t, loopback6)

	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	fd, local := boundSocket(t, loopback6)
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.SetNonblock(fd, true); err != nil {
		t.Fatal(err)
	}
	tid := uint32(unix.Gettid())
	if err := unix.Connect(fd, toSockaddr(server)); !errors.Is(err, unix.EINPROGRESS) {
		t.Fatalf("non-blocking connect: %v, want EINPROGRESS", err)
	}

	connect := c.waitFor(t, "connect", func(ev *event.Event) bool {
		return ev.Kind == event.KindConnect && ev.PID == tid && ev.Remote == server
	})
	if connect.Result != -event.EINPROGRESS || connect.Outcome() != event.OutcomePending {
		t.Errorf("connect result %d (%s), want %d (pending)", connect.Result, connect.Outcome(), -event.EINPROGRESS)
	}
	est := c.waitFor(t, "tcp_established", func(ev *event.Event) bool {
		return ev.Kind == event.KindTCPEstablished && ev.Local == local && ev.Remote == server
	})
	if est.PID != tid || est.TGID != uint32(os.Getpid()) || est.Outcome() != event.OutcomeSuccess {
		t.Errorf("established event %+v, want pid %d tgid %d", est, tid, os.Getpid())
	}
}
