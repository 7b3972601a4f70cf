package bpf

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"go.uber.org/zap"

	"github.com/connwarden/connwarden/detector/event"
)

// Defaults for TracerOptions fields left zero.
const (
	DefaultRingBufferBytes = 4 << 20
	DefaultWakeupBytes     = 64 << 10
	DefaultReadTimeout     = 50 * time.Millisecond
	DefaultShortSession    = 5 * time.Second
)

// ErrClosed is returned by a Tracer's Read, Lost and Processes once it is
// closed, and by a Blocklist's methods once it is closed or removed; each
// wraps it with what was attempted.
var ErrClosed = errors.New("closed")

// TracerOptions configures NewTracer. The zero value is usable.
type TracerOptions struct {
	// RingBufferBytes is the size of the kernel ring buffer: a power of two,
	// at least one page. Default DefaultRingBufferBytes (4 MiB, about 40k
	// events).
	RingBufferBytes int
	// WakeupBytes is how much unread data the kernel lets pile up before it
	// wakes the reader; below it, records are submitted without a wakeup and
	// Read finds them when its ReadTimeout expires. Up to the size of one
	// event record (96) it wakes on every event.
	// Default: DefaultWakeupBytes (64 KiB), or a quarter of the ring if smaller.
	// Must be below RingBufferBytes.
	WakeupBytes int
	// ReadTimeout bounds the latency of events submitted without a wakeup: Read
	// looks at the ring at least this often while it blocks, so an event reaches
	// the caller at most about ReadTimeout after the kernel wrote it. Default
	// DefaultReadTimeout (50ms).
	ReadTimeout time.Duration
	// ExcludeTGID is a process (normally the agent itself) whose connects and
	// handshakes the kernel does not report. 0 excludes nothing.
	ExcludeTGID uint32
	// ShortSession is the lifetime under which an inbound connection that
	// ends is reported as event.KindInboundShort. Default
	// DefaultShortSession; negative reports none.
	ShortSession time.Duration
	// PAM configures authentication events (uprobes on libpam). When they
	// cannot be had, the tracer runs without them and says why once, in the
	// start-up line and in Hooks().Auth.
	PAM PAMOptions
	// Logger receives, named "tracer", the one start-up line about the chosen
	// hooks; nothing is logged per event. nil discards it.
	Logger *zap.Logger
}

