package test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
	"golang.org/x/sys/unix"

	"github.com/connwarden/connwarden/bpf"
	"github.com/connwarden/connwarden/internal/kerneltest"
)

// The files `make install` puts where the unit expects them, by install path.
var installedFrom = map[string]string{
	"/etc/connwarden/config.yaml": "../deploy/config.yaml",
}

// unitRunArgs returns the unit's ExecStart= arguments after `run`, with
// installed paths mapped to the repository's files.
func unitRunArgs(t *testing.T, u unitFile) []string {
	t.Helper()
	argv := u.command(t, u.one(t, "ExecStart"))
	if len(argv) < 2 || filepath.Base(argv[0]) != "connwarden" || argv[1] != "run" {
		t.Fatalf("unit: ExecStart=%q: want connwarden run ...", argv)
	}
	var out []string
	for _, a := range argv[2:] {
		if strings.HasPrefix(a, "/") {
			src, ok := installedFrom[a]
			if !ok {
				t.Fatalf("unit: ExecStart passes %s, which the test does not know how to provide", a)
			}
			abs, err := filepath.Abs(src)
			if err != nil {
				t.Fatal(err)
			}
			a = abs
		}
		out = append(out, a)
	}
	return out
}

// egressCgroup creates a cgroup v2 child for the agent's egress hooks, so
// they refuse connects of nothing but what the test puts there, and removes
// it at the end (call it before newAgent: cleanups run last-in first-out, so
// the agent's links are gone by then).
func egressCgroup(t *testing.T) string {
	t.Helper()
	for _, root := range []string{"/sys/fs/cgroup/unified", "/sys/fs/cgroup"} {
		var st unix.Statfs_t
		if unix.Statfs(root, &st) != nil || st.Type != unix.CGROUP2_SUPER_MAGIC {
			continue
		}
		dir := filepath.Join(root, "connwarden-e2e-"+randID())
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Remove(dir) })
		return dir
	}
	kerneltest.Unsupported(t, "no cgroup v2 mount for the egress hooks")
	return ""
}

// sandboxScript emulates, with a private mount namespace, the file system
// part of the unit's sandbox (these machines run no systemd):
// ProtectSystem=strict and ProtectKernelTunables=yes make every mount
// read-only (ProtectControlGroups= too, /sys/fs/cgroup being under /sys)
// except /dev, /proc (but /proc/sys) and the paths given before "--"
// (ReadWritePaths= and the stand-in for RuntimeDirectory=). Then it runs the
// rest of its arguments. Remounts are bind remounts: they change this
// namespace's view, never the file systems themselves.
const sandboxScript = `set -eu
rw=
while [ "$1" != -- ]; do rw="$rw $1"; shift; done
shift
for p in $rw; do mount --bind "$p" "$p"; done
mount --bind /proc/sys /proc/sys
for m in $(awk '{print $5}' /proc/self/mountinfo | sort -u); do
	case " $rw " in *" $m "*) continue ;; esac
	case "$m" in
	/dev | /dev/* | /proc) continue ;;
	/proc/*) [ "$m" = /proc/sys ] || continue ;;
	esac
	mount -o remount,bind,ro "$m" 2>/dev/null || echo "sandbox: $m stays writable" >&2
done
exec "$@"
`

func sandboxArgs(t *testing.T, u unitFile, rw ...string) []string {
	t.Helper()
	for k, v := range map[string]string{"ProtectSystem": "strict", "ProtectKernelTunables": "yes", "ProtectControlGroups": "yes"} {
		if got := u.one(t, k); got != v {
			t.Fatalf("unit: %s=%s; the sandbox emulation models %s=%s", k, got, k, v)
		}
	}
	for _, v := range u["Service"]["ReadWritePaths"] {
		rw = append(rw, strings.Fields(v)...)
	}
	return append(append([]string{"unshare", "--mount", "--propagation", "slave", "--", "sh", "-c", sandboxScript, "sandbox"}, rw...), "--")
}

