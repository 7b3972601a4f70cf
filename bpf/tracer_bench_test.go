package bpf

import (
	"errors"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/connwarden/connwarden/detector/event"
	"github.com/connwarden/connwarden/internal/kerneltest"
)

// BenchmarkConnect measures blocking loopback connects per second from one
// thread, and the CPU time this process spends per connect (the steadier
// figure on a shared machine; it includes the reader goroutine): untraced, then traced (a goroutine reading every event), then traced
// with a wakeup per event instead of batched wakeups, and reports the events
// the kernel lost. traced-kernel-time repeats the traced run with the
// kernel's BPF run-time statistics on (which cost a little themselves) to
// report the time spent in the tracer's programs per connect.
//
//	go test -run '^$' -bench BenchmarkConnect -benchmem -benchtime 2s -count 5 ./bpf/
//
// Each connect is one socket, connect() to a local listener that accepts and
// closes, and a close with SO_LINGER 0 (a RST, so no TIME_WAIT piles up): five
// events when traced (connect, attempt, established, inbound accept, reset).
func BenchmarkConnect(b *testing.B) {
	kerneltest.Require(b)
	server := acceptAndClose(b, loopback4)

	b.Run("untraced", func(b *testing.B) {
		benchConnects(b, server)
	})

	bt := startBenchTracer(b, TracerOptions{})
	b.Run("traced", func(b *testing.B) {
		bt.run(b, server)
	})
	b.Run("traced-kernel-time", func(b *testing.B) {
		stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
		if err != nil {
			b.Skipf("no BPF run-time statistics: %v", err)
		}
		defer stats.Close()
		run0 := bpfRuntime(b, bt.tr)
		bt.run(b, server)
		b.ReportMetric(float64(bpfRuntime(b, bt.tr)-run0)/float64(b.N), "bpf-ns/connect")
	})
	bt.close()

	bt = startBenchTracer(b, TracerOptions{WakeupBytes: 1})
	b.Run("traced-wakeup-per-event", func(b *testing.B) {
		bt.run(b, server)
	})
	bt.close()
}

// benchTracer is a tracer with a goroutine counting the events it reads.
type benchTracer struct {
	tr     *Tracer
	events atomic.Uint64
	done   chan struct{}
}

func startBenchTracer(b *testing.B, opts TracerOptions) *benchTracer {
	kerneltest.Require(b)
	opts.Logger = zap.NewNop()
	tr, err := NewTracer(opts)
	if err != nil {
		b.Fatalf("NewTracer: %v", err)
	}
	bt := &benchTracer{tr: tr, done: make(chan struct{})}
	go func() {
		defer close(bt.done)
		var ev event.Event
		for tr.Read(&ev) == nil {
			bt.events.Add(1)
		}
	}()
	b.Cleanup(bt.close)
	return bt
}

func (bt *benchTracer) close() {
	bt.tr.Close()
	<-bt.done
}

// run measures connects with the tracer attached, reporting events per
// connect and the events lost meanwhile.
func (bt *benchTracer) run(b *testing.B, server netip.AddrPort) {
	lost0, err := bt.tr.Lost()
	if err != nil {
		b.Fatal(err)
	}
	events0 := bt.events.Load()
	benchConnects(b, server)
	lost, err := bt.tr.Lost()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(lost-lost0), "lost")
	b.ReportMetric(float64(bt.events.Load()-events0)/float64(b.N), "events/connect")
}

// bpfRuntime sums the kernel's run-time count over the tracer's programs (0
// unless statistics are enabled).
func bpfRuntime(b *testing.B, tr *Tracer) time.Duration {
	var sum time.Duration
	for _, p := range tr.progs {
		st, err := p.Stats()
		if err != nil {
			b.Fatalf("program stats: %v", err)
		}
		sum += st.Runtime
	}
	return sum
}

func benchConnects(b *testing.B, server netip.AddrPort) {
	sa := &unix.SockaddrInet4{Port: int(server.Port()), Addr: server.Addr().As4()}
	linger := &unix.Linger{Onoff: 1, Linger: 0}
	b.ReportAllocs()
	cpu0 := processCPU(b)
	for b.Loop() {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			b.Fatalf("socket: %v", err)
		}
		if err := unix.Connect(fd, sa); err != nil {
			unix.Close(fd)
			b.Fatalf("connect %s: %v", server, err)
		}
		if err := unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, linger); err != nil {
			unix.Close(fd)
			b.Fatalf("linger: %v", err)
		}
		unix.Close(fd)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "connects/s")
	b.ReportMetric(float64(processCPU(b)-cpu0)/float64(b.N), "cpu-ns/connect")
}

// processCPU returns the CPU time this process has used, user and system, in
// ns. The system part includes the BPF programs and the loopback softirqs
// that run in the connecting thread, so per connect it compares traced and
// untraced runs even when other work on the machine skews the wall clock.
func processCPU(b *testing.B) int64 {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		b.Fatalf("getrusage: %v", err)
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// acceptAndClose starts a loopback listener that closes every connection it
// accepts, until the benchmark ends. It uses blocking accept(2) on its own
// thread rather than the Go netpoller, to keep the runtime's share of the
// measured work small.
func acceptAndClose(b *testing.B, addr netip.Addr) netip.AddrPort {
	fd, local := boundSocket(b, addr)
	if err := unix.Listen(fd, 4096); err != nil {
		unix.Close(fd)
		b.Fatalf("listen: %v", err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		for {
			nfd, _, err := unix.Accept4(fd, unix.SOCK_CLOEXEC)
			if errors.Is(err, unix.EINTR) || errors.Is(err, unix.ECONNABORTED) {
				continue
			}
			if err != nil {
				return // shut down
			}
			unix.Close(nfd)
		}
	}()
	b.Cleanup(func() {
		unix.Shutdown(fd, unix.SHUT_RDWR) // wakes the blocked accept
		wg.Wait()
		unix.Close(fd)
	})
	return local
}
