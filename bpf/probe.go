package bpf

import (
	"errors"
	"fmt"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// AttemptHook is where the tracer sees an outbound TCP handshake start
// (event.KindTCPAttempt), from best to last resort.
type AttemptHook uint8

const (
	// HookKprobe is a kprobe on tcp_connect: every kernel with kprobes, the
	// source port already chosen.
	HookKprobe AttemptHook = iota + 1
	// HookFentry is fentry on tcp_connect: cheaper than a kprobe, needs BPF
	// trampolines.
	HookFentry
	// HookTracepoint is the CLOSE->SYN_SENT transition of the
	// sock/inet_sock_set_state tracepoint, which the tracer attaches anyway.
	// The source port is 0 there unless the socket was bound.
	HookTracepoint
)

// attemptHooks lists the hooks in the order NewTracer tries them.
var attemptHooks = [...]AttemptHook{HookKprobe, HookFentry, HookTracepoint}

func (h AttemptHook) String() string {
	switch h {
	case HookKprobe:
		return "kprobe/tcp_connect"
	case HookFentry:
		return "fentry/tcp_connect"
	case HookTracepoint:
		return "tracepoint/sock/inet_sock_set_state"
	}
	return "none"
}

// HookRefusal says why a better attempt hook is not in use. Err is the load or
// attach error as the kernel or the library gave it, so callers can test it
// with errors.Is (os.ErrNotExist without kprobes, unix.EPERM without
// trampolines, ebpf.ErrNotSupported).
type HookRefusal struct {
	Hook AttemptHook
	Err  error
}

// HookReport is what the tracer attached. It is decided once, in NewTracer.
type HookReport struct {
	// Attempt is the TCP attempt hook in use.
	Attempt AttemptHook
	// Refused lists every hook ranked above Attempt, best first, with why it
	// could not be used.
	Refused []HookRefusal
	// Auth says whether authentication events are reported (PAM probes).
	Auth AuthReport
	// Programs names every attached program, as section-like strings
	// ("tracepoint/syscalls/sys_enter_connect"), in attach order.
	Programs []string
}

// String summarises the report on one line, for logs and errors.
func (r HookReport) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "tcp attempt hook %s", r.Attempt)
	for _, ref := range r.Refused {
		fmt.Fprintf(&b, "; %s refused: %v", ref.Hook, ref.Err)
	}
	if r.Auth.Err != nil {
		fmt.Fprintf(&b, "; authentication source unavailable: %v", r.Auth.Err)
	} else if r.Auth.Library != "" {
		fmt.Fprintf(&b, "; pam probes on %s", r.Auth.Library)
	}
	return b.String()
}

// kprobeSet and fentrySet are the two tcp_connect program sets. Each is loaded
// on its own (sharing the tracer's maps) because an object holding a program
// the kernel refuses cannot be loaded whole.
type kprobeSet struct {
	Prog *ebpf.Program `ebpf:"kprobe_tcp_connect"`
}

type fentrySet struct {
	Prog *ebpf.Program `ebpf:"fentry_tcp_connect"`
}

// chooseAttemptHook loads and attaches the best tcp_connect hook this kernel
// accepts, trying them in order. Any load or attach error rules a hook out.
// It returns HookTracepoint with nil program and link when neither works: the
// state tracepoint, loaded with the other tracepoints, then reports attempts.
// On success the caller owns prog and l.
func chooseAttemptHook(spec *ebpf.CollectionSpec, opts *ebpf.CollectionOptions) (hook AttemptHook, refused []HookRefusal, prog *ebpf.Program, l link.Link) {
	for _, h := range attemptHooks {
		if h == HookTracepoint {
			break
		}
		prog, l, err := attachAttemptHook(h, spec, opts)
		if err == nil {
			return h, refused, prog, l
		}
		refused = append(refused, HookRefusal{Hook: h, Err: err})
	}
	return HookTracepoint, refused, nil, nil
}

func attachAttemptHook(h AttemptHook, spec *ebpf.CollectionSpec, opts *ebpf.CollectionOptions) (*ebpf.Program, link.Link, error) {
	var (
		prog *ebpf.Program
		err  error
	)
	switch h {
	case HookKprobe:
		var set kprobeSet
		err = spec.LoadAndAssign(&set, opts)
		prog = set.Prog
	case HookFentry:
		var set fentrySet
		err = spec.LoadAndAssign(&set, opts)
		prog = set.Prog
	default:
		return nil, nil, fmt.Errorf("attach %s: not a tcp_connect hook", h)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("load %s: %w", h, err)
	}

	var l link.Link
	switch h {
	case HookKprobe:
		l, err = link.Kprobe("tcp_connect", prog, nil)
	case HookFentry:
		l, err = link.AttachTracing(link.TracingOptions{Program: prog})
	}
	if err != nil {
		return nil, nil, errors.Join(fmt.Errorf("attach %s: %w", h, err), prog.Close())
	}
	return prog, l, nil
}
