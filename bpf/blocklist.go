package bpf

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"go.uber.org/zap"
)

// Sentinel errors of the blocklist, for callers that branch on them.
var (
	// ErrNotBlocked: Unblock of a prefix that has no entry.
	ErrNotBlocked = errors.New("not blocked")
	// ErrNotAllowed: Disallow of a prefix that is not on the allowlist.
	ErrNotAllowed = errors.New("not allowlisted")
	// ErrInvalidPrefix: a zero or malformed prefix or address.
	ErrInvalidPrefix = errors.New("invalid prefix")
	// ErrInvalidTTL: a negative TTL.
	ErrInvalidTTL = errors.New("invalid ttl")
	// ErrIncompatiblePin: a map pinned by another build of connwarden does not
	// match this build's layout. RemoveBlocklistPins clears the way (and the
	// entries).
	ErrIncompatiblePin = errors.New("pinned object incompatible with this build")
	// ErrNotAttached: Detach of an interface the blocklist is not attached to.
	ErrNotAttached = errors.New("not attached")
)

// DefaultPinDir is where the blocklist pins its maps and links unless
// BlocklistOptions.PinDir says otherwise. It must be on a bpf filesystem.
const DefaultPinDir = "/sys/fs/bpf/connwarden"

// Default capacities. The maps are not preallocated, so memory follows the
// number of entries; a hash map still allocates its bucket array (16 bytes per
// slot, rounded up to a power of two) when it is created.
const (
	DefaultMaxExact = 1 << 18
	DefaultMaxCIDR  = 1 << 14
	// MaxAllow is the capacity of each allowlist trie.
	MaxAllow = 4096
)

// BlocklistOptions configures OpenBlocklist.
type BlocklistOptions struct {
	// PinDir is the bpffs directory holding the pins (DefaultPinDir if empty).
	PinDir string
	// MaxExact is the capacity of each exact map (one per address family).
	// Zero means DefaultMaxExact for new maps and whatever the pinned maps
	// hold when adopting; a non-zero value must match pinned maps.
	MaxExact int
	// MaxCIDR is the capacity of each CIDR trie, with the same rules.
	MaxCIDR int
	// Logger receives lifecycle messages (adoption, attach); nil discards.
	Logger *zap.Logger
}

// Reason says why an entry was added. The kernel stores it and never reads it.
type Reason uint32

// Known reasons. Values are stored in pinned maps: append, never renumber.
const (
	ReasonUnspecified Reason = iota
	// ReasonManual: an operator blocked the address.
	ReasonManual
	// ReasonDetector: a detection rule decided to block the address.
	ReasonDetector
	// ReasonFeed: the address came from an imported list.
	ReasonFeed
)

func (r Reason) String() string {
	switch r {
	case ReasonUnspecified:
		return "unspecified"
	case ReasonManual:
		return "manual"
	case ReasonDetector:
		return "detector"
	case ReasonFeed:
		return "feed"
	}
	return fmt.Sprintf("reason(%d)", uint32(r))
}

// BlockEntry is one entry for BlockBatch.
type BlockEntry struct {
	Prefix netip.Prefix
	TTL    time.Duration // 0: never expires
	Reason Reason
}

// Entry is a blocklist entry as the kernel holds it.
type Entry struct {
	Prefix  netip.Prefix // normalised: masked, IPv4-mapped IPv6 unmapped
	Expires time.Time    // zero: never expires
	Reason  Reason
	// Hits counts frames dropped and connects refused because of this entry
	// since it was last written (Block resets it).
	Hits uint64
}

// Expired reports whether the entry had expired at t.
func (e Entry) Expired(t time.Time) bool {
	return !e.Expires.IsZero() && !t.Before(e.Expires)
}

// Stats are the blocklist counters summed over all CPUs. Passed and Dropped
// partition the frames the XDP program saw; the other XDP fields break them
// down. EgressRefused counts connects refused by EnableEgress programs.
type Stats struct {
	Passed            uint64
	Dropped           uint64
	DroppedExact      uint64
	DroppedCIDR       uint64
	ExpiredPassed     uint64
	AllowlistedPassed uint64
	NonIP             uint64
	Malformed         uint64
	EgressRefused     uint64
}

// Blocklist is the shared XDP blocklist: pinned maps, the XDP program and its
// pinned links, and optionally cgroup connect programs for egress.
//
// The kernel state outlives the process: OpenBlocklist adopts what an
// earlier agent pinned (see the layout in pin.go), Close lets go of it with
// filtering still in force, and only Remove (or RemoveBlocklistPins) takes
// it down. Source addresses are judged by an exact entry first, then the
// longest live CIDR entry; expired entries are ignored until GC deletes
// them; the allowlist overrides every block.
//
// Its methods are safe for concurrent use. One process should write a given
// pin directory at a time: the per-/16 summaries are kept in step with the
// tries by counts held in this process.
type Blocklist struct {
	log    *zap.Logger
	layout pinLayout
	spec   *ebpf.CollectionSpec

	exactV4, exactV6 *ebpf.Map
	cidrV4, cidrV6   *ebpf.Map
	allowV4, allowV6 *ebpf.Map
	slots            *ebpf.Map
	counters         *ebpf.Map

	xdp *ebpf.Program

	created []*ebpf.Map // maps this Open created rather than adopted

	// writeMu serialises writers of the maps, so that GC cannot delete an
	// entry that Block of this process has just refreshed, and guards
	// slotCounts and changes to count.
	writeMu    sync.Mutex
	slotCounts [blocklistBlSlotSetBL_SLOTS_MAX][]uint32
	count      entryCount // see blocklist_count.go

	mu       sync.Mutex // guards everything below
	closed   bool
	links    map[string]*xdpAttachment // by interface name
	egress   map[uint64]*egressAttachment
	connect4 *ebpf.Program // loaded on first use
	connect6 *ebpf.Program
}

