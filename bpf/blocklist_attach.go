package bpf

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// AttachMode is how the XDP program hooks an interface.
type AttachMode int

const (
	// AttachAuto tries native (driver) mode and falls back to generic.
	AttachAuto AttachMode = iota
	// AttachNative runs the program in the driver, before an skb exists.
	AttachNative
	// AttachGeneric runs the program on the skb path; works on any device.
	AttachGeneric
	// AttachUnknown is the mode of an adopted link whose interface is not
	// visible from this network namespace: an XDP link does not report its
	// mode, so it is read from rtnetlink, which only sees this namespace.
	AttachUnknown
)

func (m AttachMode) String() string {
	switch m {
	case AttachAuto:
		return "auto"
	case AttachNative:
		return "native"
	case AttachGeneric:
		return "generic"
	case AttachUnknown:
		return "unknown"
	}
	return fmt.Sprintf("mode(%d)", int(m))
}

func (m AttachMode) flags() link.XDPAttachFlags {
	if m == AttachGeneric {
		return link.XDPGenericMode
	}
	return link.XDPDriverMode
}

// Attachment describes an interface the XDP program is attached to.
type Attachment struct {
	Interface string
	Ifindex   int // in the network namespace it was attached from
	Mode      AttachMode
}

// Attach attaches the XDP program to interface ifname, as seen from the
// calling thread's network namespace, and pins the link as links/xdp-<ifname>
// so it stays attached when this process exits. With AttachAuto it tries
// native mode, then generic, and returns the mode used. Attaching an
// interface that is already attached returns its mode.
func (b *Blocklist) Attach(ifname string, mode AttachMode) (AttachMode, error) {
	if ifname == "" || strings.ContainsRune(ifname, '/') || len(ifname) >= unix.IFNAMSIZ {
		return 0, fmt.Errorf("attach xdp %q: invalid interface name", ifname)
	}
	if mode != AttachAuto && mode != AttachNative && mode != AttachGeneric {
		return 0, fmt.Errorf("attach xdp %s: invalid mode %s", ifname, mode)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return 0, fmt.Errorf("attach xdp %s: %w", ifname, ErrClosed)
	}
	if a, ok := b.links[ifname]; ok {
		if info, err := a.link.Info(); err == nil && info.XDP().Ifindex == 0 {
			// The interface went away (and perhaps came back): the kernel
			// detached the link. Forget it and attach afresh.
			b.log.Info("replacing xdp link of a vanished interface", zap.String("interface", ifname))
			delete(b.links, ifname)
			if err := unlink(a.link); err != nil {
				return 0, fmt.Errorf("attach xdp %s: drop stale link: %w", ifname, err)
			}
		} else {
			if mode != AttachAuto && a.mode != AttachUnknown && a.mode != mode {
				return 0, fmt.Errorf("attach xdp %s: already attached in %s mode", ifname, a.mode)
			}
			return a.mode, nil
		}
	}

	iface, err := net.InterfaceByName(ifname)
	if err != nil {
		return 0, fmt.Errorf("attach xdp %s: %w", ifname, err)
	}
	tries := []AttachMode{mode}
	if mode == AttachAuto {
		tries = []AttachMode{AttachNative, AttachGeneric}
	}
	var (
		l    link.Link
		errs []error
		used AttachMode
	)
	for _, m := range tries {
		l, err = link.AttachXDP(link.XDPOptions{Program: b.xdp, Interface: iface.Index, Flags: m.flags()})
		if err == nil {
			used = m
			break
		}
		errs = append(errs, fmt.Errorf("%s: %w", m, err))
	}
	if l == nil {
		return 0, fmt.Errorf("attach xdp %s: %w", ifname, errors.Join(errs...))
	}
	if err := l.Pin(b.layout.xdpLinkPath(ifname)); err != nil {
		return 0, errors.Join(fmt.Errorf("attach xdp %s: pin link: %w", ifname, err), l.Close())
	}
	b.links[ifname] = &xdpAttachment{ifname: ifname, ifindex: iface.Index, mode: used, link: l}
	b.log.Info("attached xdp blocklist", zap.String("interface", ifname), zap.Stringer("mode", used))
	return used, nil
}

// Detach detaches the XDP program from ifname and removes the link's pin.
func (b *Blocklist) Detach(ifname string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	a, ok := b.links[ifname]
	if !ok {
		return fmt.Errorf("detach xdp %s: %w", ifname, ErrNotAttached)
	}
	delete(b.links, ifname)
	if err := unlink(a.link); err != nil {
		return fmt.Errorf("detach xdp %s: %w", ifname, err)
	}
	b.log.Info("detached xdp blocklist", zap.String("interface", ifname))
	return nil
}

