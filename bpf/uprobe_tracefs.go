package bpf

import (
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// The uprobe PMU (perf_event_open of type uprobe), which the library uses,
// needs CAP_SYS_ADMIN on current kernels. A uprobe made through tracefs's
// uprobe_events file needs only the file's owner (root) and CAP_PERFMON to
// open the resulting trace event, so an agent holding CAP_BPF, CAP_PERFMON
// and CAP_NET_ADMIN still gets its PAM probes. The library tries the PMU;
// attachPAM falls back to this when it is refused.

// tracefsDir is where tracefs is mounted (internal/mounts makes sure).
var tracefsDir = "/sys/kernel/tracing"

// tracefsUprobesOnly skips the PMU, for tests of the fallback.
var tracefsUprobesOnly = false

var errTracefsUprobesOnly = errors.New("uprobe PMU skipped")

// uprobeSeq makes event names unique within the process.
var uprobeSeq atomic.Uint64

// tracefsUprobe is one uprobe event of ours and the perf event running a
// program on it.
type tracefsUprobe struct {
	fd          int
	group, name string
}

// attachUprobeTracefs creates a uprobe (a uretprobe if ret) on symbol in the
// ELF file path through uprobe_events, and runs prog on it.
func attachUprobeTracefs(path, symbol string, ret bool, prog *ebpf.Program) (_ *tracefsUprobe, err error) {
	off, err := symbolFileOffset(path, symbol)
	if err != nil {
		return nil, err
	}
	u := &tracefsUprobe{
		fd:    -1,
		group: "connwarden_" + strconv.Itoa(os.Getpid()),
		name:  fmt.Sprintf("%s_%d", symbol, uprobeSeq.Add(1)),
	}
	kind := "p"
	if ret {
		kind = "r"
	}
	if err := writeUprobeEvents(fmt.Sprintf("%s:%s/%s %s:%#x", kind, u.group, u.name, path, off)); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, u.Close())
		}
	}()
	b, err := os.ReadFile(filepath.Join(tracefsDir, "events", u.group, u.name, "id"))
	if err != nil {
		return nil, fmt.Errorf("uprobe event id: %w", err)
	}
	id, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return nil, fmt.Errorf("uprobe event id %q: %w", b, err)
	}
	attr := unix.PerfEventAttr{
		Type:        unix.PERF_TYPE_TRACEPOINT,
		Config:      id,
		Sample_type: unix.PERF_SAMPLE_RAW,
		Sample:      1,
		Wakeup:      1,
	}
	attr.Size = uint32(unsafe.Sizeof(attr))
	// All processes (pid -1), on one CPU: a BPF program attached to a trace
	// event runs wherever the event fires.
	if u.fd, err = unix.PerfEventOpen(&attr, -1, 0, -1, unix.PERF_FLAG_FD_CLOEXEC); err != nil {
		u.fd = -1
		return nil, fmt.Errorf("open uprobe perf event: %w", err)
	}
	if err := unix.IoctlSetInt(u.fd, unix.PERF_EVENT_IOC_SET_BPF, prog.FD()); err != nil {
		return nil, fmt.Errorf("attach program to uprobe perf event: %w", err)
	}
	if err := unix.IoctlSetInt(u.fd, unix.PERF_EVENT_IOC_ENABLE, 0); err != nil {
		return nil, fmt.Errorf("enable uprobe perf event: %w", err)
	}
	return u, nil
}

// Close detaches the program and removes the uprobe event.
func (u *tracefsUprobe) Close() error {
	var errs []error
	if u.fd >= 0 {
		errs = append(errs, unix.Close(u.fd))
		u.fd = -1
	}
	if u.name != "" {
		errs = append(errs, writeUprobeEvents(fmt.Sprintf("-:%s/%s", u.group, u.name)))
		u.name = ""
	}
	return errors.Join(errs...)
}

func writeUprobeEvents(line string) error {
	f, err := os.OpenFile(filepath.Join(tracefsDir, "uprobe_events"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("uprobe_events: %w", err)
	}
	defer f.Close()
	if _, err := f.WriteString(line + "\n"); err != nil {
		return fmt.Errorf("uprobe_events %q: %w", line, err)
	}
	return nil
}

// symbolFileOffset returns the file offset of a function symbol in an ELF
// file, which is what uprobe_events wants: the symbol's address translated
// through the loadable segment that holds it.
func symbolFileOffset(path, symbol string) (uint64, error) {
	f, err := elf.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	syms, err := f.DynamicSymbols()
	if err != nil {
		return 0, fmt.Errorf("%s: dynamic symbols: %w", path, err)
	}
	for _, s := range syms {
		if s.Name != symbol || elf.ST_TYPE(s.Info) != elf.STT_FUNC || s.Value == 0 {
			continue
		}
		for _, p := range f.Progs {
			if p.Type == elf.PT_LOAD && p.Flags&elf.PF_X != 0 && s.Value >= p.Vaddr && s.Value < p.Vaddr+p.Memsz {
				return s.Value - p.Vaddr + p.Off, nil
			}
		}
		return 0, fmt.Errorf("%s: symbol %s at %#x is in no executable segment", path, symbol, s.Value)
	}
	return 0, fmt.Errorf("%s: no function symbol %s", path, symbol)
}
