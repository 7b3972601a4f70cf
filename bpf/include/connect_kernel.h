/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The few kernel types the tracer (connect.bpf.c, pam.bpf.c) needs, declared
 * by hand instead of a multi-megabyte vmlinux.h.
 *
 * Kernel structs carry preserve_access_index: their layout here is NOT the
 * kernel's. Only field names and kinds matter; the loader relocates every access
 * against the running kernel's BTF (CO-RE). Anonymous unions of the kernel are
 * flattened, which CO-RE resolves by name.
 *
 * Tracepoint contexts are plain structs copied from
 * /sys/kernel/tracing/events/<group>/<name>/format; those layouts are what the
 * kernel hands the program, so they must match byte for byte.
 */
#ifndef CONNWARDEN_CONNECT_KERNEL_H
#define CONNWARDEN_CONNECT_KERNEL_H

/* Kernel-side names, as in a generated vmlinux.h: tells bpf_tracing.h to use
 * struct pt_regs's kernel field names (di, not the uapi rdi). */
#define __VMLINUX_H__

typedef unsigned char __u8;
typedef signed char __s8;
typedef unsigned short __u16;
typedef short __s16;
typedef unsigned int __u32;
typedef int __s32;
typedef unsigned long long __u64;
typedef long long __s64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u64 __be64;
typedef __u32 __wsum;
typedef _Bool bool;
#define true 1
#define false 0

/* include/uapi/linux/bpf.h */
enum bpf_map_type {
	BPF_MAP_TYPE_HASH = 1,
	BPF_MAP_TYPE_PERCPU_ARRAY = 6,
	BPF_MAP_TYPE_LRU_HASH = 9,
	BPF_MAP_TYPE_RINGBUF = 27,
};

enum {
	BPF_ANY = 0,
	BPF_NOEXIST = 1,
};

enum {
	BPF_RB_NO_WAKEUP = (1ULL << 0),
	BPF_RB_FORCE_WAKEUP = (1ULL << 1),
};

enum {
	BPF_RB_AVAIL_DATA = 0,
};

/* include/linux/socket.h, include/uapi/linux/in.h */
#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6

/* include/net/tcp_states.h */
enum {
	TCP_ESTABLISHED = 1,
	TCP_SYN_SENT = 2,
	TCP_SYN_RECV = 3,
	TCP_CLOSE = 7,
};

#define TASK_COMM_LEN 16

struct in6_addr {
	__u8 u6_addr8[16];
} __attribute__((preserve_access_index));

struct sock_common {
	__be32 skc_daddr;
	__be32 skc_rcv_saddr;
	__be16 skc_dport;
	__u16 skc_num;
	unsigned short skc_family;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
} __attribute__((preserve_access_index));

struct sock {
	struct sock_common __sk_common;
	int sk_err;
} __attribute__((preserve_access_index));

/* From the current task to the sockets it holds (pam.bpf.c). */
struct socket {
	struct sock *sk;
} __attribute__((preserve_access_index));

struct inode {
	unsigned short i_mode;
} __attribute__((preserve_access_index));

struct file {
	struct inode *f_inode;
	void *private_data;
} __attribute__((preserve_access_index));

struct fdtable {
	unsigned int max_fds;
	struct file **fd;
} __attribute__((preserve_access_index));

struct files_struct {
	struct fdtable *fdt;
} __attribute__((preserve_access_index));

struct task_struct {
	struct files_struct *files;
} __attribute__((preserve_access_index));

/* include/uapi/linux/stat.h */
#define S_IFMT 00170000
#define S_IFSOCK 0140000

/* Registers, for PT_REGS_PARM1 in kprobes (bpf_tracing.h picks by arch). */
#if defined(__TARGET_ARCH_x86)
struct pt_regs {
	unsigned long di;
	unsigned long si;
	unsigned long dx;
	unsigned long cx;
	unsigned long r8;
	unsigned long r9;
	unsigned long ax;
	unsigned long sp;
	unsigned long ip;
	unsigned long bp;
} __attribute__((preserve_access_index));
#elif defined(__TARGET_ARCH_arm64)
struct pt_regs;
struct user_pt_regs {
	__u64 regs[31];
	__u64 sp;
	__u64 pc;
	__u64 pstate;
} __attribute__((preserve_access_index));
#endif

/* events/syscalls/sys_enter_connect/format */
struct tp_sys_enter_connect {
	__u64 common;
	__s32 syscall_nr;
	__u32 pad;
	__u64 fd;
	__u64 uservaddr;
	__u64 addrlen;
};

/* events/syscalls/sys_exit_connect/format */
struct tp_sys_exit_connect {
	__u64 common;
	__s32 syscall_nr;
	__u32 pad;
	__s64 ret;
};

/* events/sock/inet_sock_set_state/format. Ports are in host byte order. */
struct tp_inet_sock_set_state {
	__u64 common;
	__u64 skaddr;
	__s32 oldstate;
	__s32 newstate;
	__u16 sport;
	__u16 dport;
	__u16 family;
	__u16 protocol;
	__u8 saddr[4];
	__u8 daddr[4];
	__u8 saddr_v6[16];
	__u8 daddr_v6[16];
};

/*
 * events/tcp/tcp_send_reset/format, Linux 6.10 and later (the "reason" field).
 * saddr and daddr hold a struct sockaddr_in or sockaddr_in6: the RST's source
 * (this host) and destination (the peer), taken from the socket when there is
 * one and from the offending segment, reversed, when there is none.
 */
struct tp_tcp_send_reset {
	__u64 common;
	__u64 skbaddr;
	__u64 skaddr;
	__s32 state;
	__u32 reason;
	__u8 saddr[28];
	__u8 daddr[28];
};

#endif /* CONNWARDEN_CONNECT_KERNEL_H */