// Attached lists the interfaces the XDP program is attached to, adopted
// links included.
func (b *Blocklist) Attached() []Attachment {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]Attachment, 0, len(b.links))
	for _, a := range b.links {
		out = append(out, Attachment{Interface: a.ifname, Ifindex: a.ifindex, Mode: a.mode})
	}
	return out
}

type egressAttachment struct {
	cgroupID uint64
	v4, v6   link.Link
}

func (e *egressAttachment) close() error {
	var errs []error
	for _, l := range []link.Link{e.v6, e.v4} {
		if l != nil {
			errs = append(errs, l.Close())
		}
	}
	return errors.Join(errs...)
}

func (e *egressAttachment) unpin() error {
	var errs []error
	for _, l := range []link.Link{e.v6, e.v4} {
		if l != nil {
			errs = append(errs, l.Unpin())
		}
	}
	return errors.Join(errs...)
}

// detach detaches both links now (see unlink).
func (e *egressAttachment) detach() error {
	var errs []error
	for _, l := range []link.Link{e.v6, e.v4} {
		if l != nil {
			errs = append(errs, detachNow(l))
		}
	}
	return errors.Join(errs...)
}

// detachNow detaches l from its hook at once. Dropping the last reference
// would detach it too, but when that reference is a pin, the kernel releases
// it from a work queue after the unlink returns; the caller of Detach or
// Remove expects the program gone when the call returns.
func detachNow(l link.Link) error {
	if err := l.Detach(); err != nil && !errors.Is(err, ebpf.ErrNotSupported) {
		return err
	}
	return nil
}

// unlink detaches l, removes its pin and closes it.
func unlink(l link.Link) error {
	return errors.Join(detachNow(l), l.Unpin(), l.Close())
}