// mountModes returns, for each mount point of pid, whether its topmost mount
// is read-only.
func mountModes(t *testing.T, pid int) map[string]bool {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
	if err != nil {
		t.Fatal(err)
	}
	ro := map[string]bool{}
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(l)
		if len(f) < 6 {
			continue
		}
		ro[f[4]] = slices.Contains(strings.Split(f[5], ","), "ro")
	}
	return ro
}

// The agent, run as the unit runs it (its ExecStart arguments and config
// file, exactly its capabilities, NoNewPrivileges, the file system sandbox),
// loads, attaches XDP and the egress hooks, detects a burst, blocks it,
// reloads on SIGHUP, and stops leaving its pins in the host's bpffs.
func TestUnitAgentRunsWithExactlyItsCapabilities(t *testing.T) {
	top := requireKernel(t)
	u := parseUnit(t, unitPath)
	caps := u.capabilities(t)
	cg := egressCgroup(t)
	a := newAgent(t, top, map[string]string{"burst.yaml": burstRule})
	a.wrap = append(sandboxArgs(t, u, a.dir), setprivArgs(caps)...)
	a.start(append(unitRunArgs(t, u), "--egress", "--cgroup", cg)...)

	pid := a.cmd.Process.Pid
	if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); exe != agentBin {
		t.Fatalf("pid %d runs %q, not the agent", pid, exe)
	}
	pc, want := procCaps(t, pid), capMask(caps)
	for _, k := range []string{"CapPrm", "CapEff", "CapBnd"} {
		if pc[k] != want {
			t.Errorf("%s %#x, want %#x (%s)", k, pc[k], want, strings.Join(caps, " "))
		}
	}
	if pc["CapInh"] != 0 || pc["CapAmb"] != 0 || pc["NoNewPrivs"] != 1 {
		t.Errorf("CapInh %#x CapAmb %#x NoNewPrivs %d; want 0 0 1", pc["CapInh"], pc["CapAmb"], pc["NoNewPrivs"])
	}
	ro := mountModes(t, pid)
	for mnt, wantRO := range map[string]bool{"/": true, "/sys": true, "/sys/kernel/tracing": false, "/proc/sys": true, "/sys/fs/bpf": false, a.dir: false} {
		if got, ok := ro[mnt]; !ok || got != wantRO {
			t.Errorf("sandbox: %s read-only=%v (mounted %v), want %v", mnt, got, ok, wantRO)
		}
	}
	if ro, ok := ro[filepath.Dir(cg)]; !ok || !ro {
		t.Errorf("sandbox: the cgroup mount %s is not read-only", filepath.Dir(cg))
	}
	// The PAM probes attach with these capabilities too: the start-up line
	// names the library rather than a refusal.
	for _, want := range []string{`"msg":"connwarden started"`, `"xdp":["` + a.iface + `/`, `"egress":true`, `pam probes on /`} {
		if !strings.Contains(a.log(), want) {
			t.Errorf("start-up log lacks %s:\n%s", want, a.log())
		}
	}

	svc := serve(t, top.Victim, top.Victim.IPv4, 0)
	if n := dial(t, top.Attacker, svc, 5, 2*time.Second); n != 5 {
		t.Fatalf("only %d of 5 connections before the block", n)
	}
	a.waitBlocked(top.Attacker.IPv4, 10*time.Second)
	a.waitAlert("e2e-inbound-burst", top.Attacker.IPv4, 5*time.Second)
	if n := dial(t, top.Attacker, svc, 1, time.Second); n != 0 {
		t.Error("attacker still connects after the block")
	}

	a.writeRules("more.yaml", strings.ReplaceAll(burstRule, "e2e-inbound-burst", "e2e-added-later"))
	a.cmd.Process.Signal(syscall.SIGHUP)
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(a.log(), "rules reloaded") && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.Contains(a.log(), "rules reloaded") {
		t.Errorf("no reload in the sandbox:\n%s", a.log())
	}

	if err := a.stop(syscall.SIGTERM); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
	// The pins were made inside the agent's mount namespace, in the host's
	// bpffs: they are still here, and so is the block.
	if _, err := os.Stat(filepath.Join(a.pinDir, "links", "xdp-"+a.iface)); err != nil {
		t.Errorf("XDP link pin gone after the sandboxed agent stopped: %v", err)
	}
	if n := dial(t, top.Attacker, svc, 1, time.Second); n != 0 {
		t.Error("attacker connects after the agent stopped")
	}
}

