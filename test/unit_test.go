package test

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// unitPath is the systemd unit the end-to-end tests hold the agent to.
const unitPath = "../deploy/systemd/connwarden.service"

// unitFile is a parsed systemd unit: section -> key -> values in order (keys
// such as ExecReload= may repeat).
type unitFile map[string]map[string][]string

// parseUnit reads a unit file as systemd does for what the tests need:
// sections, key=value, comments (# ;), backslash continuation lines.
func parseUnit(t *testing.T, path string) unitFile {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	u := unitFile{}
	section := ""
	sc := bufio.NewScanner(bytes.NewReader(b))
	var cont string
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if cont != "" {
			line, cont = cont+" "+line, ""
		}
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		if strings.HasSuffix(line, `\`) {
			cont = strings.TrimSuffix(line, `\`)
			continue
		}
		if line[0] == '[' && line[len(line)-1] == ']' {
			section = line[1 : len(line)-1]
			u[section] = map[string][]string{}
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || section == "" {
			t.Fatalf("%s:%d: not key=value in a section: %q", path, n, line)
		}
		u[section][strings.TrimSpace(k)] = append(u[section][strings.TrimSpace(k)], strings.TrimSpace(v))
	}
	return u
}

// one returns the single value of [Service] key, failing when it is absent or
// repeated.
func (u unitFile) one(t *testing.T, key string) string {
	t.Helper()
	vs := u["Service"][key]
	if len(vs) != 1 {
		t.Fatalf("unit: want exactly one %s=, have %q", key, vs)
	}
	return vs[0]
}

// command splits an Exec*= value into argv, dropping systemd's prefixes
// (-, @, :, +, !) which the unit must not use: each would change what runs
// with which privileges.
func (u unitFile) command(t *testing.T, value string) []string {
	t.Helper()
	if strings.ContainsAny(value[:1], "-@:+!") {
		t.Fatalf("unit: %q: a prefix changes how systemd runs it; the tests do not model that", value)
	}
	return strings.Fields(value)
}

// capabilityNumbers names every capability Linux 6.x knows, as systemd spells them.
var capabilityNumbers = map[string]int{
	"CAP_CHOWN": unix.CAP_CHOWN, "CAP_DAC_OVERRIDE": unix.CAP_DAC_OVERRIDE,
	"CAP_DAC_READ_SEARCH": unix.CAP_DAC_READ_SEARCH, "CAP_FOWNER": unix.CAP_FOWNER,
	"CAP_FSETID": unix.CAP_FSETID, "CAP_KILL": unix.CAP_KILL, "CAP_SETGID": unix.CAP_SETGID,
	"CAP_SETUID": unix.CAP_SETUID, "CAP_SETPCAP": unix.CAP_SETPCAP,
	"CAP_LINUX_IMMUTABLE": unix.CAP_LINUX_IMMUTABLE, "CAP_NET_BIND_SERVICE": unix.CAP_NET_BIND_SERVICE,
	"CAP_NET_BROADCAST": unix.CAP_NET_BROADCAST, "CAP_NET_ADMIN": unix.CAP_NET_ADMIN,
	"CAP_NET_RAW": unix.CAP_NET_RAW, "CAP_IPC_LOCK": unix.CAP_IPC_LOCK, "CAP_IPC_OWNER": unix.CAP_IPC_OWNER,
	"CAP_SYS_MODULE": unix.CAP_SYS_MODULE, "CAP_SYS_RAWIO": unix.CAP_SYS_RAWIO,
	"CAP_SYS_CHROOT": unix.CAP_SYS_CHROOT, "CAP_SYS_PTRACE": unix.CAP_SYS_PTRACE,
	"CAP_SYS_PACCT": unix.CAP_SYS_PACCT, "CAP_SYS_ADMIN": unix.CAP_SYS_ADMIN, "CAP_SYS_BOOT": unix.CAP_SYS_BOOT,
	"CAP_SYS_NICE": unix.CAP_SYS_NICE, "CAP_SYS_RESOURCE": unix.CAP_SYS_RESOURCE,
	"CAP_SYS_TIME": unix.CAP_SYS_TIME, "CAP_SYS_TTY_CONFIG": unix.CAP_SYS_TTY_CONFIG,
	"CAP_MKNOD": unix.CAP_MKNOD, "CAP_LEASE": unix.CAP_LEASE, "CAP_AUDIT_WRITE": unix.CAP_AUDIT_WRITE,
	"CAP_AUDIT_CONTROL": unix.CAP_AUDIT_CONTROL, "CAP_SETFCAP": unix.CAP_SETFCAP,
	"CAP_MAC_OVERRIDE": unix.CAP_MAC_OVERRIDE, "CAP_MAC_ADMIN": unix.CAP_MAC_ADMIN,
	"CAP_SYSLOG": unix.CAP_SYSLOG, "CAP_WAKE_ALARM": unix.CAP_WAKE_ALARM,
	"CAP_BLOCK_SUSPEND": unix.CAP_BLOCK_SUSPEND, "CAP_AUDIT_READ": unix.CAP_AUDIT_READ,
	"CAP_PERFMON": unix.CAP_PERFMON, "CAP_BPF": unix.CAP_BPF,
	"CAP_CHECKPOINT_RESTORE": unix.CAP_CHECKPOINT_RESTORE,
}

// capabilities returns what the unit grants the agent: its
// CapabilityBoundingSet= (which, for a root service, is what the process
// holds), checked to be a plain list of known names.
func (u unitFile) capabilities(t *testing.T) []string {
	t.Helper()
	if u.one(t, "User") != "root" {
		t.Fatalf("unit: User=%s; the tests model a root service, whose bounding set is what it holds", u.one(t, "User"))
	}
	var caps []string
	for _, f := range strings.Fields(u.one(t, "CapabilityBoundingSet")) {
		if _, ok := capabilityNumbers[f]; !ok {
			t.Fatalf("unit: CapabilityBoundingSet: %q is not a capability name (a ~ deny list is not modelled)", f)
		}
		caps = append(caps, f)
	}
	if len(caps) == 0 {
		t.Fatal("unit: CapabilityBoundingSet is empty")
	}
	// Ambient capabilities matter for non-root users only; if present they
	// must not name anything outside the bounding set.
	for _, v := range u["Service"]["AmbientCapabilities"] {
		for _, f := range strings.Fields(v) {
			if !slices.Contains(caps, f) {
				t.Fatalf("unit: AmbientCapabilities %s is outside the bounding set", f)
			}
		}
	}
	slices.Sort(caps)
	return caps
}

// capMask is the bitmask /proc/PID/status shows for caps.
func capMask(caps []string) uint64 {
	var m uint64
	for _, c := range caps {
		m |= 1 << capabilityNumbers[c]
	}
	return m
}

// setprivArgs runs the rest of the command line holding exactly caps, as
// systemd runs a root service with CapabilityBoundingSet=caps and
// NoNewPrivileges=yes: root's permitted set after exec is the bounding set
// (with an empty inheritable set), so limiting the bounding set is the whole
// of it.
func setprivArgs(caps []string) []string {
	var b strings.Builder
	b.WriteString("-all")
	for _, c := range caps {
		b.WriteString(",+" + strings.ToLower(strings.TrimPrefix(c, "CAP_")))
	}
	return []string{"setpriv", "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=" + b.String(), "--no-new-privs", "--"}
}

// procCaps reads the capability sets and no_new_privs of pid.
func procCaps(t *testing.T, pid int) map[string]uint64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]uint64{}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		switch k {
		case "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs":
			n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				t.Fatalf("status %s: %v", k, err)
			}
			out[k] = n
		}
	}
	return out
}

// The unit parser reads what systemd would, so the capability and command
// checks cannot pass on a misread file.
func TestParseUnit(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "x.service")
	os.WriteFile(p, []byte("[Unit]\nDescription=x\n# CapabilityBoundingSet=CAP_SYS_ADMIN\n[Service]\nUser=root\nCapabilityBoundingSet=CAP_BPF \\\n  CAP_NET_ADMIN\nExecReload=/a b\nExecReload=/c\n"), 0o644)
	u := parseUnit(t, p)
	if got := u.capabilities(t); !slices.Equal(got, []string{"CAP_BPF", "CAP_NET_ADMIN"}) {
		t.Errorf("capabilities %q", got)
	}
	if got := u["Service"]["ExecReload"]; !slices.Equal(got, []string{"/a b", "/c"}) {
		t.Errorf("ExecReload %q", got)
	}
	if m := capMask([]string{"CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"}); m != 0xc000001000 {
		t.Errorf("mask %#x", m)
	}
}
