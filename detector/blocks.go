package detector

import (
	"container/heap"
	"net/netip"
	"time"

	"github.com/connwarden/connwarden/rules"
)

// blocks tracks the blocks in force, in event time: a token bucket limits
// new blocks, a cap bounds how many are active, and a bounded history of
// past blocks drives escalation. Everything here runs only when a rule with
// a block action fires, except expire, which is O(1) when nothing is due.
type blocks struct {
	rate, burst float64
	tokens      float64
	refilled    uint64
	started     bool
	maxActive   int

	active  map[netip.Prefix]uint64 // prefix -> expiry (event ns)
	expiry  expiryHeap
	history map[netip.Prefix]pastBlock
	order   []histRec // FIFO of history insertions, bounding history
	orderAt int

	blocks, unblocks, rateLimited, capped, errors uint64
}

type pastBlock struct {
	at      uint64
	repeats int
}

type histRec struct {
	p  netip.Prefix
	at uint64
}

const maxHistory = 1 << 16

func newBlocks(s rules.Settings) *blocks {
	b := &blocks{active: map[netip.Prefix]uint64{}, history: map[netip.Prefix]pastBlock{}}
	b.configure(s)
	return b
}

func (b *blocks) configure(s rules.Settings) {
	b.rate, b.burst, b.maxActive = s.BlockRate, float64(s.BlockBurst), s.MaxActiveBlocks
	b.tokens = min(b.tokens, b.burst)
}

// take spends one token if the bucket, refilled up to now, has one.
func (b *blocks) take(now uint64) bool {
	if !b.started {
		b.started, b.tokens, b.refilled = true, b.burst, now
	}
	if now > b.refilled {
		b.tokens = min(b.burst, b.tokens+float64(now-b.refilled)*b.rate/1e9)
		b.refilled = now
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// repeats returns how many times p was blocked within period before now.
func (b *blocks) repeats(p netip.Prefix, now uint64, period time.Duration) int {
	h, ok := b.history[p]
	if !ok || now < h.at || now-h.at > uint64(period) {
		return 0
	}
	return h.repeats + 1
}

func (b *blocks) record(p netip.Prefix, now, until uint64, repeats int) {
	b.blocks++
	b.active[p] = until
	heap.Push(&b.expiry, expiryRec{at: until, p: p})
	b.history[p] = pastBlock{at: now, repeats: repeats}
	rec := histRec{p, now}
	if len(b.order) < maxHistory {
		b.order = append(b.order, rec)
		return
	}
	old := b.order[b.orderAt]
	if h, ok := b.history[old.p]; ok && h.at == old.at {
		delete(b.history, old.p)
	}
	b.order[b.orderAt] = rec
	b.orderAt = (b.orderAt + 1) % maxHistory
}

// due pops the next block expired at now, if any.
func (b *blocks) due(now uint64) (netip.Prefix, bool) {
	for len(b.expiry) > 0 && b.expiry[0].at <= now {
		r := heap.Pop(&b.expiry).(expiryRec)
		if until, ok := b.active[r.p]; ok && until == r.at {
			delete(b.active, r.p)
			b.unblocks++
			return r.p, true
		}
	}
	return netip.Prefix{}, false
}

type expiryRec struct {
	at uint64
	p  netip.Prefix
}

// expiryHeap is a min-heap of block expiries; container/heap needs the
// interface methods, and the type keeps its users free of assertions.
type expiryHeap []expiryRec

func (h expiryHeap) Len() int           { return len(h) }
func (h expiryHeap) Less(i, j int) bool { return h[i].at < h[j].at }
func (h expiryHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *expiryHeap) Push(x any)        { *h = append(*h, x.(expiryRec)) }
func (h *expiryHeap) Pop() any {
	old := *h
	r := old[len(old)-1]
	*h = old[:len(old)-1]
	return r
}

// blockTarget is the prefix a rule's block action aims at for ev's remote.
func blockTarget(t rules.BlockTarget, a netip.Addr) (netip.Prefix, bool) {
	if !a.IsValid() || a.IsUnspecified() {
		return netip.Prefix{}, false
	}
	bits := a.BitLen()
	if t == rules.TargetRemoteNet {
		bits = 24
		if !a.Is4() {
			bits = 64
		}
	}
	p, err := a.Prefix(bits)
	return p, err == nil
}
