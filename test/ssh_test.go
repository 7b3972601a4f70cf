package test

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/connwarden/connwarden/detector/event"
	"github.com/connwarden/connwarden/internal/kerneltest"
	"github.com/connwarden/connwarden/test/topology"
)

// The brute-force tests run Debian's OpenSSH server, with PAM, in the
// victim's namespace and the real ssh client in the attacker's and the
// internal host's. A test user with a known password exists for the length of
// the test; the server allows only that user.

// sshUser is a local account the tests authenticate as.
type sshUser struct{ name, password string }

// newSSHUser creates a user without a home directory and removes it when the
// test ends.
func newSSHUser(t *testing.T) sshUser {
	t.Helper()
	for _, tool := range []string{"useradd", "userdel", "chpasswd", "ssh", "ssh-keygen", "/usr/sbin/sshd"} {
		if _, err := exec.LookPath(tool); err != nil {
			kerneltest.Unsupported(t, "%s not found (make setup installs OpenSSH): %v", tool, err)
		}
	}
	u := sshUser{name: "cwssh" + randID()[:6], password: "right-" + randID()}
	if out, err := exec.Command("useradd", "-M", "-N", "-d", "/nonexistent", "-s", "/bin/sh", u.name).CombinedOutput(); err != nil {
		t.Fatalf("useradd: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("userdel", u.name).CombinedOutput(); err != nil {
			t.Errorf("userdel %s: %v: %s", u.name, err, out)
		}
	})
	cmd := exec.Command("chpasswd")
	cmd.Stdin = strings.NewReader(u.name + ":" + u.password + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("chpasswd: %v: %s", err, out)
	}
	return u
}

// sshLab is an sshd serving the victim's addresses on port 22.
type sshLab struct {
	t    *testing.T
	top  *topology.Topology
	user sshUser
	dir  string
}

