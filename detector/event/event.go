// Package event defines the connection event that the kernel side (package bpf)
// produces and the analyzer (package detector and friends) consumes.
//
// It is a leaf: it imports only the standard library, so neither side depends on
// the other. Kernel bytes are decoded into an Event in exactly one place, package
// bpf; everything else sees this type. The JSON-lines form (see json.go) is the
// one `connwarden record` writes and `connwarden replay` reads.
package event

import (
	"bytes"
	"net/netip"
)

// Kind says which hook produced an event.
type Kind uint8

const (
	KindUnknown Kind = iota
	// KindConnect: a connect() syscall on an AF_INET/AF_INET6 socket returned
	// (syscalls/sys_exit_connect). Result is its return value: 0, or a negative
	// errno (-115 EINPROGRESS for a non-blocking connect, whose outcome arrives
	// later as KindTCPEstablished or KindTCPClose). Process fields are the caller.
	KindConnect
	// KindTCPAttempt: the kernel starts an outbound TCP handshake (tcp_connect:
	// kprobe, fentry, or the CLOSE->SYN_SENT socket state change). Process fields
	// are the connecting task. The local port may be 0 on the tracepoint path.
	KindTCPAttempt
	// KindTCPEstablished: an outbound handshake completed (SYN_SENT->ESTABLISHED).
	// Process fields are those recorded at the attempt, not the softirq context.
	KindTCPEstablished
	// KindTCPClose: an outbound handshake failed (SYN_SENT->CLOSE). Result is the
	// socket error (-ECONNREFUSED, -ETIMEDOUT, ...). Process fields as above.
	KindTCPClose
	// KindInboundAccept: a passive open completed (SYN_RECV->ESTABLISHED) on a
	// local listener. There is no process: PID, TGID, UID and Comm are zero,
	// because the kernel context is whatever ran the softirq, not the listener.
	KindInboundAccept
	// KindResetSent: the host answered a segment with a RST (tcp/tcp_send_reset),
	// typically a probe of a closed port. No process, as for KindInboundAccept.
	KindResetSent
	// KindInboundShort: an inbound connection left ESTABLISHED (either side
	// closed it, or it was reset) within the tracer's short-session threshold
	// of its passive open. LifetimeMS says how long it lasted. No process, as
	// for KindInboundAccept. Repeated short sessions from one peer are what a
	// password guesser against a service without PAM looks like.
	KindInboundShort
	// KindAuth: pam_authenticate returned in the process that called it (a
	// uretprobe on the system's libpam). Result is the PAM return value
	// (0 PAM_SUCCESS, 7 PAM_AUTH_ERR, ...; see PAMResultName); Service and User
	// are read from the PAM handle where readable. Remote and Local are the
	// one inbound TCP connection the process holds, found by the kernel among
	// the process's own sockets when the call returned; Peers says how many
	// distinct inbound connections it held, and when that is not exactly 1
	// the addresses are zero and Direction unknown: the peer is unknown.
	KindAuth
	// KindAuthAccount: pam_acct_mgmt returned (the account check after a
	// successful authentication: expired, locked, not allowed). Fields as for
	// KindAuth.
	KindAuthAccount

	kindCount
)

// NumKinds bounds Kind values: every valid kind is below it, so a
// [NumKinds]T array can be indexed by kind.
const NumKinds = int(kindCount)

var kindNames = [kindCount]string{
	KindUnknown:        "unknown",
	KindConnect:        "connect",
	KindTCPAttempt:     "tcp_attempt",
	KindTCPEstablished: "tcp_established",
	KindTCPClose:       "tcp_close",
	KindInboundAccept:  "inbound_accept",
	KindResetSent:      "reset_sent",
	KindInboundShort:   "inbound_short",
	KindAuth:           "auth",
	KindAuthAccount:    "auth_account",
}

// String returns the kind's name as used in rule files and JSON.
func (k Kind) String() string {
	if k < kindCount {
		return kindNames[k]
	}
	return "unknown"
}

