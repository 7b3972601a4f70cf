package bpf

import (
	"errors"
	"fmt"
	"io"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// PAMOptions configures the authentication source: uprobes on libpam's
// pam_authenticate and pam_acct_mgmt.
type PAMOptions struct {
	// Disabled turns the source off.
	Disabled bool
	// Library is the libpam file to probe. Empty: libpam.so.0 below Root,
	// found as the dynamic loader would (its cache, then its default
	// directories).
	Library string
	// Root is the file system the library is looked for in, "/" when empty;
	// an agent in a container sees the host's at its host mount.
	Root string
}

// pamLibrary is the soname applications link against.
const pamLibrary = "libpam.so.0"

// pamFuncs are the probed functions and the entry and return programs of each.
var pamFuncs = [...]struct {
	symbol string
	entry  func(*pamPrograms) *ebpf.Program
	ret    func(*pamPrograms) *ebpf.Program
}{
	{"pam_authenticate",
		func(p *pamPrograms) *ebpf.Program { return p.UprobePamAuthenticate },
		func(p *pamPrograms) *ebpf.Program { return p.UretprobePamAuthenticate }},
	{"pam_acct_mgmt",
		func(p *pamPrograms) *ebpf.Program { return p.UprobePamAcctMgmt },
		func(p *pamPrograms) *ebpf.Program { return p.UretprobePamAcctMgmt }},
}

// AuthReport says whether authentication events are reported and from where.
type AuthReport struct {
	// Library is the libpam the probes are attached to; empty when not.
	Library string
	// Err says why there are no authentication events: the source was
	// disabled, libpam was not found, or the kernel refused the probes.
	Err error
}

// ErrAuthDisabled is AuthReport.Err when PAMOptions.Disabled is set.
var ErrAuthDisabled = errors.New("authentication source disabled")

// attachPAM loads pam.bpf.c with the tracer's shared maps and attaches its
// probes to libpam. It returns the library it attached to; on error nothing
// stays attached (t.closers gets only what succeeded, and the caller closes
// those of a failed attempt through undo).
func (t *Tracer) attachPAM(opts PAMOptions, excludeTGID uint32, wakeupBytes uint64) (lib string, err error) {
	if opts.Disabled {
		return "", ErrAuthDisabled
	}
	lib = opts.Library
	if lib == "" {
		root := opts.Root
		if root == "" {
			root = "/"
		}
		if lib, err = findLibrary(root, pamLibrary); err != nil {
			return "", err
		}
	}

	spec, err := loadPam()
	if err != nil {
		return "", fmt.Errorf("load pam object: %w", err)
	}
	var specs pamSpecs
	if err := spec.Assign(&specs); err != nil {
		return "", fmt.Errorf("pam object: %w", err)
	}
	if err := specs.ExcludeTgid.Set(excludeTGID); err != nil {
		return "", fmt.Errorf("set exclude_tgid: %w", err)
	}
	if err := specs.WakeupBytes.Set(wakeupBytes); err != nil {
		return "", fmt.Errorf("set wakeup_bytes: %w", err)
	}

	// Everything opened here is released if a later step fails, so a refused
	// probe leaves no half-attached source behind.
	var opened []namedCloser
	defer func() {
		if err != nil {
			for i := len(opened) - 1; i >= 0; i-- {
				err = errors.Join(err, opened[i].c.Close())
			}
			return
		}
		t.closers = append(t.closers, opened...)
	}()

	var objs pamObjects
	err = spec.LoadAndAssign(&objs, &ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{
		"events":  t.maps.Events,
		"lost":    t.maps.Lost,
		"submits": t.maps.Submits,
		"inbound": t.maps.Inbound,
	}})
	if err != nil {
		return "", fmt.Errorf("load pam programs: %w", err)
	}
	opened = append(opened, namedCloser{"pam objects", &objs})

	ex, err := link.OpenExecutable(lib)
	if err != nil {
		return "", fmt.Errorf("open %s: %w", lib, err)
	}
	// The uprobe PMU first; where the kernel wants CAP_SYS_ADMIN for it (or
	// lacks it), an event made through tracefs (uprobe_tracefs.go).
	attach := func(symbol string, prog *ebpf.Program, ret bool) (io.Closer, error) {
		var l io.Closer
		var pmuErr error
		switch {
		case tracefsUprobesOnly:
			pmuErr = errTracefsUprobesOnly
		case ret:
			l, pmuErr = ex.Uretprobe(symbol, prog, nil)
		default:
			l, pmuErr = ex.Uprobe(symbol, prog, nil)
		}
		if pmuErr == nil {
			return l, nil
		}
		l, tfErr := attachUprobeTracefs(lib, symbol, ret, prog)
		if tfErr != nil {
			return nil, fmt.Errorf("%w; through tracefs: %w", pmuErr, tfErr)
		}
		return l, nil
	}
	for _, f := range pamFuncs {
		l, err := attach(f.symbol, f.entry(&objs.pamPrograms), false)
		if err != nil {
			return "", fmt.Errorf("attach uprobe %s in %s: %w", f.symbol, lib, err)
		}
		opened = append(opened, namedCloser{"uprobe " + f.symbol + " link", l})
		l, err = attach(f.symbol, f.ret(&objs.pamPrograms), true)
		if err != nil {
			return "", fmt.Errorf("attach uretprobe %s in %s: %w", f.symbol, lib, err)
		}
		opened = append(opened, namedCloser{"uretprobe " + f.symbol + " link", l})
	}
	for _, f := range pamFuncs {
		t.hooks.Programs = append(t.hooks.Programs, "uprobe/"+f.symbol, "uretprobe/"+f.symbol)
		t.progs = append(t.progs, f.entry(&objs.pamPrograms), f.ret(&objs.pamPrograms))
	}
	return lib, nil
}
