//go:build ignore

// The shared blocklist: an XDP program that drops packets by source address,
// and cgroup connect4/connect6 programs that refuse local connect() calls to
// blocked destinations. Both read the same maps; only user space (package bpf,
// blocklist*.go) writes them.
//
// Lookup order, cheapest first: the exact hash of the address family, then its
// LPM trie of CIDR entries, which is skipped when a per-/16 summary bitmap
// (bl_slots) says no CIDR entry overlaps the address. The allowlist (an LPM
// trie per family, with its own summary) is consulted only when a block
// matched, so a packet from an unlisted source costs one hash miss and one
// bit test, plus a trie miss when it shares a /16 with a CIDR entry. An
// allowlisted address is never dropped or refused, whatever the block maps
// hold.
//
// Verdict for frames the program cannot classify: they pass. Non-IP frames
// (ARP, LLDP, ...) pass and count as NON_IP; frames too short for the headers
// they announce pass and count as MALFORMED, because the stack drops them
// anyway and the blocklist's job is to stop listed sources, not to sanitise.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char __license[] SEC("license") = "Dual MIT/GPL";

// Counter indices into bl_counters. PASS and DROP partition every frame the
// XDP program sees; the other XDP indices break them down by cause. Indices
// are ABI for pinned maps: append, never renumber.
enum bl_counter {
	BL_CNT_PASS = 0,
	BL_CNT_DROP = 1,
	BL_CNT_DROP_EXACT = 2,       // dropped by an exact (/32, /128) entry
	BL_CNT_DROP_CIDR = 3,        // dropped by a CIDR entry
	BL_CNT_EXPIRED_PASS = 4,     // matched only expired entries; passed
	BL_CNT_ALLOWLISTED_PASS = 5, // matched a block entry but allowlisted; passed
	BL_CNT_NON_IP = 6,           // neither IPv4 nor IPv6; passed
	BL_CNT_MALFORMED = 7,        // truncated headers; passed
	BL_CNT_EGRESS_REFUSED = 8,   // connect() refused by connect4/connect6
	BL_CNT_MAX = 16,             // room to grow without resizing a pinned map
};

// The value of every block map (exact and CIDR, both families).
struct bl_value {
	__u64 expires_ns; // CLOCK_MONOTONIC deadline in ns; 0 = never
	__u64 hits;       // frames dropped and connects refused because of this entry
	__u32 reason;     // origin code, see Reason in blocklist.go
	__u8 prefixlen;   // prefix length of the entry's own key (32/128 in exact
	                  // maps); an LPM lookup does not say which entry matched
	__u8 _pad[3];
};

struct bl_v6_addr {
	__u8 addr[16];
};

// LPM trie keys: prefixlen first, then the address in network byte order.
struct bl_lpm_v4_key {
	__u32 prefixlen;
	__u8 addr[4];
};

struct bl_lpm_v6_key {
	__u32 prefixlen;
	__u8 addr[16];
};

// The value of the allowlist tries.
struct bl_allow_value {
	__u8 prefixlen; // prefix length of the entry's own key
	__u8 _pad[3];
};

// Map capacities are set from user space (MapSpec.MaxEntries) before load;
// these are the defaults of the object file.

// bl_exact_v4: key = IPv4 address (__u32, network byte order), value = bl_value.
// Inserted and deleted by user space (Block, BlockBatch, Unblock, GC); read by
// xdp_blocklist and connect4; the programs only increment value.hits.
// No preallocation: memory follows the number of entries, not the capacity.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct bl_value);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} bl_exact_v4 SEC(".maps");

// bl_exact_v6: key = IPv6 address (16 bytes, network order), value = bl_value.
// Same writers and readers as bl_exact_v4 (readers: xdp_blocklist, connect6).
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct bl_v6_addr);
	__type(value, struct bl_value);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} bl_exact_v6 SEC(".maps");

// bl_cidr_v4: key = bl_lpm_v4_key with prefixlen 0..31 (a /32 always goes to
// bl_exact_v4), value = bl_value. Inserted and deleted by user space; read by
// xdp_blocklist and connect4, which increment value.hits.
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct bl_lpm_v4_key);
	__type(value, struct bl_value);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} bl_cidr_v4 SEC(".maps");