// startSSHD starts sshd in the victim's namespace, listening on the victim's
// addresses toward the attacker (IPv4 and IPv6) and the internal host, and
// kills it, its per-connection processes and every client left in the
// topology when the test ends.
func startSSHD(t *testing.T, top *topology.Topology, user sshUser) *sshLab {
	t.Helper()
	l := &sshLab{t: t, top: top, user: user, dir: t.TempDir()}
	key := filepath.Join(l.dir, "hostkey")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v: %s", err, out)
	}
	// sshd's privilege separation directory; Debian's unit creates it.
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(l.dir, "sshd_config")
	conf := fmt.Sprintf(`Port 22
ListenAddress %s
ListenAddress %s
ListenAddress %s
HostKey %s
PidFile %s
UsePAM yes
PasswordAuthentication yes
KbdInteractiveAuthentication no
PubkeyAuthentication no
PermitRootLogin no
AllowUsers %s
MaxAuthTries 10
MaxStartups 100:30:200
LoginGraceTime 60
UseDNS no
PrintMotd no
StrictModes no
LogLevel VERBOSE
`, top.Victim.IPv4, top.Victim.IPv6, top.VictimInternal4, key, filepath.Join(l.dir, "sshd.pid"), user.name)
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(l.dir, "sshd.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := top.Victim.Command("/usr/sbin/sshd", "-D", "-e", "-f", cfg)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("sshd: %v", err)
	}
	t.Cleanup(func() {
		for _, h := range []*topology.Host{top.Attacker, top.Internal, top.Victim} {
			h.KillAll()
		}
		cmd.Wait()
		logf.Close()
		if t.Failed() {
			if b, err := os.ReadFile(logf.Name()); err == nil {
				t.Logf("sshd log:\n%s", b)
			}
		}
	})
	for deadline := time.Now().Add(10 * time.Second); ; {
		if n, _ := top.Internal.Dial(netip.AddrPortFrom(top.VictimInternal4, 22), 1, time.Second); n == 1 {
			return l
		}
		if time.Now().After(deadline) {
			t.Fatal("sshd not accepting connections after 10s")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// sshResult is how one ssh client run ended.
type sshResult struct {
	err error
	out string
}

// login runs ssh from h (from source address src when valid) to dst as the
// lab's user, answering each of prompts password prompts with password
// (SSH_ASKPASS), and runs `true` if it gets in. The run is bounded by timeout.
func (l *sshLab) login(h *topology.Host, src, dst netip.Addr, password string, prompts int, timeout time.Duration) sshResult {
	askpass := filepath.Join(l.dir, "askpass")
	if _, err := os.Stat(askpass); err != nil {
		os.WriteFile(askpass, []byte("#!/bin/sh\nprintf '%s\\n' \"$CW_PASSWORD\"\n"), 0o755)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	args := []string{"--net=/run/netns/" + h.Name, "--", "ssh", "-F", "/dev/null",
		"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "GlobalKnownHostsFile=/dev/null",
		"-o", "PreferredAuthentications=password", "-o", "PubkeyAuthentication=no",
		"-o", fmt.Sprintf("NumberOfPasswordPrompts=%d", prompts), "-o", "ConnectTimeout=3", "-o", "LogLevel=ERROR"}
	if src.IsValid() {
		args = append(args, "-b", src.String())
	}
	args = append(args, l.user.name+"@"+dst.String(), "true")
	cmd := exec.CommandContext(ctx, "nsenter", args...)
	cmd.Env = append(os.Environ(), "SSH_ASKPASS="+askpass, "SSH_ASKPASS_REQUIRE=force", "DISPLAY=none", "CW_PASSWORD="+password)
	// A session of its own: no controlling terminal (the password comes from
	// SSH_ASKPASS), and one process group to kill on timeout, ssh included.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	out, err := cmd.CombinedOutput()
	return sshResult{err: err, out: strings.TrimSpace(string(out))}
}

// attack runs one ssh client per source address in srcs at once from h, each
// making prompts wrong guesses down its one connection.
func (l *sshLab) attack(h *topology.Host, srcs []netip.Addr, dst netip.Addr, prompts int) []sshResult {
	res := make([]sshResult, len(srcs))
	var wg sync.WaitGroup
	for i, src := range srcs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// A client whose connection the block cut hangs until then.
			res[i] = l.login(h, src, dst, "wrong-"+randID(), prompts, 20*time.Second)
		}()
	}
	wg.Wait()
	return res
}

// recorder runs `connwarden record` on the host for the length of a test: an
// independent tracer whose events show what the kernel saw.
type recorder struct {
	t    *testing.T
	cmd  *exec.Cmd
	path string
	done chan string // the rest of its stderr, once it exits
	lost *uint64     // events it lost in the kernel, once stopped
}

func startRecorder(t *testing.T) *recorder {
	t.Helper()
	r := &recorder{t: t, path: filepath.Join(t.TempDir(), "events.jsonl")}
	r.cmd = exec.Command(agentBin, "record", "-o", r.path, "--duration", "5m")
	stderr, err := r.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.cmd.Process.Kill(); r.cmd.Wait() })
	// It says "recording: ..." once its tracer is attached.
	line, err := bufio.NewReader(stderr).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "recording: ") {
		t.Fatalf("recorder did not start: %q %v", line, err)
	}
	if !strings.Contains(line, "pam probes on ") {
		t.Fatalf("recorder has no authentication source: %s", line)
	}
	r.done = make(chan string, 1)
	go func() {
		rest, _ := io.ReadAll(stderr)
		r.done <- string(rest)
	}()
	return r
}