func (o TracerOptions) withDefaults() (TracerOptions, error) {
	page := os.Getpagesize()
	if o.RingBufferBytes == 0 {
		o.RingBufferBytes = DefaultRingBufferBytes
	}
	if o.RingBufferBytes < page || o.RingBufferBytes&(o.RingBufferBytes-1) != 0 {
		return o, fmt.Errorf("ring buffer bytes %d: want a power of two of at least %d", o.RingBufferBytes, page)
	}
	if o.RingBufferBytes > 1<<30 {
		return o, fmt.Errorf("ring buffer bytes %d: want at most %d", o.RingBufferBytes, 1<<30)
	}
	if o.WakeupBytes == 0 {
		o.WakeupBytes = min(DefaultWakeupBytes, o.RingBufferBytes/4)
	}
	if o.WakeupBytes < 0 || o.WakeupBytes >= o.RingBufferBytes {
		return o, fmt.Errorf("wakeup bytes %d: want 1 to %d, below the ring buffer size", o.WakeupBytes, o.RingBufferBytes-1)
	}
	if o.ReadTimeout == 0 {
		o.ReadTimeout = DefaultReadTimeout
	}
	if o.ReadTimeout < time.Millisecond {
		return o, fmt.Errorf("read timeout %s: want at least 1ms", o.ReadTimeout)
	}
	if o.ShortSession == 0 {
		o.ShortSession = DefaultShortSession
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	return o, nil
}

// ProcessStats is one process's outbound TCP activity as the kernel counted it
// (the per-process LRU map: the least recently active processes are evicted
// once it holds 8192).
type ProcessStats struct {
	TGID uint32
	// Comm is the name of the thread that made the latest attempt.
	Comm string
	// Attempts counts outbound TCP handshakes started.
	Attempts uint64
	// Failures counts handshakes that ended without being established
	// (refused, timed out, or abandoned).
	Failures uint64
	// LastSeen is the CLOCK_MONOTONIC time in ns of the latest attempt or
	// failure, on the same clock as event.Event.Timestamp.
	LastSeen uint64
}

// tracepointSet is loaded on every kernel: the programs that are tracepoints.
type tracepointSet struct {
	EnterConnect *ebpf.Program `ebpf:"tp_enter_connect"`
	ExitConnect  *ebpf.Program `ebpf:"tp_exit_connect"`
	SetState     *ebpf.Program `ebpf:"tp_sock_set_state"`
	SendReset    *ebpf.Program `ebpf:"tp_send_reset"`
}

// Tracer reports connection events from the kernel: outbound connects and TCP
// handshakes with their outcome, passive opens, inbound connections that ended
// soon after they began, RSTs sent, and authentication calls to libpam.
//
// Read is for one goroutine; Hooks, Lost and Processes may be called
// concurrently with it, and Close from any goroutine, which unblocks Read.
type Tracer struct {
	maps    connectMaps
	reader  *ringbuf.Reader
	rec     ringbuf.Record // reused by Read
	timeout time.Duration
	hooks   HookReport
	progs   []*ebpf.Program // attached, for run-time statistics

	// closers are released by Close in reverse order of opening.
	closers []namedCloser

	// mu guards closed against the map readers (Lost, Processes), so Close does
	// not pull a map out from under them. Read does not take it: Close must be
	// able to interrupt it.
	mu     sync.RWMutex
	closed bool
}

type namedCloser struct {
	name string
	c    io.Closer
}

// NewTracer loads the connection tracer into the kernel and attaches it. It
// tries the TCP attempt hooks best first (see AttemptHook) and logs the choice
// once. On error, whatever it had opened is closed again.
func NewTracer(opts TracerOptions) (_ *Tracer, err error) {
	opts, err = opts.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("tracer options: %w", err)
	}
	log := opts.Logger.Named("tracer")

	spec, err := loadConnect()
	if err != nil {
		return nil, fmt.Errorf("load tracer object: %w", err)
	}
	var specs connectSpecs
	if err := spec.Assign(&specs); err != nil {
		return nil, fmt.Errorf("tracer object: %w", err)
	}
	specs.Events.MaxEntries = uint32(opts.RingBufferBytes)
	if err := specs.ExcludeTgid.Set(opts.ExcludeTGID); err != nil {
		return nil, fmt.Errorf("set exclude_tgid: %w", err)
	}
	if err := specs.WakeupBytes.Set(uint64(opts.WakeupBytes)); err != nil {
		return nil, fmt.Errorf("set wakeup_bytes: %w", err)
	}
	if err := specs.ShortSessionNs.Set(uint64(max(opts.ShortSession, 0))); err != nil {
		return nil, fmt.Errorf("set short_session_ns: %w", err)
	}

	t := &Tracer{timeout: opts.ReadTimeout}
	defer func() {
		if err != nil {
			err = errors.Join(err, t.release())
		}
	}()

	if err := spec.LoadAndAssign(&t.maps, nil); err != nil {
		return nil, fmt.Errorf("load tracer maps: %w", err)
	}
	t.closers = append(t.closers, namedCloser{"maps", &t.maps})
	shared, err := sharedMaps(spec, &t.maps)
	if err != nil {
		return nil, err
	}

	hook, refused, prog, l := chooseAttemptHook(spec, shared)
	t.hooks = HookReport{Attempt: hook, Refused: refused}
	if prog != nil {
		t.closers = append(t.closers, namedCloser{hook.String() + " program", prog})
		t.closers = append(t.closers, namedCloser{hook.String() + " link", l})
		t.hooks.Programs = append(t.hooks.Programs, hook.String())
		t.progs = append(t.progs, prog)
	}

	if err := specs.AttemptFromState.Set(hook == HookTracepoint); err != nil {
		return nil, fmt.Errorf("set attempt_from_state: %w", err)
	}
	var tps tracepointSet
	if err := spec.LoadAndAssign(&tps, shared); err != nil {
		return nil, fmt.Errorf("load tracepoint programs: %w", err)
	}
	tracepoints := []struct {
		group, name string
		prog        *ebpf.Program
	}{
		{"syscalls", "sys_enter_connect", tps.EnterConnect},
		{"syscalls", "sys_exit_connect", tps.ExitConnect},
		{"sock", "inet_sock_set_state", tps.SetState},
		{"tcp", "tcp_send_reset", tps.SendReset},
	}
	for _, tp := range tracepoints {
		t.closers = append(t.closers, namedCloser{"tracepoint program " + tp.name, tp.prog})
	}
	for _, tp := range tracepoints {
		name := "tracepoint/" + tp.group + "/" + tp.name
		l, err := link.Tracepoint(tp.group, tp.name, tp.prog, nil)
		if err != nil {
			return nil, fmt.Errorf("attach %s: %w", name, err)
		}
		t.closers = append(t.closers, namedCloser{name + " link", l})
		t.hooks.Programs = append(t.hooks.Programs, name)
		t.progs = append(t.progs, tp.prog)
	}

	lib, err := t.attachPAM(opts.PAM, opts.ExcludeTGID, uint64(opts.WakeupBytes))
	t.hooks.Auth = AuthReport{Library: lib, Err: err}

	t.reader, err = ringbuf.NewReader(t.maps.Events)
	if err != nil {
		return nil, fmt.Errorf("open ring buffer reader: %w", err)
	}
	t.closers = append(t.closers, namedCloser{"ring buffer reader", t.reader})
	t.reader.SetDeadline(time.Now().Add(t.timeout))

	fields := []zap.Field{
		zap.Stringer("attempt_hook", hook),
		zap.Strings("programs", t.hooks.Programs),
		zap.Int("ring_buffer_bytes", opts.RingBufferBytes),
		zap.Int("wakeup_bytes", opts.WakeupBytes),
		zap.Duration("read_timeout", opts.ReadTimeout),
	}
	for _, r := range refused {
		fields = append(fields, zap.NamedError(r.Hook.String()+" refused", r.Err))
	}
	if t.hooks.Auth.Err != nil {
		fields = append(fields, zap.NamedError("authentication source unavailable", t.hooks.Auth.Err))
	} else {
		fields = append(fields, zap.String("pam_library", t.hooks.Auth.Library))
	}
	log.Info("connection tracer attached", fields...)
	return t, nil
}