// Kinds lists every valid kind (not KindUnknown), in order.
func Kinds() []Kind {
	out := make([]Kind, 0, kindCount-1)
	for k := KindUnknown + 1; k < kindCount; k++ {
		out = append(out, k)
	}
	return out
}

// ParseKind is the inverse of Kind.String. It reports false for unknown names.
func ParseKind(s string) (Kind, bool) {
	for k := KindUnknown + 1; k < kindCount; k++ {
		if kindNames[k] == s {
			return k, true
		}
	}
	return KindUnknown, false
}

// HasProcess reports whether events of this kind carry the process that caused
// them. Inbound connection kinds do not: the kernel runs them in softirq
// context.
func (k Kind) HasProcess() bool {
	switch k {
	case KindConnect, KindTCPAttempt, KindTCPEstablished, KindTCPClose, KindAuth, KindAuthAccount:
		return true
	}
	return false
}

// IsOutbound reports whether events of this kind are this host's outbound
// connections (connects, handshakes and their outcome).
func (k Kind) IsOutbound() bool {
	switch k {
	case KindConnect, KindTCPAttempt, KindTCPEstablished, KindTCPClose:
		return true
	}
	return false
}

// IsAuth reports whether events of this kind are authentication calls.
func (k Kind) IsAuth() bool { return k == KindAuth || k == KindAuthAccount }

// Direction of a connection relative to this host.
type Direction uint8

const (
	DirUnknown  Direction = iota
	DirOutbound           // this host initiated it
	DirInbound            // a remote peer initiated it
)

func (d Direction) String() string {
	switch d {
	case DirOutbound:
		return "outbound"
	case DirInbound:
		return "inbound"
	}
	return "unknown"
}

// ParseDirection is the inverse of Direction.String.
func ParseDirection(s string) (Direction, bool) {
	switch s {
	case "outbound":
		return DirOutbound, true
	case "inbound":
		return DirInbound, true
	}
	return DirUnknown, false
}

// Errno values that Result takes, negated, for the outcomes rules name.
const (
	ENOENT       = 2
	EPERM        = 1
	EACCES       = 13
	ENETUNREACH  = 101
	ECONNRESET   = 104
	ETIMEDOUT    = 110
	ECONNREFUSED = 111
	EHOSTUNREACH = 113
	EALREADY     = 114
	EINPROGRESS  = 115
)

// Outcome classifies Result for rules.
type Outcome uint8

const (
	OutcomeNone    Outcome = iota // the kind has no outcome (attempts, accepts, resets)
	OutcomeSuccess                // connected (or connect returned 0)
	OutcomePending                // non-blocking connect in progress
	OutcomeRefused                // ECONNREFUSED
	OutcomeTimeout                // ETIMEDOUT
	OutcomeOther                  // any other errno
	OutcomeFailure                // an authentication kind that did not succeed
)

var outcomeNames = [...]string{"none", "success", "pending", "refused", "timeout", "other", "failure"}

func (o Outcome) String() string {
	if int(o) < len(outcomeNames) {
		return outcomeNames[o]
	}
	return "none"
}

// ParseOutcome is the inverse of Outcome.String.
func ParseOutcome(s string) (Outcome, bool) {
	for i, n := range outcomeNames {
		if n == s {
			return Outcome(i), true
		}
	}
	return OutcomeNone, false
}

// CommLen is the kernel's TASK_COMM_LEN.
const CommLen = 16

// AuthStrLen bounds Service and User, NUL included: longer names are cut.
const AuthStrLen = 32

// PeersUnknown in Peers: the process had too many descriptors for the kernel
// to look at them all, so whether it held one inbound connection is unknown.
const PeersUnknown = 255

