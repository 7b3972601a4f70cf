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
// thread, first untraced, then with the tracer attached and a goroutine
// reading its events, and reports the events the kernel lost.
//
//	go test -run '^$' -bench BenchmarkConnect -benchtime 3s -count 5 ./bpf/
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

	tr := newTestTracer(b, TracerOptions{Logger: zap.NewNop()})
	var events atomic.Uint64
	done := make(chan struct{})
	go func() {
		defer close(done)
		var ev event.Event
		for tr.Read(&ev) == nil {
			events.Add(1)
		}
	}()
	b.Cleanup(func() {
		tr.Close()
		<-done
	})

	// Kernel time in the tracer's programs, where the kernel keeps count.
	if stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME)); err != nil {
		b.Logf("no BPF run-time statistics: %v", err)
	} else {
		b.Cleanup(func() { stats.Close() })
	}

	b.Run("traced", func(b *testing.B) {
		lost0, err := tr.Lost()
		if err != nil {
			b.Fatal(err)
		}
		events0 := events.Load()
		run0 := bpfRuntime(b, tr)
		benchConnects(b, server)
		run := bpfRuntime(b, tr)
		lost, err := tr.Lost()
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(lost-lost0), "lost")
		b.ReportMetric(float64(events.Load()-events0)/float64(b.N), "events/connect")
		if run > run0 {
			b.ReportMetric(float64(run-run0)/float64(b.N), "bpf-ns/connect")
		}
	})
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