// bl_cidr_v6: key = bl_lpm_v6_key with prefixlen 0..127, value = bl_value.
// Same writers and readers as bl_cidr_v4 (readers: xdp_blocklist, connect6).
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct bl_lpm_v6_key);
	__type(value, struct bl_value);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} bl_cidr_v6 SEC(".maps");

// bl_allow_v4: key = bl_lpm_v4_key (any prefixlen 0..32), value =
// bl_allow_value. Inserted and deleted by user space (Allow, Disallow); read by
// xdp_blocklist and connect4 only after a block entry matched.
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct bl_lpm_v4_key);
	__type(value, struct bl_allow_value);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} bl_allow_v4 SEC(".maps");

// bl_allow_v6: key = bl_lpm_v6_key (prefixlen 0..128), value = bl_allow_value.
// Same writers and readers as bl_allow_v4 (readers: xdp_blocklist, connect6).
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct bl_lpm_v6_key);
	__type(value, struct bl_allow_value);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} bl_allow_v6 SEC(".maps");

// Slot summaries: one bit per /16 of the address space (IPv4: the first two
// octets; IPv6: the first 16 bits), set when an entry of the matching trie
// overlaps that /16. A clear bit lets a packet skip the trie: on a kernel
// where every call and return is costly (retpolines, SRSO safe-RET), the
// trie lookup is most of the price of a miss. A set bit with no entry only
// costs the lookup; user space never lets a bit be clear while an entry
// overlaps it (bits are set before an insert, cleared after a delete).
#define BL_SLOT_WORDS 1024 // 65536 bits

struct bl_slot_bits {
	__u64 words[BL_SLOT_WORDS];
};

enum bl_slot_set {
	BL_SLOTS_CIDR_V4 = 0,
	BL_SLOTS_CIDR_V6 = 1,
	BL_SLOTS_ALLOW_V4 = 2,
	BL_SLOTS_ALLOW_V6 = 3,
	BL_SLOTS_MAX = 4,
};

// bl_slots: key = enum bl_slot_set, value = bl_slot_bits of the trie it
// names. Written whole by user space after every change to that trie (Block,
// BlockBatch, Unblock, GC, Allow, Disallow, and rebuilt at open); read by
// xdp_blocklist, connect4 and connect6 before any trie lookup. Never deleted.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32); // enum bl_slot_set: array keys must be plain integers
	__type(value, struct bl_slot_bits);
	__uint(max_entries, BL_SLOTS_MAX);
} bl_slots SEC(".maps");

// bl_counters: key = enum bl_counter, value = per-CPU __u64. Incremented by
// xdp_blocklist (every frame: PASS or DROP plus at most one cause) and by
// connect4/connect6 (EGRESS_REFUSED); read and summed by user space (Stats);
// never deleted (array).
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32); // enum bl_counter
	__type(value, __u64);
	__uint(max_entries, BL_CNT_MAX);
} bl_counters SEC(".maps");

// Never set or read: they only bring the two enums into BTF, so that bpf2go
// generates them for user space (array map keys cannot carry enum types).
const enum bl_counter *_bl_counter __attribute__((unused));
const enum bl_slot_set *_bl_slot_set __attribute__((unused));

// How far an XDP or connect lookup may step from an expired CIDR entry to the
// next shorter prefix covering the same address, before giving up and passing.
#define BL_LPM_MAX_STEPS 8

enum bl_verdict {
	BL_MISS = 0,    // no entry
	BL_EXPIRED,     // only expired entries matched
	BL_ALLOWLISTED, // an entry matched, but the allowlist covers the address
	BL_HIT_EXACT,   // blocked by an exact entry
	BL_HIT_CIDR,    // blocked by a CIDR entry
};

static __always_inline void count(enum bl_counter idx)
{
	__u32 key = idx;
	__u64 *c = bpf_map_lookup_elem(&bl_counters, &key);

	if (c)
		*c += 1; // per-CPU slot: no atomic needed
}

// slot_set reports whether the /16 slot (0..65535) may hold entries of the
// trie behind set. The array lookup is inlined by the verifier: no call.
static __always_inline int slot_set(enum bl_slot_set set, __u32 slot)
{
	__u32 key = set;
	struct bl_slot_bits *s = bpf_map_lookup_elem(&bl_slots, &key);

	if (!s)
		return 1; // cannot happen for an array; fail towards the trie
	return (s->words[(slot >> 6) & (BL_SLOT_WORDS - 1)] >> (slot & 63)) & 1;
}