// OpenBlocklist opens the blocklist pinned under opts.PinDir, creating and
// pinning its maps when absent. Existing pins are adopted: entries, TTLs,
// counters and attached links survive, and adopted links are switched to the
// program of this build without ever being detached.
func OpenBlocklist(opts BlocklistOptions) (_ *Blocklist, err error) {
	if opts.PinDir == "" {
		opts.PinDir = DefaultPinDir
	}
	if opts.MaxExact < 0 || opts.MaxCIDR < 0 {
		return nil, fmt.Errorf("open blocklist: negative capacity (exact %d, cidr %d)", opts.MaxExact, opts.MaxCIDR)
	}
	log := opts.Logger
	if log == nil {
		log = zap.NewNop()
	}

	spec, err := loadBlocklist()
	if err != nil {
		return nil, fmt.Errorf("open blocklist: %w", err)
	}
	b := &Blocklist{
		log:    log,
		layout: pinLayout{dir: opts.PinDir},
		spec:   spec,
		links:  make(map[string]*xdpAttachment),
		egress: make(map[uint64]*egressAttachment),
	}
	defer func() {
		if err != nil {
			// Leave no half-made state behind: unpin what this call created.
			for _, m := range b.created {
				err = errors.Join(err, m.Unpin())
			}
			err = errors.Join(err, b.Close())
		}
	}()

	if err := b.layout.ensure(); err != nil {
		return nil, fmt.Errorf("open blocklist: %w", err)
	}
	if err := b.openMaps(opts); err != nil {
		return nil, fmt.Errorf("open blocklist: %w", err)
	}
	// Before any program of this build runs: the summaries must cover
	// every trie entry, including those written while no agent ran.
	if err := b.rebuildSlots(); err != nil {
		return nil, fmt.Errorf("open blocklist: %w", err)
	}

	var objs struct {
		XDP *ebpf.Program `ebpf:"xdp_blocklist"`
	}
	if err := spec.LoadAndAssign(&objs, &ebpf.CollectionOptions{MapReplacements: b.mapsByName()}); err != nil {
		return nil, fmt.Errorf("open blocklist: load xdp program: %w", err)
	}
	b.xdp = objs.XDP

	if err := b.adoptLinks(); err != nil {
		return nil, fmt.Errorf("open blocklist: %w", err)
	}
	return b, nil
}

func (b *Blocklist) mapsByName() map[string]*ebpf.Map {
	return map[string]*ebpf.Map{
		blocklistMapBlExactV4:  b.exactV4,
		blocklistMapBlExactV6:  b.exactV6,
		blocklistMapBlCidrV4:   b.cidrV4,
		blocklistMapBlCidrV6:   b.cidrV6,
		blocklistMapBlAllowV4:  b.allowV4,
		blocklistMapBlAllowV6:  b.allowV6,
		blocklistMapBlSlots:    b.slots,
		blocklistMapBlCounters: b.counters,
	}
}

// maps returns the maps in the order they are opened; nil until opened.
func (b *Blocklist) maps() []*ebpf.Map {
	return []*ebpf.Map{b.exactV4, b.exactV6, b.cidrV4, b.cidrV6, b.allowV4, b.allowV6, b.slots, b.counters}
}

// PinDir returns the directory holding the blocklist's pins.
func (b *Blocklist) PinDir() string { return b.layout.dir }

// Close releases this process's handles. Pins stay: the maps keep their
// entries and attached links keep dropping, so the host stays protected while
// no agent runs. Close is idempotent.
func (b *Blocklist) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	b.closed = true

	var errs []error
	for _, e := range b.egress {
		errs = append(errs, e.close())
	}
	for _, a := range b.links {
		errs = append(errs, a.link.Close())
	}
	b.egress, b.links = nil, nil
	for _, p := range []*ebpf.Program{b.connect6, b.connect4, b.xdp} {
		if p != nil {
			errs = append(errs, p.Close())
		}
	}
	maps := b.maps()
	for i := len(maps) - 1; i >= 0; i-- {
		if maps[i] != nil {
			errs = append(errs, maps[i].Close())
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close blocklist: %w", err)
	}
	return nil
}

// Remove detaches every link, unpins every map and link and removes the pin
// directory, then closes the Blocklist. Entries are gone afterwards.
func (b *Blocklist) Remove() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return ErrClosed
	}
	var errs []error
	for key, e := range b.egress {
		errs = append(errs, e.detach(), e.unpin(), e.close())
		delete(b.egress, key)
	}
	for name, a := range b.links {
		errs = append(errs, unlink(a.link))
		delete(b.links, name)
	}
	for _, m := range b.maps() {
		if m != nil {
			errs = append(errs, m.Unpin())
		}
	}
	b.mu.Unlock()

	errs = append(errs, b.Close(), b.layout.remove())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove blocklist: %w", err)
	}
	return nil
}

type xdpAttachment struct {
	ifname  string
	ifindex int
	mode    AttachMode
	link    link.Link
}