// sharedMaps returns load options that make every program set use the maps
// already loaded into m. It fails if the object has a map m lacks, which a
// program set would otherwise quietly create for itself.
func sharedMaps(spec *ebpf.CollectionSpec, m *connectMaps) (*ebpf.CollectionOptions, error) {
	loaded := map[string]*ebpf.Map{
		"events":       m.Events,
		"lost":         m.Lost,
		"submits":      m.Submits,
		"connect_args": m.ConnectArgs,
		"socks":        m.Socks,
		"procs":        m.Procs,
		"inbound":      m.Inbound,
	}
	for name := range spec.Maps {
		if _, ok := loaded[name]; !ok && !strings.HasPrefix(name, ".") {
			return nil, fmt.Errorf("tracer map %s is not shared between program sets", name)
		}
	}
	return &ebpf.CollectionOptions{MapReplacements: loaded}, nil
}

// Read blocks until the next event and decodes it into ev. It does not
// allocate. After Close it returns an error satisfying errors.Is(err,
// ErrClosed). A record it cannot decode yields an error wrapping
// ErrMalformedRecord; the caller may keep reading.
func (t *Tracer) Read(ev *event.Event) error {
	for {
		err := t.reader.ReadInto(&t.rec)
		if err == nil {
			return decodeEvent(t.rec.RawSample, ev)
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			// The ring is drained: records submitted without a wakeup have all
			// been read. Look again at most one timeout from now.
			t.reader.SetDeadline(time.Now().Add(t.timeout))
			continue
		}
		if errors.Is(err, ringbuf.ErrClosed) {
			return fmt.Errorf("read event: %w", ErrClosed)
		}
		return fmt.Errorf("read event: %w", err)
	}
}

// Hooks reports the attached programs and why better TCP attempt hooks were
// not used.
func (t *Tracer) Hooks() HookReport {
	r := t.hooks
	r.Refused = slices.Clone(r.Refused)
	r.Programs = slices.Clone(r.Programs)
	return r
}

// Lost returns how many events the kernel dropped since NewTracer: records
// that did not fit in the full ring buffer, plus runs of the tracer's
// programs the kernel skipped because another BPF program was already running
// on that CPU (recursion misses; a skipped hook is an event nobody sees).
func (t *Tracer) Lost() (uint64, error) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if t.closed {
		return 0, fmt.Errorf("lost events: %w", ErrClosed)
	}
	var perCPU []uint64
	if err := t.maps.Lost.Lookup(uint32(0), &perCPU); err != nil {
		return 0, fmt.Errorf("lost events: %w", err)
	}
	var n uint64
	for _, v := range perCPU {
		n += v
	}
	for _, p := range t.progs {
		if stats, err := p.Stats(); err == nil {
			n += stats.RecursionMisses
		}
	}
	return n, nil
}

// Processes returns the per-process counters, most attempts first.
func (t *Tracer) Processes() ([]ProcessStats, error) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if t.closed {
		return nil, fmt.Errorf("process stats: %w", ErrClosed)
	}
	var (
		out  []ProcessStats
		tgid uint32
		v    connectProcStats
	)
	it := t.maps.Procs.Iterate()
	for it.Next(&tgid, &v) {
		comm := v.Comm[:]
		if i := bytes.IndexByte(comm, 0); i >= 0 {
			comm = comm[:i]
		}
		out = append(out, ProcessStats{
			TGID:     tgid,
			Comm:     string(comm),
			Attempts: v.Attempts,
			Failures: v.Failures,
			LastSeen: v.LastSeen,
		})
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("process stats: %w", err)
	}
	slices.SortFunc(out, func(a, b ProcessStats) int {
		return cmp.Or(cmp.Compare(b.Attempts, a.Attempts), cmp.Compare(a.TGID, b.TGID))
	})
	return out, nil
}

// Close detaches the programs and frees the tracer's kernel objects, in
// reverse order of creation, and unblocks a pending Read. Errors are joined.
// Calling it again does nothing.
func (t *Tracer) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	t.closed = true
	return t.release()
}

func (t *Tracer) release() error {
	var errs []error
	for i := len(t.closers) - 1; i >= 0; i-- {
		c := t.closers[i]
		if err := c.c.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close %s: %w", c.name, err))
		}
	}
	t.closers = nil
	return errors.Join(errs...)
}