// live reports whether an entry has not expired. The clock is read at most
// once per packet, and only for entries with a deadline. It is the coarse
// CLOCK_MONOTONIC (tick resolution) rather than bpf_ktime_get_ns: same time
// base, cheaper to read, and an entry outliving its deadline by up to one
// tick does not matter for TTLs of seconds and more.
static __always_inline int live(const struct bl_value *v, __u64 *now)
{
	if (v->expires_ns == 0)
		return 1;
	if (*now == 0)
		*now = bpf_ktime_get_coarse_ns();
	return *now < v->expires_ns;
}

// Longest live CIDR entry covering the address in key, or NULL. key is
// modified: its prefixlen is lowered past expired entries.
static __always_inline struct bl_value *cidr_v4(struct bl_lpm_v4_key *key, __u64 *now, int *expired)
{
	for (int i = 0; i < BL_LPM_MAX_STEPS; i++) {
		struct bl_value *v = bpf_map_lookup_elem(&bl_cidr_v4, key);

		if (!v)
			return NULL;
		if (live(v, now))
			return v;
		*expired = 1;
		if (v->prefixlen == 0 || v->prefixlen > key->prefixlen)
			return NULL;
		key->prefixlen = v->prefixlen - 1;
	}
	return NULL;
}

static __always_inline struct bl_value *cidr_v6(struct bl_lpm_v6_key *key, __u64 *now, int *expired)
{
	for (int i = 0; i < BL_LPM_MAX_STEPS; i++) {
		struct bl_value *v = bpf_map_lookup_elem(&bl_cidr_v6, key);

		if (!v)
			return NULL;
		if (live(v, now))
			return v;
		*expired = 1;
		if (v->prefixlen == 0 || v->prefixlen > key->prefixlen)
			return NULL;
		key->prefixlen = v->prefixlen - 1;
	}
	return NULL;
}

// check_v4 classifies an IPv4 address (network byte order) and, when it is
// blocked, counts the hit on the entry that blocked it.
static __always_inline enum bl_verdict check_v4(__u32 addr)
{
	enum bl_verdict verdict = BL_HIT_EXACT;
	__u32 slot = bpf_ntohl(addr) >> 16;
	struct bl_lpm_v4_key key;
	struct bl_value *v;
	int expired = 0;
	__u64 now = 0;

	v = bpf_map_lookup_elem(&bl_exact_v4, &addr);
	if (v) {
		if (live(v, &now))
			goto matched;
		expired = 1;
	}

	if (!slot_set(BL_SLOTS_CIDR_V4, slot))
		return expired ? BL_EXPIRED : BL_MISS;
	key.prefixlen = 32;
	__builtin_memcpy(key.addr, &addr, sizeof(addr));
	v = cidr_v4(&key, &now, &expired);
	if (!v)
		return expired ? BL_EXPIRED : BL_MISS;
	verdict = BL_HIT_CIDR;

matched:
	key.prefixlen = 32;
	__builtin_memcpy(key.addr, &addr, sizeof(addr));
	if (slot_set(BL_SLOTS_ALLOW_V4, slot) && bpf_map_lookup_elem(&bl_allow_v4, &key))
		return BL_ALLOWLISTED;
	__sync_fetch_and_add(&v->hits, 1);
	return verdict;
}

static __always_inline enum bl_verdict check_v6(const __u8 *addr)
{
	enum bl_verdict verdict = BL_HIT_EXACT;
	__u32 slot = (__u32)addr[0] << 8 | addr[1];
	struct bl_lpm_v6_key key;
	struct bl_v6_addr exact;
	struct bl_value *v;
	int expired = 0;
	__u64 now = 0;

	__builtin_memcpy(exact.addr, addr, sizeof(exact.addr));
	v = bpf_map_lookup_elem(&bl_exact_v6, &exact);
	if (v) {
		if (live(v, &now))
			goto matched;
		expired = 1;
	}

	if (!slot_set(BL_SLOTS_CIDR_V6, slot))
		return expired ? BL_EXPIRED : BL_MISS;
	key.prefixlen = 128;
	__builtin_memcpy(key.addr, addr, sizeof(key.addr));
	v = cidr_v6(&key, &now, &expired);
	if (!v)
		return expired ? BL_EXPIRED : BL_MISS;
	verdict = BL_HIT_CIDR;

matched:
	key.prefixlen = 128;
	__builtin_memcpy(key.addr, addr, sizeof(key.addr));
	if (slot_set(BL_SLOTS_ALLOW_V6, slot) && bpf_map_lookup_elem(&bl_allow_v6, &key))
		return BL_ALLOWLISTED;
	__sync_fetch_and_add(&v->hits, 1);
	return verdict;
}

