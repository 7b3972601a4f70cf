/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * What every program family of the tracer shares: the ring buffer record, the
 * ring buffer with its loss counter, the inbound connection table, and the
 * knobs that shape submission. Included by connect.bpf.c and pam.bpf.c; Go
 * loads the maps once (with the connect object) and hands them to the other
 * object (MapReplacements), so the families write into one ring that one
 * reader decodes (decode.go).
 */
#ifndef CONNWARDEN_EVENTS_H
#define CONNWARDEN_EVENTS_H

/* Knobs, set from Go before load (spec.Variables), in every object. */

/* Events of this process (the agent's own) are not reported; 0 reports all. */
const volatile __u32 exclude_tgid = 0;
/* Submit without waking user space until this many bytes are pending. */
const volatile __u64 wakeup_bytes = 64 * 1024;

enum kind {
	KIND_CONNECT = 1,
	KIND_TCP_ATTEMPT = 2,
	KIND_TCP_ESTABLISHED = 3,
	KIND_TCP_CLOSE = 4,
	KIND_INBOUND_ACCEPT = 5,
	KIND_RESET_SENT = 6,
	KIND_INBOUND_SHORT = 7,	/* struct event; lifetime_ms set */
	KIND_AUTH = 8,		/* struct auth_event: pam_authenticate returned */
	KIND_AUTH_ACCOUNT = 9,	/* struct auth_event: pam_acct_mgmt returned */
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
 * (connect() reports before the kernel picks them; an authentication whose
 * peer could not be told has no addresses, family or direction at all).
 */
struct event {
	__u64 ts;		/* 0: bpf_ktime_get_ns */
	__u64 cgroup;		/* 8 */
	__u32 pid;		/* 16: thread id */
	__u32 tgid;		/* 20: process id */
	__u32 uid;		/* 24 */
	__s32 result;		/* 28: 0 or -errno; the PAM return value for auth kinds */
	__u8 laddr[16];		/* 32 */
	__u8 raddr[16];		/* 48 */
	__u16 lport;		/* 64 */
	__u16 rport;		/* 66 */
	__u16 family;		/* 68: AF_INET or AF_INET6; 0 for an auth kind without a peer */
	__u8 kind;		/* 70: enum kind */
	__u8 direction;		/* 71: enum direction; 0 for an auth kind without a peer */
	__u8 state;		/* 72: TCP state after the transition, or 0 */
	__u8 peers;		/* 73: auth kinds: distinct inbound TCP connections of the process; PEERS_UNKNOWN: too many fds to look */
	__u8 _pad[2];		/* 74 */
	__u32 lifetime_ms;	/* 76: KIND_INBOUND_SHORT: from established to leaving it, ms */
	__u8 comm[TASK_COMM_LEN]; /* 80 */
};

#define PEERS_UNKNOWN 255
#define AUTH_STR_LEN 32

/*
 * The record of the authentication kinds: struct event, then what the PAM
 * handle says, NUL-terminated where read, empty where not. 160 bytes.
 */
struct auth_event {
	struct event base;		/* 0 */
	__u8 service[AUTH_STR_LEN];	/* 96: PAM service name */
	__u8 user[AUTH_STR_LEN];	/* 128: user name as the application set it */
};

/*
 * events: the ring buffer of struct event and struct auth_event (told apart by
 * kind). Producers: every program of every family (reserve, submit). Consumer:
 * Go, Tracer.Read, which frees records by reading them. Size set from Go before
 * load (TracerOptions.RingBufferBytes).
 */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} events SEC(".maps");

/*
 * lost: key 0 -> u64, per CPU: records that did not fit in events.
 * Inserted: preallocated (array). Written: count_lost() when
 * bpf_ringbuf_reserve fails. Deleted: never. Read: Go, Tracer.Lost (summed
 * over CPUs).
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

/* An inbound TCP connection, from its passive open to its close. */
struct inbound_sock {
	__u64 established;	/* bpf_ktime_get_ns of SYN_RECV->ESTABLISHED */
	__u8 ended;		/* it left ESTABLISHED: its lifetime was judged */
	__u8 _pad[7];
};

/*
 * inbound: struct sock address (u64) -> struct inbound_sock.
 * Inserted: the socket state tracepoint on a passive open (SYN_RECV->
 * ESTABLISHED). Updated there when the connection leaves ESTABLISHED (its
 * lifetime is judged once). Deleted there on the final ->CLOSE, and when the
 * address starts an outbound handshake. Read: the PAM return probes, which
 * find the connection a process authenticates by looking up each socket the
 * process holds. LRU bounds what sockets freed without a state change would
 * leave behind.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct inbound_sock);
} inbound SEC(".maps");

static __always_inline bool excluded(__u32 tgid)
{
	return exclude_tgid != 0 && tgid == exclude_tgid;
}

static __always_inline void count_lost(void)
{
	__u32 key = 0;
	__u64 *n = bpf_map_lookup_elem(&lost, &key);
	if (n)
		*n += 1;
}

/* reserve returns a zeroed struct event stamped now (bpf_ktime_get_ns), or
 * NULL after counting the loss. */
static __always_inline struct event *reserve(__u64 now)
{
	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_lost();
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
 * threshold no bigger than one record is met by the record itself. e may
 * begin a larger record (struct auth_event).
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

/* The process a hook runs for. */
struct proc_info {
	__u64 cgroup;
	__u32 pid;
	__u32 tgid;
	__u32 uid;
	__u32 _pad;
	__u8 comm[TASK_COMM_LEN];
};

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

/* sock_addrs sets e's family, addresses and ports from a socket of that
 * family (AF_INET or AF_INET6). Sizes are explicit: BPF_CORE_READ_INTO would
 * size the copy by an array's element, one byte. */
static __always_inline void sock_addrs(struct event *e, struct sock *sk, __u16 family)
{
	e->family = family;
	e->lport = BPF_CORE_READ(sk, __sk_common.skc_num);
	e->rport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (family == AF_INET) {
		bpf_core_read(e->laddr, 4, &sk->__sk_common.skc_rcv_saddr);
		bpf_core_read(e->raddr, 4, &sk->__sk_common.skc_daddr);
	} else {
		bpf_core_read(e->laddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
		bpf_core_read(e->raddr, 16, &sk->__sk_common.skc_v6_daddr);
	}
}

#endif /* CONNWARDEN_EVENTS_H */