// cgroupID returns the id of the cgroup v2 directory path (its inode number).
func cgroupID(path string) (uint64, error) {
	var sfs unix.Statfs_t
	if err := unix.Statfs(path, &sfs); err != nil {
		return 0, err
	}
	if sfs.Type != unix.CGROUP2_SUPER_MAGIC {
		return 0, fmt.Errorf("%s is not on a cgroup v2 filesystem", path)
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// loadEgressLocked loads connect4 and connect6 on first use, sharing the
// blocklist's maps. They are separate from the XDP program so that a kernel
// refusing cgroup programs still gets XDP. b.mu must be held.
func (b *Blocklist) loadEgressLocked() error {
	if b.connect4 != nil {
		return nil
	}
	var objs struct {
		Connect4 *ebpf.Program `ebpf:"connect4"`
		Connect6 *ebpf.Program `ebpf:"connect6"`
	}
	if err := b.spec.LoadAndAssign(&objs, &ebpf.CollectionOptions{MapReplacements: b.mapsByName()}); err != nil {
		return fmt.Errorf("load connect programs: %w", err)
	}
	b.connect4, b.connect6 = objs.Connect4, objs.Connect6
	return nil
}

// EnableEgress attaches connect4 and connect6 to the cgroup v2 directory
// cgroupPath (the root, /sys/fs/cgroup/unified here, covers every process):
// a connect() from inside it to a blocked, non-allowlisted destination fails
// with EPERM. The links are pinned as links/egress4-<id>, links/egress6-<id>.
// Enabling a cgroup twice is a no-op.
func (b *Blocklist) EnableEgress(cgroupPath string) (err error) {
	id, err := cgroupID(cgroupPath)
	if err != nil {
		return fmt.Errorf("enable egress %s: %w", cgroupPath, err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return fmt.Errorf("enable egress %s: %w", cgroupPath, ErrClosed)
	}
	if _, ok := b.egress[id]; ok {
		return nil
	}
	if err := b.loadEgressLocked(); err != nil {
		return fmt.Errorf("enable egress %s: %w", cgroupPath, err)
	}

	e := &egressAttachment{cgroupID: id}
	defer func() {
		if err != nil {
			err = errors.Join(err, e.unpin(), e.close())
		}
	}()
	for _, h := range []struct {
		family int
		attach ebpf.AttachType
		prog   *ebpf.Program
		dst    *link.Link
	}{
		{4, ebpf.AttachCGroupInet4Connect, b.connect4, &e.v4},
		{6, ebpf.AttachCGroupInet6Connect, b.connect6, &e.v6},
	} {
		l, err := link.AttachCgroup(link.CgroupOptions{Path: cgroupPath, Attach: h.attach, Program: h.prog})
		if err != nil {
			return fmt.Errorf("enable egress %s: attach connect%d: %w", cgroupPath, h.family, err)
		}
		if err := l.Pin(b.layout.egressLinkPath(h.family, id)); err != nil {
			return errors.Join(fmt.Errorf("enable egress %s: pin connect%d: %w", cgroupPath, h.family, err), l.Close())
		}
		*h.dst = l
	}
	b.egress[id] = e
	b.log.Info("enabled egress blocklist", zap.String("cgroup", cgroupPath), zap.Uint64("cgroup_id", id))
	return nil
}

// DisableEgress detaches the connect programs from cgroupPath and unpins them.
func (b *Blocklist) DisableEgress(cgroupPath string) error {
	id, err := cgroupID(cgroupPath)
	if err != nil {
		return fmt.Errorf("disable egress %s: %w", cgroupPath, err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	e, ok := b.egress[id]
	if !ok {
		return fmt.Errorf("disable egress %s: %w", cgroupPath, ErrNotAttached)
	}
	delete(b.egress, id)
	if err := errors.Join(e.detach(), e.unpin(), e.close()); err != nil {
		return fmt.Errorf("disable egress %s: %w", cgroupPath, err)
	}
	return nil
}

// adoptLinks takes over the links pinned under links/ by an earlier process
// and swaps this build's programs into them (BPF_LINK_UPDATE), so filtering
// never stops. A link whose interface or cgroup is gone is unpinned.
func (b *Blocklist) adoptLinks() error {
	ents, err := os.ReadDir(b.layout.linksDir())
	if err != nil {
		return fmt.Errorf("adopt links: %w", err)
	}
	for _, ent := range ents {
		name := ent.Name()
		path := filepath.Join(b.layout.linksDir(), name)
		switch {
		case strings.HasPrefix(name, xdpLinkPrefix):
			if err := b.adoptXDP(path, strings.TrimPrefix(name, xdpLinkPrefix)); err != nil {
				return err
			}
		case strings.HasPrefix(name, "egress4-"), strings.HasPrefix(name, "egress6-"):
			family := 4
			if name[len("egress")] == '6' {
				family = 6
			}
			id, err := strconv.ParseUint(name[len("egress4-"):], 10, 64)
			if err != nil {
				return fmt.Errorf("adopt link %s: unexpected name", path)
			}
			if err := b.adoptEgress(path, family, id); err != nil {
				return err
			}
		default:
			return fmt.Errorf("adopt link %s: unexpected pin in %s", path, b.layout.linksDir())
		}
	}
	return nil
}

func (b *Blocklist) adoptXDP(path, ifname string) error {
	l, err := link.LoadPinnedLink(path, nil)
	if err != nil {
		return fmt.Errorf("adopt link %s: %w", path, err)
	}
	info, err := l.Info()
	if err != nil || info.Type != link.XDPType {
		return errors.Join(fmt.Errorf("adopt link %s: not an xdp link: %w", path, ErrIncompatiblePin), err, l.Close())
	}
	ifindex := int(info.XDP().Ifindex)
	if ifindex == 0 {
		// The interface was deleted and the kernel detached the link.
		b.log.Info("removing pin of detached xdp link", zap.String("interface", ifname))
		return errors.Join(l.Unpin(), l.Close())
	}
	mode, err := xdpModeOf(ifname, ifindex, info.Program)
	if err != nil {
		b.log.Warn("reading xdp mode of adopted link", zap.String("interface", ifname), zap.Error(err))
	}
	if err := l.Update(b.xdp); err != nil {
		return errors.Join(fmt.Errorf("adopt link %s: update program: %w", path, err), l.Close())
	}
	b.links[ifname] = &xdpAttachment{ifname: ifname, ifindex: ifindex, mode: mode, link: l}
	b.log.Info("adopted xdp blocklist link", zap.String("interface", ifname), zap.Int("ifindex", ifindex), zap.Stringer("mode", mode))
	return nil
}

func (b *Blocklist) adoptEgress(path string, family int, id uint64) error {
	l, err := link.LoadPinnedLink(path, nil)
	if err != nil {
		return fmt.Errorf("adopt link %s: %w", path, err)
	}
	info, err := l.Info()
	if err != nil || info.Type != link.CgroupType {
		return errors.Join(fmt.Errorf("adopt link %s: not a cgroup link: %w", path, ErrIncompatiblePin), err, l.Close())
	}
	if info.Cgroup().CgroupId == 0 {
		b.log.Info("removing pin of detached egress link", zap.Uint64("cgroup_id", id))
		return errors.Join(l.Unpin(), l.Close())
	}
	if err := b.loadEgressLocked(); err != nil {
		return errors.Join(fmt.Errorf("adopt link %s: %w", path, err), l.Close())
	}
	prog := b.connect4
	if family == 6 {
		prog = b.connect6
	}
	if err := l.Update(prog); err != nil {
		return errors.Join(fmt.Errorf("adopt link %s: update program: %w", path, err), l.Close())
	}
	e, ok := b.egress[id]
	if !ok {
		e = &egressAttachment{cgroupID: id}
		b.egress[id] = e
	}
	if family == 4 {
		e.v4 = l
	} else {
		e.v6 = l
	}
	b.log.Info("adopted egress blocklist link", zap.Int("family", family), zap.Uint64("cgroup_id", id))
	return nil
}
