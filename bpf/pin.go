package bpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Pin layout of the blocklist, under its pin directory (DefaultPinDir):
//
//	maps/bl_exact_v4    exact IPv4 entries (hash)
//	maps/bl_exact_v6    exact IPv6 entries (hash)
//	maps/bl_cidr_v4     IPv4 CIDR entries (LPM trie)
//	maps/bl_cidr_v6     IPv6 CIDR entries (LPM trie)
//	maps/bl_allow_v4    IPv4 allowlist (LPM trie)
//	maps/bl_allow_v6    IPv6 allowlist (LPM trie)
//	maps/bl_slots       per-/16 summaries of the four tries (array)
//	maps/bl_counters    per-CPU counters
//	links/xdp-<ifname>  XDP link on interface <ifname>
//	links/egress4-<id>  cgroup connect4 link on the cgroup with id <id>
//	links/egress6-<id>  cgroup connect6 link on the same cgroup
//
// Map pins carry the state (entries, TTLs, hits, counters); link pins keep
// the programs attached while no process holds them. Programs are not pinned:
// each agent loads its own build and swaps it into the adopted links.
type pinLayout struct {
	dir string
}

func (l pinLayout) mapsDir() string  { return filepath.Join(l.dir, "maps") }
func (l pinLayout) linksDir() string { return filepath.Join(l.dir, "links") }

func (l pinLayout) mapPath(name string) string { return filepath.Join(l.mapsDir(), name) }

func (l pinLayout) xdpLinkPath(ifname string) string {
	return filepath.Join(l.linksDir(), xdpLinkPrefix+ifname)
}

func (l pinLayout) egressLinkPath(family int, cgroupID uint64) string {
	return filepath.Join(l.linksDir(), fmt.Sprintf("egress%d-%d", family, cgroupID))
}

const xdpLinkPrefix = "xdp-"

// ensure creates the pin directories, after checking the parent of dir is a
// bpf filesystem: pins elsewhere would fail with a confusing EPERM.
func (l pinLayout) ensure() error {
	if err := os.MkdirAll(l.dir, 0o700); err != nil {
		return fmt.Errorf("pin dir: %w", err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(l.dir, &st); err != nil {
		return fmt.Errorf("pin dir %s: %w", l.dir, err)
	}
	if st.Type != unix.BPF_FS_MAGIC {
		return fmt.Errorf("pin dir %s: not on a bpf filesystem (mount -t bpf bpf /sys/fs/bpf)", l.dir)
	}
	for _, d := range []string{l.mapsDir(), l.linksDir()} {
		if err := os.Mkdir(d, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("pin dir: %w", err)
		}
	}
	return nil
}

// RemoveBlocklistPins deletes every pin of the blocklist under pinDir
// (DefaultPinDir if empty) without opening it: links first, which detaches
// any program no process still holds, then maps, whose entries are then
// gone. It is the way out of ErrIncompatiblePin, when OpenBlocklist (and so
// Remove) cannot succeed. Files it does not know are left alone.
func RemoveBlocklistPins(pinDir string) error {
	if pinDir == "" {
		pinDir = DefaultPinDir
	}
	l := pinLayout{dir: pinDir}
	var errs []error
	for _, d := range []string{l.linksDir(), l.mapsDir()} {
		ents, err := os.ReadDir(d)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, e := range ents {
			if err := os.Remove(filepath.Join(d, e.Name())); err != nil {
				errs = append(errs, err)
			}
		}
	}
	errs = append(errs, l.remove())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove blocklist pins %s: %w", pinDir, err)
	}
	return nil
}

// remove deletes the (by then empty) pin directories.
func (l pinLayout) remove() error {
	var errs []error
	for _, d := range []string{l.mapsDir(), l.linksDir(), l.dir} {
		if err := os.Remove(d); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// openMaps adopts each map pinned under maps/ or, when absent, creates and
// pins it. Capacities come from opts (see BlocklistOptions); everything else
// comes from the object file and must match a pinned map exactly.
func (b *Blocklist) openMaps(opts BlocklistOptions) error {
	capacity := map[string]int{
		blocklistMapBlExactV4: opts.MaxExact,
		blocklistMapBlExactV6: opts.MaxExact,
		blocklistMapBlCidrV4:  opts.MaxCIDR,
		blocklistMapBlCidrV6:  opts.MaxCIDR,
	}
	defaults := map[string]int{
		blocklistMapBlExactV4: DefaultMaxExact,
		blocklistMapBlExactV6: DefaultMaxExact,
		blocklistMapBlCidrV4:  DefaultMaxCIDR,
		blocklistMapBlCidrV6:  DefaultMaxCIDR,
		blocklistMapBlAllowV4: MaxAllow,
		blocklistMapBlAllowV6: MaxAllow,
	}
	targets := []struct {
		name string
		dst  **ebpf.Map
	}{
		{blocklistMapBlExactV4, &b.exactV4},
		{blocklistMapBlExactV6, &b.exactV6},
		{blocklistMapBlCidrV4, &b.cidrV4},
		{blocklistMapBlCidrV6, &b.cidrV6},
		{blocklistMapBlAllowV4, &b.allowV4},
		{blocklistMapBlAllowV6, &b.allowV6},
		{blocklistMapBlSlots, &b.slots},
		{blocklistMapBlCounters, &b.counters},
	}
	for _, t := range targets {
		ms, ok := b.spec.Maps[t.name]
		if !ok {
			return fmt.Errorf("map %s: missing from object file", t.name)
		}
		// ms is b.spec's own: MapReplacements checks against it at load.
		if n := defaults[t.name]; n > 0 {
			ms.MaxEntries = uint32(n)
		}
		want, tunable := capacity[t.name]
		if want > 0 {
			ms.MaxEntries = uint32(want)
		}
		m, err := b.openMap(ms, tunable && want == 0)
		if err != nil {
			return err
		}
		*t.dst = m
	}
	return nil
}

// openMap adopts the map pinned for ms, or creates and pins it. With
// anyCapacity, a pinned map's capacity is accepted whatever it is.
func (b *Blocklist) openMap(ms *ebpf.MapSpec, anyCapacity bool) (*ebpf.Map, error) {
	path := b.layout.mapPath(ms.Name)
	m, err := ebpf.LoadPinnedMap(path, nil)
	switch {
	case err == nil:
		if anyCapacity {
			if info, ierr := m.Info(); ierr == nil {
				ms.MaxEntries = info.MaxEntries
			}
		}
		if cerr := ms.Compatible(m); cerr != nil {
			m.Close()
			return nil, fmt.Errorf("adopt pinned map %s: %w: %w", path, ErrIncompatiblePin, cerr)
		}
		b.log.Debug("adopted pinned map", zap.String("path", path), zap.Uint32("max_entries", ms.MaxEntries))
		return m, nil
	case errors.Is(err, os.ErrNotExist):
		m, err = ebpf.NewMap(ms)
		if err != nil {
			return nil, fmt.Errorf("create map %s: %w", ms.Name, err)
		}
		if err := m.Pin(path); err != nil {
			m.Close()
			return nil, fmt.Errorf("pin map %s: %w", ms.Name, err)
		}
		b.created = append(b.created, m)
		b.log.Debug("created and pinned map", zap.String("path", path), zap.Uint32("max_entries", ms.MaxEntries))
		return m, nil
	default:
		return nil, fmt.Errorf("open pinned map %s: %w", path, err)
	}
}
