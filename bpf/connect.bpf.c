//go:build ignore

/*
 * The connection tracer: outbound connect() calls, TCP handshakes and their
 * outcome, passive opens, inbound connections that end soon after they
 * began, and RSTs sent, as struct event records in the ring buffer (events.h)
 * that package bpf decodes into event.Event (decode.go). pam.bpf.c writes
 * authentication records into the same ring and reads the inbound map kept
 * here.
 *
 * Program sets, loaded separately from Go so that one the kernel refuses does
 * not take the others down (they share every map):
 *   - kprobe_tcp_connect       best TCP attempt hook
 *   - fentry_tcp_connect       next best
 *   - the four tracepoints     always; the socket state tracepoint also reports
 *                              attempts when neither tcp_connect hook is usable
 *                              (knob attempt_from_state)
 */

#include "connect_kernel.h"

#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#include "events.h"

char __license[] SEC("license") = "Dual BSD/GPL";

/* Knobs, set from Go before load (spec.Variables). */

/* The socket state tracepoint reports CLOSE->SYN_SENT as the TCP attempt. Go
 * sets it only when no tcp_connect hook could be loaded and attached. */
const volatile bool attempt_from_state = true;
/* An inbound connection that leaves ESTABLISHED within this many ns of being
 * established is reported as KIND_INBOUND_SHORT; 0 reports none. */
const volatile __u64 short_session_ns = 5000000000ULL;

/* Puts the records and their enums into the object's BTF, from which bpf2go
 * (-type) generates the Go declarations decode.go is checked against. */
struct btf_anchor {
	struct event event;
	struct auth_event auth_event;
	enum kind kind;
	enum direction direction;
};
const struct btf_anchor *btf_anchor __attribute__((unused));

/* A connect() in flight: the destination the caller passed. */
struct connect_args {
	__u16 family;
	__u16 port;		/* host byte order */
	__u32 _pad;
	__u8 addr[16];
};

/* Per-process counters, the "top talkers" view. */
struct proc_stats {
	__u64 attempts;		/* outbound TCP handshakes started */
	__u64 failures;		/* handshakes that ended without being established */
	__u64 last_seen;	/* bpf_ktime_get_ns of the latest attempt or failure */
	__u8 comm[TASK_COMM_LEN];
};

/*
 * connect_args: pid_tgid (u64) -> struct connect_args.
 * Inserted: sys_enter_connect. Read and deleted: sys_exit_connect of the same
 * thread, which runs for every syscall that entered, even one a fatal signal
 * interrupts; so entries live only while a connect() is in flight and a plain
 * hash (cheaper to update than an LRU) stays small.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct connect_args);
} connect_args SEC(".maps");

/*
 * socks: struct sock address (u64) -> struct proc_info.
 * Inserted: the TCP attempt hook (kprobe or fentry on tcp_connect, or the state
 * tracepoint on CLOSE->SYN_SENT), in the connecting task's context. Read: the
 * state tracepoint on SYN_SENT->ESTABLISHED/CLOSE, which runs in softirq where
 * the current task means nothing. Deleted: there, once the handshake ends. LRU
 * bounds what sockets freed without a state change would leave behind.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct proc_info);
} socks SEC(".maps");

/*
 * procs: tgid (u32) -> struct proc_stats.
 * Inserted and updated: the TCP attempt hook (attempts, comm); updated: the
 * state tracepoint (failures). Deleted: never by us, the LRU evicts the least
 * recently active processes. Read: Go, Tracer.Processes.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, __u32);
	__type(value, struct proc_stats);
} procs SEC(".maps");

static __always_inline struct proc_stats *stats_of(__u32 tgid)
{
	struct proc_stats *s = bpf_map_lookup_elem(&procs, &tgid);
	if (s)
		return s;
	struct proc_stats zero = {};
	bpf_map_update_elem(&procs, &tgid, &zero, BPF_NOEXIST);
	return bpf_map_lookup_elem(&procs, &tgid);
}

/*
 * record_attempt remembers who starts the handshake on sk, for the outcome that
 * arrives in softirq context, and counts it for the process. Runs in the
 * connecting task's context.
 */
static __always_inline void record_attempt(__u64 sk, const struct proc_info *p, __u64 now)
{
	bpf_map_update_elem(&socks, &sk, p, BPF_ANY);
	struct proc_stats *s = stats_of(p->tgid);
	if (s) {
		__sync_fetch_and_add(&s->attempts, 1);
		s->last_seen = now;
		__builtin_memcpy(s->comm, p->comm, sizeof(s->comm));
	}
}

static __always_inline void attempt_event(struct event *e, const struct proc_info *p)
{
	set_proc(e, p);
	e->kind = KIND_TCP_ATTEMPT;
	e->direction = DIR_OUTBOUND;
	e->state = TCP_SYN_SENT;
	submit(e);
}

