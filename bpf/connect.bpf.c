//go:build ignore

/*
 * The connection tracer: outbound connect() calls, TCP handshakes and their
 * outcome, passive opens and RSTs sent, as struct event records in a ring buffer
 * that package bpf decodes into event.Event (decode.go).
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

char __license[] SEC("license") = "Dual BSD/GPL";

/* Knobs, set from Go before load (spec.Variables). */

/* Events of this process (the agent's own) are not reported; 0 reports all. */
const volatile __u32 exclude_tgid = 0;
/* Submit without waking user space until this many bytes are pending. */
const volatile __u64 wakeup_bytes = 64 * 1024;
/* The socket state tracepoint reports CLOSE->SYN_SENT as the TCP attempt. Go
 * sets it only when no tcp_connect hook could be loaded and attached. */
const volatile bool attempt_from_state = true;

enum kind {
	KIND_CONNECT = 1,
	KIND_TCP_ATTEMPT = 2,
	KIND_TCP_ESTABLISHED = 3,
	KIND_TCP_CLOSE = 4,
	KIND_INBOUND_ACCEPT = 5,
	KIND_RESET_SENT = 6,
};

enum direction {
	DIR_OUTBOUND = 1,
	DIR_INBOUND = 2,
};

/*
 * One ring buffer record. Naturally aligned, explicit padding, 96 bytes;
 * decode.go reads it by these offsets and a test holds the two together.
 * Addresses are in network byte order (IPv4 in the first 4 bytes), ports in
 * host byte order. A local address and port that are both zero mean unknown
 * (connect() reports before the kernel picks them).
 */
struct event {
	__u64 ts;		/* 0: bpf_ktime_get_ns */
	__u64 cgroup;		/* 8 */
	__u32 pid;		/* 16: thread id */
	__u32 tgid;		/* 20: process id */
	__u32 uid;		/* 24 */
	__s32 result;		/* 28: 0 or -errno */
	__u8 laddr[16];		/* 32 */
	__u8 raddr[16];		/* 48 */
	__u16 lport;		/* 64 */
	__u16 rport;		/* 66 */
	__u16 family;		/* 68: AF_INET or AF_INET6 */
	__u8 kind;		/* 70: enum kind */
	__u8 direction;		/* 71: enum direction */
	__u8 state;		/* 72: TCP state after the transition, or 0 */
	__u8 _pad[7];		/* 73 */
	__u8 comm[TASK_COMM_LEN]; /* 80 */
};

/* Puts struct event and its enums into the object's BTF, from which bpf2go
 * (-type) generates the Go declarations decode.go is checked against. */
struct btf_anchor {
	struct event event;
	enum kind kind;
	enum direction direction;
};
const struct btf_anchor *btf_anchor __attribute__((unused));

/* The process that started an outbound handshake. */
struct proc_info {
	__u64 cgroup;
	__u32 pid;
	__u32 tgid;
	__u32 uid;
	__u32 _pad;
	__u8 comm[TASK_COMM_LEN];
};

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
 * events: the ring buffer of struct event.
 * Producers: every program here (reserve, submit). Consumer: Go,
 * Tracer.Read, which frees records by reading them.
 * Size set from Go before load (TracerOptions.RingBufferBytes).
 */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} events SEC(".maps");

/*
 * lost: key 0 -> u64, per CPU: records that did not fit in events.
 * Inserted: preallocated (array). Written: reserve() when bpf_ringbuf_reserve
 * fails. Deleted: never. Read: Go, Tracer.Lost (summed over CPUs).
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

/*
 * submits: key 0 -> u32, per CPU: records submitted on this CPU, so that
 * submit() asks the ring for its pending bytes only every QUERY_EVERY records.
 * Inserted: preallocated (array). Written and read: submit(). Deleted: never.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} submits SEC(".maps");

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

static __always_inline bool excluded(__u32 tgid)
{
	return exclude_tgid != 0 && tgid == exclude_tgid;
}

/* reserve returns a zeroed record stamped now (bpf_ktime_get_ns), or NULL
 * after counting the loss. */
static __always_inline struct event *reserve(__u64 now)
{
	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		__u32 key = 0;
		__u64 *n = bpf_map_lookup_elem(&lost, &key);
		if (n)
			*n += 1;
		return NULL;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->ts = now;
	return e;
}

/*
 * submit wakes the reader only once wakeup_bytes are pending; the reader polls
 * with a short deadline for the rest. bpf_ringbuf_query costs about as much as
 * the rest of submitting (it reads the consumer position user space writes),
 * so each CPU asks only every QUERY_EVERY records: the wakeup comes at most
 * QUERY_EVERY records per CPU late, a few hundred bytes against 64 KiB. A
 * threshold no bigger than one record is met by the record itself.
 */
#define QUERY_EVERY 8

static __always_inline void submit(struct event *e)
{
	__u64 flags = BPF_RB_NO_WAKEUP;
	if (wakeup_bytes <= sizeof(*e)) {
		flags = BPF_RB_FORCE_WAKEUP;
	} else {
		__u32 key = 0;
		__u32 *n = bpf_map_lookup_elem(&submits, &key);
		if (n && ++*n % QUERY_EVERY == 0 &&
		    bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= wakeup_bytes)
			flags = BPF_RB_FORCE_WAKEUP;
	}
	bpf_ringbuf_submit(e, flags);
}

/* current_proc fills p from the current task; id is bpf_get_current_pid_tgid(). */
static __always_inline void current_proc(struct proc_info *p, __u64 id)
{
	p->pid = (__u32)id;
	p->tgid = id >> 32;
	p->uid = (__u32)bpf_get_current_uid_gid();
	p->cgroup = bpf_get_current_cgroup_id();
	bpf_get_current_comm(p->comm, sizeof(p->comm));
}

static __always_inline void set_proc(struct event *e, const struct proc_info *p)
{
	e->pid = p->pid;
	e->tgid = p->tgid;
	e->uid = p->uid;
	e->cgroup = p->cgroup;
	__builtin_memcpy(e->comm, p->comm, sizeof(e->comm));
}

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
	e->family = family;
	e->lport = BPF_CORE_READ(sk, __sk_common.skc_num);
	e->rport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (family == AF_INET) {
		BPF_CORE_READ_INTO(e->laddr, sk, __sk_common.skc_rcv_saddr);
		BPF_CORE_READ_INTO(e->raddr, sk, __sk_common.skc_daddr);
	} else {
		BPF_CORE_READ_INTO(e->laddr, sk, __sk_common.skc_v6_rcv_saddr);
		BPF_CORE_READ_INTO(e->raddr, sk, __sk_common.skc_v6_daddr);
	}
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
	struct event *e = reserve(bpf_ktime_get_ns());
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
