package bpf

import (
	"errors"
	"fmt"
	"net/netip"
	"sync/atomic"

	"github.com/cilium/ebpf"
)

// The number of block entries is kept, not counted: walking the four block
// maps takes over half a second at a million entries, and the agent asks for
// it on every /metrics scrape and /api/v1/stats.
//
// The count covers the four block maps, expired entries included (the
// kernel never deletes an entry; GC does). It is learnt by one walk on the
// first Len after Open, since the pins may hold what an earlier agent or the
// CLI wrote, and from then on the writers keep it under writeMu: Block adds
// the keys it adds (an insert that must not replace tells a new key from a
// replaced one), Unblock takes away the key it deletes, and GC, which walks
// every entry anyway, sets it afresh. That also mends a count thrown off by
// another process writing the same pins (which the Blocklist does not
// support, see its doc) within one GC interval. BlockBatch forgets the
// count, as the kernel's batch update cannot say which keys were new (it
// takes no BPF_NOEXIST), and so does a write that fails in a way that
// leaves the count unsure: the next Len walks again. The agent never
// batches; an import pays one walk, as every Len used to.
type entryCount struct {
	n     atomic.Int64
	known atomic.Bool
}

// countAdd adjusts a known count. writeMu held.
func (b *Blocklist) countAdd(delta int) {
	if b.count.known.Load() {
		b.count.n.Add(int64(delta))
	}
}

// countSet sets the count. writeMu held.
func (b *Blocklist) countSet(n int) {
	b.count.n.Store(int64(n))
	b.count.known.Store(true)
}

// countForget drops a count that may be wrong. writeMu held.
func (b *Blocklist) countForget() { b.count.known.Store(false) }

// Len returns the number of block entries, expired ones included. Only the
// first call after Open (or after a failed write) walks the maps.
func (b *Blocklist) Len() (int, error) {
	if b.count.known.Load() {
		return int(b.count.n.Load()), nil
	}
	b.writeMu.Lock()
	defer b.writeMu.Unlock()
	if b.count.known.Load() {
		return int(b.count.n.Load()), nil
	}
	n := 0
	if err := b.walk(func(netip.Prefix, *blocklistBlValue) bool { n++; return true }); err != nil {
		return 0, fmt.Errorf("len: %w", err)
	}
	b.countSet(n)
	return n, nil
}

// insert adds key to m, or replaces it when present, and reports whether it
// was new. raced reports a key that vanished between the two attempts:
// deleted by another process, so the caller's count is off.
func insert(m *ebpf.Map, key, val any) (added, raced bool, err error) {
	err = m.Update(key, val, ebpf.UpdateNoExist)
	if err == nil {
		return true, false, nil
	}
	if !errors.Is(err, ebpf.ErrKeyExist) {
		return false, false, err
	}
	err = m.Update(key, val, ebpf.UpdateExist)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return true, true, m.Update(key, val, ebpf.UpdateAny)
	}
	return false, false, err
}