/* tcp_connect(struct sock *sk) runs after the source port is chosen. */
static __always_inline int on_tcp_connect(struct sock *sk)
{
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family != AF_INET && family != AF_INET6)
		return 0;
	struct proc_info p = {};
	current_proc(&p, bpf_get_current_pid_tgid());
	if (excluded(p.tgid))
		return 0;
	__u64 now = bpf_ktime_get_ns();
	record_attempt((__u64)sk, &p, now);

	struct event *e = reserve(now);
	if (!e)
		return 0;
	sock_addrs(e, sk, family);
	attempt_event(e, &p);
	return 0;
}

SEC("kprobe/tcp_connect")
int BPF_KPROBE(kprobe_tcp_connect, struct sock *sk)
{
	return on_tcp_connect(sk);
}

SEC("fentry/tcp_connect")
int BPF_PROG(fentry_tcp_connect, struct sock *sk)
{
	return on_tcp_connect(sk);
}

SEC("tracepoint/syscalls/sys_enter_connect")
int tp_enter_connect(struct tp_sys_enter_connect *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	if (excluded(id >> 32))
		return 0;

	const void *uaddr = (const void *)ctx->uservaddr;
	/* struct sockaddr_in is 16 bytes: family, port, addr; sockaddr_in6 is
	 * 28: family, port, flowinfo, addr (we need 24). Shorter addresses make
	 * connect() fail with EINVAL before it does anything worth reporting.
	 * One read of what the caller passed, up to 24 bytes. */
	__u64 len = ctx->addrlen;
	if (len < 16)
		return 0;
	if (len > 24)
		len = 24;
	__u8 sa[24] = {};
	if (bpf_probe_read_user(sa, len, uaddr))
		return 0;

	struct connect_args a = {};
	a.family = *(__u16 *)sa;
	if (a.family == AF_INET) {
		__builtin_memcpy(a.addr, &sa[4], 4);
	} else if (a.family == AF_INET6 && len == 24) {
		__builtin_memcpy(a.addr, &sa[8], 16);
	} else {
		return 0;
	}
	a.port = bpf_ntohs(*(__be16 *)&sa[2]);
	bpf_map_update_elem(&connect_args, &id, &a, BPF_ANY);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_connect")
int tp_exit_connect(struct tp_sys_exit_connect *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct connect_args *a = bpf_map_lookup_elem(&connect_args, &id);
	if (!a)
		return 0;

	struct event *e = reserve(bpf_ktime_get_ns());
	if (e) {
		struct proc_info p = {};
		current_proc(&p, id);
		set_proc(e, &p);
		e->kind = KIND_CONNECT;
		e->direction = DIR_OUTBOUND;
		e->result = (__s32)ctx->ret;
		e->family = a->family;
		e->rport = a->port;
		__builtin_memcpy(e->raddr, a->addr, sizeof(e->raddr));
		submit(e);
	}
	bpf_map_delete_elem(&connect_args, &id);
	return 0;
}

/* Addresses from the state tracepoint. Copied as whole words at fixed
 * context offsets: the verifier rejects a context read at a variable offset,
 * which is what clang makes of byte-array copies it merges across branches. */
static __always_inline void state_addrs(struct event *e, struct tp_inet_sock_set_state *ctx,
					__u16 family)
{
	e->family = family;
	e->lport = ctx->sport;
	e->rport = ctx->dport;
	if (family == AF_INET) {
		*(__u32 *)e->laddr = *(__u32 *)ctx->saddr;
		*(__u32 *)e->raddr = *(__u32 *)ctx->daddr;
	} else {
		((__u64 *)e->laddr)[0] = ((__u64 *)ctx->saddr_v6)[0];
		((__u64 *)e->laddr)[1] = ((__u64 *)ctx->saddr_v6)[1];
		((__u64 *)e->raddr)[0] = ((__u64 *)ctx->daddr_v6)[0];
		((__u64 *)e->raddr)[1] = ((__u64 *)ctx->daddr_v6)[1];
	}
}

/* on_outcome ends an outbound handshake on sk that on_attempt recorded. */
static __always_inline void on_outcome(struct tp_inet_sock_set_state *ctx, __u16 family,
				       __u64 sk, const struct proc_info *p, int newstate)
{
	__u64 now = bpf_ktime_get_ns();
	struct event *e = reserve(now);
	if (e) {
		state_addrs(e, ctx, family);
		set_proc(e, p);
		e->direction = DIR_OUTBOUND;
		e->state = newstate;
		if (newstate == TCP_ESTABLISHED) {
			e->kind = KIND_TCP_ESTABLISHED;
		} else {
			e->kind = KIND_TCP_CLOSE;
			e->result = -BPF_CORE_READ((struct sock *)sk, sk_err);
		}
	}
	if (newstate == TCP_CLOSE) {
		struct proc_stats *s = stats_of(p->tgid);
		if (s) {
			__sync_fetch_and_add(&s->failures, 1);
			s->last_seen = now;
		}
	}
	if (e)
		submit(e);
}

/*
 * inbound_transition follows an inbound connection after its passive open: the
 * first change out of ESTABLISHED (either side closing, or a reset) judges its
 * lifetime, and the final ->CLOSE forgets it. A socket that is not in inbound
 * (outbound, or accepted before the tracer) costs one lookup.
 */
static __always_inline void inbound_transition(struct tp_inet_sock_set_state *ctx, __u16 family,
					       __u64 sk, int oldstate, int newstate)
{
	struct inbound_sock *in = bpf_map_lookup_elem(&inbound, &sk);
	if (!in)
		return;
	if (oldstate == TCP_ESTABLISHED && !in->ended) {
		in->ended = 1;
		__u64 now = bpf_ktime_get_ns();
		__u64 lifetime = now - in->established;
		if (lifetime < short_session_ns) {
			struct event *e = reserve(now);
			if (e) {
				state_addrs(e, ctx, family);
				e->kind = KIND_INBOUND_SHORT;
				e->direction = DIR_INBOUND;
				e->state = newstate;
				e->lifetime_ms = lifetime / 1000000;
				submit(e);
			}
		}
	}
	if (newstate == TCP_CLOSE)
		bpf_map_delete_elem(&inbound, &sk);
}

SEC("tracepoint/sock/inet_sock_set_state")
int tp_sock_set_state(struct tp_inet_sock_set_state *ctx)
{
	if (ctx->protocol != IPPROTO_TCP)
		return 0;
	__u16 family = ctx->family;
	if (family != AF_INET && family != AF_INET6)
		return 0;
	int oldstate = ctx->oldstate;
	int newstate = ctx->newstate;
	__u64 sk = ctx->skaddr;

	if (oldstate == TCP_CLOSE && newstate == TCP_SYN_SENT) {
		/* A socket freed without reaching CLOSE would leave its address
		 * in inbound for a new socket to inherit: an outbound socket is
		 * never taken for an inbound connection. */
		bpf_map_delete_elem(&inbound, &sk);
		if (!attempt_from_state)
			return 0;
		struct proc_info p = {};
		current_proc(&p, bpf_get_current_pid_tgid());
		if (excluded(p.tgid))
			return 0;
		__u64 now = bpf_ktime_get_ns();
		record_attempt(sk, &p, now);
		struct event *e = reserve(now);
		if (!e)
			return 0;
		/* The source port is 0 unless bound: the kernel picks it next. */
		state_addrs(e, ctx, family);
		attempt_event(e, &p);
		return 0;
	}

	if (oldstate == TCP_ESTABLISHED ||
	    (newstate == TCP_CLOSE && oldstate != TCP_SYN_SENT && oldstate != TCP_SYN_RECV)) {
		inbound_transition(ctx, family, sk, oldstate, newstate);
		return 0;
	}
	if (oldstate != TCP_SYN_SENT && oldstate != TCP_SYN_RECV)
		return 0;

	/* SYN_SENT->SYN_RECV is a simultaneous open: the handshake goes on. */
	if (newstate == TCP_SYN_RECV)
		return 0;

	struct proc_info *p = bpf_map_lookup_elem(&socks, &sk);
	if (p) {
		/* Outbound, including a simultaneous open's SYN_RECV->ESTABLISHED. */
		if (newstate == TCP_ESTABLISHED || newstate == TCP_CLOSE) {
			struct proc_info copy = *p;
			on_outcome(ctx, family, sk, &copy, newstate);
		}
		bpf_map_delete_elem(&socks, &sk);
		return 0;
	}

	/* No recorded attempt: a passive open, or an outbound handshake begun
	 * before the tracer or by the excluded process, which we do not report. */
	if (oldstate != TCP_SYN_RECV || newstate != TCP_ESTABLISHED)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	struct inbound_sock in = {.established = now};
	bpf_map_update_elem(&inbound, &sk, &in, BPF_ANY);
	struct event *e = reserve(now);
	if (!e)
		return 0;
	state_addrs(e, ctx, family);
	e->kind = KIND_INBOUND_ACCEPT;
	e->direction = DIR_INBOUND;
	e->state = TCP_ESTABLISHED;
	submit(e);
	return 0;
}

SEC("tracepoint/tcp/tcp_send_reset")
int tp_send_reset(struct tp_tcp_send_reset *ctx)
{
	/* saddr and daddr are adjacent: one read for both. In each,
	 * sockaddr_in: family 0, port 2, addr 4; sockaddr_in6: addr 8. */
	__u8 sa[sizeof(ctx->saddr) + sizeof(ctx->daddr)];
	if (bpf_probe_read_kernel(sa, sizeof(sa), ctx->saddr))
		return 0;
	const __u8 *src = sa, *dst = sa + sizeof(ctx->saddr);
	__u16 family = *(__u16 *)src;
	if (family != AF_INET && family != AF_INET6)
		return 0;

	struct event *e = reserve(bpf_ktime_get_ns());
	if (!e)
		return 0;
	e->kind = KIND_RESET_SENT;
	e->direction = DIR_INBOUND;
	e->family = family;
	e->lport = bpf_ntohs(*(__be16 *)&src[2]);
	e->rport = bpf_ntohs(*(__be16 *)&dst[2]);
	if (family == AF_INET) {
		__builtin_memcpy(e->laddr, &src[4], 4);
		__builtin_memcpy(e->raddr, &dst[4], 4);
	} else {
		__builtin_memcpy(e->laddr, &src[8], 16);
		__builtin_memcpy(e->raddr, &dst[8], 16);
	}
	submit(e);
	return 0;
}