static __always_inline int verdict_to_xdp(enum bl_verdict verdict)
{
	switch (verdict) {
	case BL_HIT_EXACT:
		count(BL_CNT_DROP);
		count(BL_CNT_DROP_EXACT);
		return XDP_DROP;
	case BL_HIT_CIDR:
		count(BL_CNT_DROP);
		count(BL_CNT_DROP_CIDR);
		return XDP_DROP;
	case BL_EXPIRED:
		count(BL_CNT_PASS);
		count(BL_CNT_EXPIRED_PASS);
		return XDP_PASS;
	case BL_ALLOWLISTED:
		count(BL_CNT_PASS);
		count(BL_CNT_ALLOWLISTED_PASS);
		return XDP_PASS;
	default:
		count(BL_CNT_PASS);
		return XDP_PASS;
	}
}

static __always_inline int pass_because(enum bl_counter cause)
{
	count(BL_CNT_PASS);
	count(cause);
	return XDP_PASS;
}

struct bl_vlan_hdr {
	__be16 tci;
	__be16 proto;
};

SEC("xdp")
int xdp_blocklist(struct xdp_md *ctx)
{
	void *data_end = (void *)(long)ctx->data_end;
	void *data = (void *)(long)ctx->data;
	struct ethhdr *eth = data;
	void *l3 = eth + 1;
	__be16 proto;

	if (l3 > data_end)
		return pass_because(BL_CNT_MALFORMED);
	proto = eth->h_proto;

	// One 802.1Q or 802.1ad tag, as seen on a trunk without offload.
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
		struct bl_vlan_hdr *vlan = l3;

		if ((void *)(vlan + 1) > data_end)
			return pass_because(BL_CNT_MALFORMED);
		proto = vlan->proto;
		l3 = vlan + 1;
	}

	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip4 = l3;

		if ((void *)(ip4 + 1) > data_end)
			return pass_because(BL_CNT_MALFORMED);
		return verdict_to_xdp(check_v4(ip4->saddr));
	}
	if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = l3;

		if ((void *)(ip6 + 1) > data_end)
			return pass_because(BL_CNT_MALFORMED);
		return verdict_to_xdp(check_v6(ip6->saddr.in6_u.u6_addr8));
	}
	return pass_because(BL_CNT_NON_IP);
}

// connect4 and connect6 return 0 to refuse: connect() then fails with EPERM.
// They are attached per cgroup (EnableEgress), loaded only on demand.

SEC("cgroup/connect4")
int connect4(struct bpf_sock_addr *ctx)
{
	enum bl_verdict v = check_v4(ctx->user_ip4);

	if (v == BL_HIT_EXACT || v == BL_HIT_CIDR) {
		count(BL_CNT_EGRESS_REFUSED);
		return 0;
	}
	return 1;
}

SEC("cgroup/connect6")
int connect6(struct bpf_sock_addr *ctx)
{
	__u32 addr[4];
	enum bl_verdict v;

	// The context allows only 4-byte reads of user_ip6.
	addr[0] = ctx->user_ip6[0];
	addr[1] = ctx->user_ip6[1];
	addr[2] = ctx->user_ip6[2];
	addr[3] = ctx->user_ip6[3];

	// A dual-stack socket connecting to ::ffff:a.b.c.d reaches an IPv4
	// peer: judge it by the IPv4 maps, where user space keeps such entries.
	if (addr[0] == 0 && addr[1] == 0 && addr[2] == bpf_htonl(0x0000ffff))
		v = check_v4(addr[3]);
	else
		v = check_v6((const __u8 *)addr);

	if (v == BL_HIT_EXACT || v == BL_HIT_CIDR) {
		count(BL_CNT_EGRESS_REFUSED);
		return 0;
	}
	return 1;
}

// xdp_baseline passes everything and touches nothing: the benchmarks' measure
// of what running any XDP program costs. User space never attaches it.
SEC("xdp")
int xdp_baseline(struct xdp_md *ctx)
{
	return XDP_PASS;
}