// authEvents stops the recorder and returns the authentication events of
// sshd processes, in kernel time order, and how many events it lost (other
// packages' tests flood the machine's tracers; a lost event cannot be
// counted on).
func (r *recorder) authEvents() ([]event.Event, uint64) {
	r.t.Helper()
	if r.lost == nil {
		r.cmd.Process.Signal(syscall.SIGINT)
		r.cmd.Wait()
		var n, lost uint64
		tail := <-r.done
		if _, err := fmt.Sscanf(strings.TrimSpace(tail), "recorded %d events (%d lost in the kernel)", &n, &lost); err != nil {
			r.t.Fatalf("recorder's last words %q: %v", tail, err)
		}
		r.lost = &lost
	}
	f, err := os.Open(r.path)
	if err != nil {
		r.t.Fatal(err)
	}
	defer f.Close()
	var out []event.Event
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var ev event.Event
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			r.t.Fatalf("recorded event: %v: %s", err, sc.Bytes())
		}
		if ev.Kind == event.KindAuth && string(ev.ServiceBytes()) == "sshd" {
			out = append(out, ev)
		}
	}
	slices.SortFunc(out, func(a, b event.Event) int { return cmp.Compare(a.Timestamp, b.Timestamp) })
	return out, *r.lost
}

// routedV6 gives the attacker n addresses in a /64 of its own (the link's
// /64 holds the victim's address too, which the agent never blocks), routed
// through the victim, and returns them and the /64.
func routedV6(t *testing.T, top *topology.Topology, n int) ([]netip.Addr, netip.Prefix) {
	t.Helper()
	b := top.Attacker.IPv6.As16()
	b[6], b[7] = 0, 0x99 // fd00:c3:A:1::/64 -> fd00:c3:A:99::/64
	clear(b[8:])
	net64 := netip.PrefixFrom(netip.AddrFrom16(b), 64)
	var addrs []netip.Addr
	for i := range n {
		b[15] = byte(0x10 + i)
		a := netip.AddrFrom16(b)
		if out, err := exec.Command("ip", "-n", top.Attacker.Name, "addr", "add", a.String()+"/128", "dev", top.Attacker.IfName, "nodad").CombinedOutput(); err != nil {
			t.Fatalf("add %v: %v: %s", a, err, out)
		}
		addrs = append(addrs, a)
	}
	if out, err := exec.Command("ip", "-n", top.Victim.Name, "-6", "route", "add", net64.String(), "via", top.Attacker.IPv6.String()).CombinedOutput(); err != nil {
		t.Fatalf("route %v: %v: %s", net64, err, out)
	}
	return addrs, net64
}