// Each capability of the unit is needed: without any one of them the agent,
// configured as shipped (no egress hooks), refuses to start with the kernel's
// EPERM or EACCES. This is the experiment that chose the set, repeated on
// every run, so a capability that stops being needed is noticed.
func TestUnitCapabilitiesAreEachNeeded(t *testing.T) {
	top := requireKernel(t)
	u := parseUnit(t, unitPath)
	caps := u.capabilities(t)
	rules := t.TempDir()
	os.WriteFile(filepath.Join(rules, "burst.yaml"), []byte(burstRule), 0o644)
	for _, drop := range caps {
		t.Run(drop, func(t *testing.T) {
			dir := t.TempDir()
			pin := "/sys/fs/bpf/connwarden-e2e-" + randID()
			t.Cleanup(func() {
				bpf.RemoveBlocklistPins(pin)
				os.RemoveAll(pin)
			})
			fewer := slices.DeleteFunc(slices.Clone(caps), func(c string) bool { return c == drop })
			argv := append(setprivArgs(fewer), agentBin, "run")
			argv = append(argv, unitRunArgs(t, u)...)
			argv = append(argv, "--rules", rules, "--interface", top.Victim.IfName, "--pin-dir", pin,
				"--api-listen", "", "--api-socket", filepath.Join(dir, "api.sock"), "--alerts", filepath.Join(dir, "alerts.jsonl"),
				"--cleanup-on-exit")
			cmd := top.Victim.Command(argv[0], argv[1:]...)
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case err := <-done:
				var ee *exec.ExitError
				if !errors.As(err, &ee) {
					t.Fatalf("agent without %s: exit %v, want a failure:\n%s", drop, err, out.String())
				}
				if o := out.String(); !strings.Contains(o, "operation not permitted") && !strings.Contains(o, "permission denied") {
					t.Errorf("agent without %s failed, but not for lack of a privilege:\n%s", drop, out.String())
				}
				t.Logf("without %s: %s", drop, lastLine(out.String()))
			case <-time.After(30 * time.Second):
				cmd.Process.Kill()
				<-done
				t.Errorf("agent runs without %s: the unit grants more than it needs:\n%s", drop, out.String())
			}
		})
	}
}

func lastLine(s string) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	return l[len(l)-1]
}

// ExecStartPre= and the first ExecReload= validate the directory the config
// file names; a broken rule set makes them, and the agent itself, exit with
// the code RestartPreventExitStatus= names, so systemd does not restart into
// the same error.
func TestUnitValidatesRulesAndExitCodes(t *testing.T) {
	kerneltest.Require(t) // root: setpriv drops capabilities from the bounding set
	u := parseUnit(t, unitPath)
	caps := u.capabilities(t)
	pre := u.command(t, u.one(t, "ExecStartPre"))
	if len(pre) != 4 || filepath.Base(pre[0]) != "connwarden" || pre[1] != "rules" || pre[2] != "validate" {
		t.Fatalf("ExecStartPre=%q: want connwarden rules validate DIR", pre)
	}
	reload := u["Service"]["ExecReload"]
	if len(reload) != 2 || !slices.Equal(u.command(t, reload[0]), pre) || !strings.HasSuffix(reload[1], "kill -HUP $MAINPID") {
		t.Errorf("ExecReload=%q: want the ExecStartPre validation, then kill -HUP $MAINPID", reload)
	}
	b, err := os.ReadFile(installedFrom["/etc/connwarden/config.yaml"])
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		RulesDir string `yaml:"rules_dir"`
	}
	if err := yaml.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.RulesDir != pre[3] {
		t.Errorf("ExecStartPre validates %s but config.yaml loads rules_dir %s", pre[3], cfg.RulesDir)
	}
	noRestart, err := strconv.Atoi(u.one(t, "RestartPreventExitStatus"))
	if err != nil || u.one(t, "Restart") != "on-failure" {
		t.Fatalf("Restart=%s RestartPreventExitStatus=%s: want on-failure and one exit code", u.one(t, "Restart"), u.one(t, "RestartPreventExitStatus"))
	}

	run := func(argv ...string) (string, int) {
		argv = append(setprivArgs(caps), argv...)
		cmd := exec.Command(argv[0], argv[1:]...)
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return string(out), ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return string(out), 0
	}
	good, bad := t.TempDir(), t.TempDir()
	os.WriteFile(filepath.Join(good, "burst.yaml"), []byte(burstRule), 0o644)
	os.WriteFile(filepath.Join(bad, "burst.yaml"), []byte(strings.Replace(burstRule, "window: 10s", "window: 10", 1)), 0o644)
	if out, code := run(agentBin, "rules", "validate", good); code != 0 {
		t.Errorf("ExecStartPre on valid rules: exit %d:\n%s", code, out)
	}
	if out, code := run(agentBin, "rules", "validate", bad); code != noRestart || !strings.Contains(out, "burst.yaml:10:") {
		t.Errorf("ExecStartPre on a broken rule: exit %d (want %d), output must name burst.yaml:10:\n%s", code, noRestart, out)
	}
	args := append([]string{agentBin, "run"}, unitRunArgs(t, u)...)
	if out, code := run(append(args, "--rules", bad, "--interface", "none", "--api-listen", "", "--api-socket", "")...); code != noRestart {
		t.Errorf("ExecStart on a broken rule: exit %d, want %d:\n%s", code, noRestart, out)
	}
}

