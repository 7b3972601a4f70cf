//go:build ignore

/*
 * Authentication attempts from libpam: a uprobe at the entry of
 * pam_authenticate and pam_acct_mgmt remembers the PAM handle, the return
 * probe reports the result as a struct auth_event in the tracer's ring buffer
 * (events.h), with the PAM service and user read from the handle, and the
 * remote peer of the one inbound TCP connection the process holds.
 *
 * Loaded by Go after the connect object, whose maps it shares (events, lost,
 * submits, inbound). Go finds libpam the way the dynamic loader would and
 * attaches these programs to it; where that fails the tracer runs without
 * them.
 */

#include "connect_kernel.h"

#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#include "events.h"

char __license[] SEC("license") = "Dual BSD/GPL";

/*
 * Offsets of service_name and user in Linux-PAM's struct pam_handle
 * (libpam/pam_private.h), which applications never see: authtok, caller_is,
 * pam_conversation, oldauthtok, prompt, then service_name and user. Set from
 * Go for the target's pointer size; the values read are checked for sense in
 * Go, so a libpam with another layout yields empty names, never wrong ones.
 */
const volatile __u32 pamh_service_off = 40;
const volatile __u32 pamh_user_off = 48;

/* How large a descriptor table the peer search looks through. A process whose
 * table is larger has its peer reported unknown. */
#define MAX_FDS 65536

/* An authentication call in flight. */
struct pam_call {
	__u64 pamh;	/* the pam_handle_t * the caller passed */
	__u8 kind;	/* KIND_AUTH or KIND_AUTH_ACCOUNT */
	__u8 _pad[7];
};

/*
 * pam_calls: pid_tgid (u64) -> struct pam_call.
 * Inserted: the entry uprobes. Read and deleted: the return probe of the same
 * thread. LRU: a thread that dies inside the call never returns, and its entry
 * is evicted rather than kept forever.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct pam_call);
} pam_calls SEC(".maps");

static __always_inline int enter(struct pt_regs *ctx, __u8 kind)
{
	__u64 id = bpf_get_current_pid_tgid();
	if (excluded(id >> 32))
		return 0;
	struct pam_call c = {.pamh = PT_REGS_PARM1(ctx), .kind = kind};
	bpf_map_update_elem(&pam_calls, &id, &c, BPF_ANY);
	return 0;
}

/* read_handle_str copies the string that the handle's pointer at off points to. */
static __always_inline void read_handle_str(__u8 *dst, __u64 pamh, __u32 off)
{
	__u64 p = 0;
	if (pamh == 0 || bpf_probe_read_user(&p, sizeof(p), (void *)(pamh + off)) || p == 0)
		return;
	bpf_probe_read_user_str(dst, AUTH_STR_LEN, (void *)p);
}

/* The state of one peer search, for bpf_loop's callback. */
struct peer_search {
	struct file **fds;
	__u64 found;	/* the one inbound socket seen so far */
	__u8 n;		/* distinct inbound sockets seen, 0 to 2 */
};

/* peer_step looks at descriptor i; returning 1 stops the loop. */
static long peer_step(__u32 i, void *ctx)
{
	struct peer_search *s = ctx;
	struct file *f = NULL;
	if (bpf_probe_read_kernel(&f, sizeof(f), &s->fds[i]) || !f)
		return 0;
	unsigned short mode = BPF_CORE_READ(f, f_inode, i_mode);
	if ((mode & S_IFMT) != S_IFSOCK)
		return 0;
	struct socket *so = BPF_CORE_READ(f, private_data);
	__u64 sk = (__u64)BPF_CORE_READ(so, sk);
	if (!sk || sk == s->found || !bpf_map_lookup_elem(&inbound, &sk))
		return 0;
	if (s->found) {
		s->n = 2;	/* several: which one is meant cannot be told */
		return 1;
	}
	s->found = sk;
	s->n = 1;
	return 0;
}

/*
 * find_peer looks at every socket the current process holds and sets e's
 * addresses from the one inbound TCP connection among them (the inbound map
 * knows them from their passive open). Sockets are compared by identity, so
 * a connection reached through several descriptors (dup, fork) counts once.
 * e->peers says how many distinct inbound connections were found; only when
 * it is 1 are the addresses set. A table too large to search is PEERS_UNKNOWN.
 * bpf_loop (Linux 5.17) keeps the search cheap to verify.
 */
static __always_inline void find_peer(struct event *e)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	if (!fdt)
		return;
	unsigned int max = BPF_CORE_READ(fdt, max_fds);
	struct peer_search s = {.fds = BPF_CORE_READ(fdt, fd)};
	if (!s.fds)
		return;
	if (max > MAX_FDS) {
		e->peers = PEERS_UNKNOWN;
		return;
	}
	bpf_loop(max, peer_step, &s, 0);
	e->peers = s.n;
	if (s.n != 1)
		return;

	struct sock *sk = (struct sock *)s.found;
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family != AF_INET && family != AF_INET6) {
		e->peers = 0;
		return;
	}
	e->direction = DIR_INBOUND;
	sock_addrs(e, sk, family);
}

static __always_inline int leave(struct pt_regs *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct pam_call *c = bpf_map_lookup_elem(&pam_calls, &id);
	if (!c)
		return 0;
	struct pam_call call = *c;
	bpf_map_delete_elem(&pam_calls, &id);

	struct auth_event *a = bpf_ringbuf_reserve(&events, sizeof(*a), 0);
	if (!a) {
		count_lost();
		return 0;
	}
	__builtin_memset(a, 0, sizeof(*a));
	struct event *e = &a->base;
	e->ts = bpf_ktime_get_ns();
	struct proc_info p = {};
	current_proc(&p, id);
	set_proc(e, &p);
	e->kind = call.kind;
	e->result = (__s32)PT_REGS_RC(ctx);
	read_handle_str(a->service, call.pamh, pamh_service_off);
	read_handle_str(a->user, call.pamh, pamh_user_off);
	find_peer(e);
	submit(e);
	return 0;
}

SEC("uprobe")
int uprobe_pam_authenticate(struct pt_regs *ctx)
{
	return enter(ctx, KIND_AUTH);
}

SEC("uretprobe")
int uretprobe_pam_authenticate(struct pt_regs *ctx)
{
	return leave(ctx);
}

SEC("uprobe")
int uprobe_pam_acct_mgmt(struct pt_regs *ctx)
{
	return enter(ctx, KIND_AUTH_ACCOUNT);
}

SEC("uretprobe")
int uretprobe_pam_acct_mgmt(struct pt_regs *ctx)
{
	return leave(ctx);
}