// TestSSHBruteForce attacks a real OpenSSH server from the attacker's
// namespace over IPv4 and IPv6, with one guess per connection and with
// several guesses down a few long-lived connections, and over IPv6 also from
// a new address for every guess inside one /64. Each attack is alerted and
// blocked by the default rules, the block stops further guesses, the events
// name the attacker as the peer, and a client that knows the password is
// never blocked.
func TestSSHBruteForce(t *testing.T) {
	kerneltest.Require(t)
	user := newSSHUser(t)
	for _, tc := range []struct {
		name           string
		v6             bool
		conns, prompts int
		rotate         bool // IPv6: every connection from another address of one /64
	}{
		{name: "ipv4 one guess per connection", conns: 6, prompts: 1},
		{name: "ipv4 three guesses per connection", conns: 2, prompts: 3},
		{name: "ipv6 one guess per connection from rotating addresses", v6: true, conns: 6, prompts: 1, rotate: true},
		{name: "ipv6 three guesses per connection", v6: true, conns: 2, prompts: 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			top := topology.New(t)
			lab := startSSHD(t, top, user)
			victim := top.Victim.IPv4
			srcs := slices.Repeat([]netip.Addr{top.Attacker.IPv4}, tc.conns)
			wantBlocks := []netip.Prefix{netip.PrefixFrom(top.Attacker.IPv4, 32)}
			rule := "auth-failures"
			if tc.v6 {
				victim = top.Victim.IPv6
				addrs, net64 := routedV6(t, top, tc.conns)
				if tc.rotate {
					srcs, wantBlocks, rule = addrs, []netip.Prefix{net64}, "auth-failures-ipv6-net"
				} else {
					srcs = slices.Repeat(addrs[:1], tc.conns)
					wantBlocks = []netip.Prefix{netip.PrefixFrom(addrs[0], 128), net64}
				}
			}
			a := newAgent(t, top, nil)
			a.startDefault()
			rec := startRecorder(t)

			// The right password from the internal host works before the attack.
			if r := lab.login(top.Internal, netip.Addr{}, top.VictimInternal4, user.password, 1, 20*time.Second); r.err != nil {
				t.Fatalf("login with the right password: %v: %s", r.err, r.out)
			}

			res := lab.attack(top.Attacker, srcs, victim, tc.prompts)
			t.Cleanup(func() {
				if t.Failed() {
					for _, r := range res {
						t.Logf("attack client: %v: %s", r.err, r.out)
					}
					evs, _ := rec.authEvents()
					for _, ev := range evs {
						b, _ := json.Marshal(ev)
						t.Logf("recorded: %s", b)
					}
					for _, al := range a.alerts() {
						if rl, _ := al["rule"].(map[string]any); strings.HasPrefix(fmt.Sprint(rl["name"]), "auth") {
							b, _ := json.Marshal(al)
							t.Logf("alert: %s", b)
						}
					}
				}
			})
			for _, r := range res {
				if r.err == nil {
					t.Errorf("a wrong password got in: %s", r.out)
				}
			}
			for _, p := range wantBlocks {
				a.waitBlockedPrefix(p, 10*time.Second)
			}
			al := a.waitAlertFrom(rule, srcs, 5*time.Second)
			cw, _ := al["connwarden"].(map[string]any)
			auth, _ := cw["auth"].(map[string]any)
			if auth["peer"] != "known" || auth["service"] != "sshd" || auth["user"] != user.name || auth["result"] != "PAM_AUTH_ERR" {
				t.Errorf("alert's authentication %v: want sshd, %s, PAM_AUTH_ERR, peer known", auth, user.name)
			}
			latency := a.metric("connwarden_detect_to_block_seconds_sum") / a.metric("connwarden_detect_to_block_seconds_count")

			// Blocked, the attacker cannot even connect, so it guesses no more.
			for _, r := range lab.attack(top.Attacker, srcs[:2], victim, 1) {
				if r.err == nil {
					t.Errorf("blocked attacker logged in: %s", r.out)
				}
			}
			// The right password still works for the unflagged internal host.
			if r := lab.login(top.Internal, netip.Addr{}, top.VictimInternal4, user.password, 1, 20*time.Second); r.err != nil {
				t.Errorf("login with the right password after the attack: %v: %s", r.err, r.out)
			}

			evs, lost := rec.authEvents()
			var fails []event.Event
			okInternal := 0
			for _, ev := range evs {
				switch {
				case slices.Contains(srcs, ev.Remote.Addr()):
					if ev.Local.Addr() != victim || ev.Local.Port() != 22 || ev.Peers != 1 {
						t.Errorf("attacker's event names local %v with %d peers, want %v:22 and 1", ev.Local, ev.Peers, victim)
					}
					if ev.Outcome() == event.OutcomeFailure {
						fails = append(fails, ev)
					}
				case ev.Remote.Addr() == top.Internal.IPv4:
					if ev.Outcome() == event.OutcomeSuccess {
						okInternal++
					}
				case ev.Local.Addr() == victim || ev.Local.Addr() == top.VictimInternal4:
					t.Errorf("sshd event with peer %v (%d inbound connections): want the attacker or the internal host", ev.Remote, ev.Peers)
				}
			}
			if want := tc.conns * tc.prompts; len(fails) > want || (lost == 0 && len(fails) < 5) {
				t.Fatalf("%d failed authentications from the attacker recorded, want 5 to %d", len(fails), want)
			}
			if okInternal > 2 || (lost == 0 && okInternal != 2) {
				t.Errorf("%d successful logins of the internal host recorded, want 2", okInternal)
			}
			if lost > 0 || len(fails) < 5 {
				t.Logf("the recorder lost %d events to other tests' load: counts from its recording are lower bounds", lost)
				return
			}
			for _, e := range a.blocklist() {
				if strings.HasPrefix(e.Address, top.Internal.IPv4.String()+"/") {
					t.Errorf("the internal host, which knew the password, is blocked: %+v", e)
				}
			}
			// Guesses answered after the block was in the map were already in
			// flight: PAM had them before the block (its failure delay is 2 s).
			crossing := fails[4].Timestamp
			inMap := crossing + uint64(latency*1e9)
			after := 0
			for _, ev := range fails {
				if ev.Timestamp > inMap {
					after++
					if ev.Timestamp > inMap+uint64(3*time.Second) {
						t.Errorf("a failure %v after the block: not one in flight", time.Duration(ev.Timestamp-inMap))
					}
				}
			}
			t.Logf("MEASURED %s: detect-to-block %.3f ms; %d failures recorded, %d answered after the block (in flight); blocked %v",
				tc.name, latency*1e3, len(fails), after, wantBlocks)
		})
	}
}