// syscallGroups expands a SystemCallFilter= allow list with
// systemd-analyze, groups (@name) recursively.
func syscallGroups(t *testing.T, list string) map[string]bool {
	t.Helper()
	allowed := map[string]bool{}
	var expand func(string)
	expand = func(name string) {
		if !strings.HasPrefix(name, "@") {
			allowed[name] = true
			return
		}
		out, err := exec.Command("systemd-analyze", "syscall-filter", name).Output()
		if err != nil {
			t.Fatalf("systemd-analyze syscall-filter %s: %v", name, err)
		}
		lines := strings.Split(string(out), "\n")[1:] // the first line names the group
		for _, l := range lines {
			l, _, _ = strings.Cut(l, "#")
			for _, f := range strings.Fields(l) {
				expand(f)
			}
		}
	}
	for _, f := range strings.Fields(list) {
		if strings.HasPrefix(f, "~") {
			t.Fatalf("SystemCallFilter %s: a deny list is not modelled", f)
		}
		expand(f)
	}
	return allowed
}

var straceCall = regexp.MustCompile(`^\d+\s+([a-z0-9_]+)\(`)

// Every system call the agent makes while it loads, attaches, detects,
// blocks, serves every API endpoint, reloads and stops is in the unit's
// SystemCallFilter=: the filter cannot break it.
func TestUnitSystemCallFilterAllowsTheAgent(t *testing.T) {
	top := requireKernel(t)
	for _, tool := range []string{"strace", "systemd-analyze"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not installed (make setup)", tool)
		}
	}
	u := parseUnit(t, unitPath)
	allowed := syscallGroups(t, u.one(t, "SystemCallFilter"))
	a := newAgent(t, top, map[string]string{"burst.yaml": burstRule})
	trace := filepath.Join(a.dir, "strace.out")
	a.wrap = append(setprivArgs(u.capabilities(t)), "strace", "-f", "-qq", "-o", trace, "--")
	a.start(unitRunArgs(t, u)...)
	// strace runs the agent as its child: signals go to the agent itself.
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", a.cmd.Process.Pid, a.cmd.Process.Pid))
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); pid == 0 || exe != agentBin {
		t.Fatalf("strace's child %q runs %q, not the agent", b, exe)
	}

	svc := serve(t, top.Victim, top.Victim.IPv4, 0)
	dial(t, top.Attacker, svc, 5, 2*time.Second)
	a.waitBlocked(top.Attacker.IPv4, 10*time.Second)
	c := a.client()
	for _, p := range []string{"/healthz", "/readyz", "/metrics", "/api/v1/stats", "/api/v1/blocklist", "/api/v1/alerts?limit=5", "/api/v1/processes", "/api/v1/rules"} {
		if err := c.Do("GET", p, nil, nil); err != nil {
			t.Errorf("GET %s: %v", p, err)
		}
	}
	if err := c.Do("POST", "/api/v1/blocklist", map[string]string{"address": top.Internal.IPv4.String(), "ttl": "1m"}, nil); err != nil {
		t.Error(err)
	}
	if err := c.Do("DELETE", "/api/v1/blocklist/"+top.Internal.IPv4.String(), nil, nil); err != nil {
		t.Error(err)
	}
	if err := c.Do("POST", "/api/v1/rules/reload", nil, nil); err != nil {
		t.Error(err)
	}
	syscall.Kill(pid, syscall.SIGHUP)
	time.Sleep(300 * time.Millisecond)
	syscall.Kill(pid, syscall.SIGTERM)
	select {
	case err := <-a.exited:
		a.exited <- err
		if err != nil {
			t.Fatalf("agent under strace: %v\n%s", err, a.log())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("agent did not stop after SIGTERM")
	}

	f, err := os.Open(trace)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	used := map[string]int{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if m := straceCall.FindStringSubmatch(sc.Text()); m != nil {
			used[m[1]]++
		}
	}
	for _, must := range []string{"bpf", "perf_event_open", "accept4", "openat"} {
		if used[must] == 0 {
			t.Fatalf("the trace has no %s call: it did not capture the agent (%d distinct calls)", must, len(used))
		}
	}
	var denied []string
	for name := range used {
		if !allowed[name] {
			denied = append(denied, name)
		}
	}
	slices.Sort(denied)
	if len(denied) > 0 {
		t.Errorf("SystemCallFilter=%s would refuse %q", u.one(t, "SystemCallFilter"), denied)
	}
	t.Logf("%d distinct system calls, all allowed", len(used))
}

