// Package mounts makes sure the kernel filesystems connwarden needs are
// mounted: bpffs (pins) and tracefs (tracepoints, kprobe_events).
package mounts

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// Ensure mounts bpffs on /sys/fs/bpf and tracefs on /sys/kernel/tracing
// when they are missing.
func Ensure() error {
	if err := ensure("/sys/fs/bpf", "bpf", unix.BPF_FS_MAGIC); err != nil {
		return err
	}
	return ensure("/sys/kernel/tracing", "tracefs", unix.TRACEFS_MAGIC)
}

func ensure(dir, fstype string, magic int64) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("statfs %s: %w", dir, err)
	}
	if st.Type == magic {
		return nil
	}
	if err := unix.Mount(fstype, dir, fstype, 0, ""); err != nil {
		return fmt.Errorf("mount %s on %s: %w", fstype, dir, err)
	}
	return nil
}