// waitAlertFrom is waitAlert for an alert whose source is any of srcs.
func (a *agentProc) waitAlertFrom(rule string, srcs []netip.Addr, within time.Duration) map[string]any {
	a.t.Helper()
	for deadline := time.Now().Add(within); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		for _, m := range a.alerts() {
			r, _ := m["rule"].(map[string]any)
			src, _ := m["source"].(map[string]any)
			if r != nil && r["name"] == rule && src != nil {
				if ip, err := netip.ParseAddr(fmt.Sprint(src["ip"])); err == nil && slices.Contains(srcs, ip) {
					return m
				}
			}
		}
	}
	a.t.Fatalf("no alert of rule %s from %v within %v", rule, srcs, within)
	return nil
}

// TestSSHBruteForceAllowlisted: an allowlisted client guessing passwords is
// alerted on but never blocked, and can still log in with the right one.
func TestSSHBruteForceAllowlisted(t *testing.T) {
	kerneltest.Require(t)
	user := newSSHUser(t)
	top := topology.New(t)
	lab := startSSHD(t, top, user)
	files := map[string]string{"allow.yaml": "allowlist: [" + top.Attacker.IPv4.String() + "]\n"}
	defaults, err := filepath.Glob("../rules/default/*.yaml")
	if err != nil || len(defaults) == 0 {
		t.Fatalf("default rules: %v %v", defaults, err)
	}
	for _, p := range defaults {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		files[filepath.Base(p)] = string(b)
	}
	a := newAgent(t, top, files)
	a.start()
	for _, r := range lab.attack(top.Attacker, slices.Repeat([]netip.Addr{top.Attacker.IPv4}, 6), top.Victim.IPv4, 1) {
		if r.err == nil {
			t.Errorf("a wrong password got in: %s", r.out)
		}
	}
	al := a.waitAlert("auth-failures", top.Attacker.IPv4, 10*time.Second)
	if cw, _ := al["connwarden"].(map[string]any); cw["block_suppressed"] != "allowlisted" || cw["block"] != nil {
		t.Errorf("alert connwarden %v: want block_suppressed allowlisted and no block", cw)
	}
	if r := lab.login(top.Attacker, netip.Addr{}, top.Victim.IPv4, user.password, 1, 20*time.Second); r.err != nil {
		t.Errorf("allowlisted client with the right password: %v: %s", r.err, r.out)
	}
	for _, e := range a.blocklist() {
		if strings.HasPrefix(e.Address, top.Attacker.IPv4.String()+"/") {
			t.Errorf("allowlisted client blocked: %+v", e)
		}
	}
}