// writeConfigMapVolume lays out files as kubelet does for a ConfigMap volume
// (its atomic writer): the files in a timestamped directory, ..data a symlink
// to it, each name a symlink into ..data. An update writes a new directory
// and renames a new ..data over the old one: the visible names never change.
func writeConfigMapVolume(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	ts := "..2026_11_21_12_00_00." + randID()
	if err := os.Mkdir(filepath.Join(dir, ts), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, ts, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	old, _ := os.Readlink(filepath.Join(dir, "..data"))
	if err := os.Symlink(ts, filepath.Join(dir, "..data_tmp")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	for name := range files {
		if _, err := os.Lstat(filepath.Join(dir, name)); err != nil {
			os.Symlink(filepath.Join("..data", name), filepath.Join(dir, name))
		}
	}
	if old != "" {
		os.RemoveAll(filepath.Join(dir, old))
	}
}

// The DaemonSet mounts its rules ConfigMap as a directory; when the
// ConfigMap changes, kubelet swaps ..data and the agent reloads by itself.
func TestAgentReloadsConfigMapRules(t *testing.T) {
	top := requireKernel(t)
	a := newAgent(t, top, nil)
	writeConfigMapVolume(t, a.rulesDir, map[string]string{"burst.yaml": burstRule})
	a.start()
	rules := func() []string {
		var rs struct {
			Rules []struct{ Name string } `json:"rules"`
		}
		if err := a.client().Do("GET", "/api/v1/rules", nil, &rs); err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, r := range rs.Rules {
			names = append(names, r.Name)
		}
		return names
	}
	if got := rules(); !slices.Equal(got, []string{"e2e-inbound-burst"}) {
		t.Fatalf("rules from the ConfigMap volume: %q", got)
	}
	// Same file name, new content: only ..data and the timestamped
	// directory change.
	writeConfigMapVolume(t, a.rulesDir, map[string]string{"burst.yaml": strings.ReplaceAll(burstRule, "e2e-inbound-burst", "e2e-from-new-configmap")})
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if got := rules(); slices.Equal(got, []string{"e2e-from-new-configmap"}) {
			return
		}
	}
	t.Fatalf("ConfigMap update not loaded within 10s: rules %q\n%s", rules(), a.log())
}