// Event is one connection event. It is a plain value: copying it does not
// allocate, and the decoder fills a caller-owned Event without allocating.
type Event struct {
	// Timestamp is the kernel's CLOCK_MONOTONIC time of the event in ns
	// (bpf_ktime_get_ns). All windows in the analyzer run on this clock.
	Timestamp uint64
	// Cgroup is the cgroup v2 id of the task (0 when there is no process).
	Cgroup uint64
	// PID is the thread id and TGID the process id, as user space names them.
	// Both are 0 for kinds without a process (see Kind.HasProcess).
	PID  uint32
	TGID uint32
	UID  uint32
	// Result is 0 or a negative errno (see the Kind docs).
	Result int32
	Kind   Kind
	// Direction is outbound for connects and attempts, inbound for accepts and
	// resets sent.
	Direction Direction
	// State is the TCP state after the transition for socket-state kinds
	// (linux/tcp_states.h numbering), 0 otherwise.
	State uint8
	// Peers is, for authentication kinds, how many distinct inbound TCP
	// connections the process held (PeersUnknown: too many descriptors to
	// look); Remote and Local are set only when it is 1. 0 for other kinds.
	Peers uint8
	// LifetimeMS is, for KindInboundShort, how long the connection was
	// established, in ms.
	LifetimeMS uint32
	// Comm is the task's command name, NUL padded. Zero for inbound kinds.
	Comm [CommLen]byte
	// Service and User are, for authentication kinds, the PAM service name
	// and the user name the application passed, NUL padded; empty where the
	// kernel could not read them. User is the name an attacker typed.
	Service [AuthStrLen]byte
	User    [AuthStrLen]byte
	// Local and Remote are this host's and the peer's endpoints. IPv4 is held
	// as a 4-byte Addr; a v4-mapped IPv6 address is unmapped by the decoder so
	// rules see one form for one peer.
	Local  netip.AddrPort
	Remote netip.AddrPort
}

// CommString returns Comm up to its first NUL. It allocates; do not call it on
// the hot path (compare with CommBytes instead).
func (e *Event) CommString() string { return string(e.CommBytes()) }

// CommBytes returns Comm up to its first NUL, without allocating.
func (e *Event) CommBytes() []byte {
	if i := bytes.IndexByte(e.Comm[:], 0); i >= 0 {
		return e.Comm[:i]
	}
	return e.Comm[:]
}

// SetComm sets Comm from s, truncated to CommLen-1 bytes as the kernel does.
func (e *Event) SetComm(s string) {
	e.Comm = [CommLen]byte{}
	copy(e.Comm[:CommLen-1], s)
}

// ServiceBytes returns Service up to its first NUL, without allocating.
func (e *Event) ServiceBytes() []byte { return cstr(e.Service[:]) }

// UserBytes returns User up to its first NUL, without allocating.
func (e *Event) UserBytes() []byte { return cstr(e.User[:]) }

// SetService and SetUser set Service and User from s, truncated to
// AuthStrLen-1 bytes as the kernel does.
func (e *Event) SetService(s string) { setCStr(e.Service[:], s) }
func (e *Event) SetUser(s string)    { setCStr(e.User[:], s) }

func cstr(b []byte) []byte {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		return b[:i]
	}
	return b
}

func setCStr(dst []byte, s string) {
	clear(dst)
	copy(dst[:len(dst)-1], s)
}

// PeerKnown reports whether the event names the connection it belongs to:
// always for connection kinds, and for authentication kinds when the process
// held exactly one inbound connection.
func (e *Event) PeerKnown() bool { return e.Remote.Addr().IsValid() }

// Outcome classifies Result for this event's kind.
func (e *Event) Outcome() Outcome {
	switch e.Kind {
	case KindConnect:
		switch e.Result {
		case 0:
			return OutcomeSuccess
		case -EINPROGRESS, -EALREADY:
			return OutcomePending
		}
		return errnoOutcome(e.Result)
	case KindTCPEstablished:
		return OutcomeSuccess
	case KindTCPClose:
		if e.Result == 0 {
			return OutcomeOther
		}
		return errnoOutcome(e.Result)
	case KindAuth, KindAuthAccount:
		if e.Result == PAMSuccess {
			return OutcomeSuccess
		}
		return OutcomeFailure
	}
	return OutcomeNone
}

func errnoOutcome(r int32) Outcome {
	switch r {
	case -ECONNREFUSED:
		return OutcomeRefused
	case -ETIMEDOUT:
		return OutcomeTimeout
	}
	return OutcomeOther
}
