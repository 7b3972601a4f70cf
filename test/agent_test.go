package test

import (
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/connwarden/connwarden/bpf"
)

// burstRule blocks a remote peer that completes 5 connections within 10s.
const burstRule = `rules:
  - name: e2e-inbound-burst
    description: A remote peer completed 5 connections within 10 seconds.
    mode: enforce
    severity: high
    tags: [attack.t1499]
    filter:
      kind: [inbound_accept]
    detection:
      threshold: {count: 5, window: 10s, by: [remote_ip]}
    actions:
      block: {ttl: 10m}
`

// The agent catches a burst: an alert line in ECS form, a blocklist entry,
// and the attacker's next connection is dropped in XDP.
func TestAgentBurstAlertsAndBlocks(t *testing.T) {
	top := requireKernel(t)
	a := newAgent(t, top, map[string]string{"burst.yaml": burstRule})
	a.start()
	svc := serve(t, top.Victim, top.Victim.IPv4, 0)

	if n := dial(t, top.Attacker, svc, 5, 2*time.Second); n != 5 {
		t.Fatalf("only %d of 5 connections before the block", n)
	}
	e := a.waitBlocked(top.Attacker.IPv4, 10*time.Second)
	if e.Expires == nil || time.Until(*e.Expires) < 9*time.Minute {
		t.Errorf("block %+v: want a 10m TTL", e)
	}
	al := a.waitAlert("e2e-inbound-burst", top.Attacker.IPv4, 5*time.Second)
	src, _ := al["source"].(map[string]any)
	if src == nil || src["ip"] != top.Attacker.IPv4.String() {
		t.Errorf("alert source %v, want %v", al["source"], top.Attacker.IPv4)
	}
	ev, _ := al["event"].(map[string]any)
	if ev["kind"] != "alert" {
		t.Errorf("event.kind %v", ev["kind"])
	}
	cw, _ := al["connwarden"].(map[string]any)
	blk, _ := cw["block"].(map[string]any)
	if blk == nil || blk["target"] != top.Attacker.IPv4.String()+"/32" || blk["result"] != "ok" {
		t.Errorf("connwarden.block %v", cw["block"])
	}
	if n := dial(t, top.Attacker, svc, 1, time.Second); n != 0 {
		t.Error("attacker still connects after the block")
	}
	// The internal host, never offending, still connects.
	svc2 := serve(t, top.Victim, top.VictimInternal4, 0)
	if n := dial(t, top.Internal, svc2, 1, 2*time.Second); n != 1 {
		t.Error("an innocent host cannot connect")
	}
}

// SIGHUP with a broken rule file keeps the running rules and says why.
func TestAgentReloadRefusesBrokenRules(t *testing.T) {
	top := requireKernel(t)
	a := newAgent(t, top, map[string]string{"burst.yaml": burstRule})
	a.start("--log-level", "info")
	a.writeRules("broken.yaml", "rules:\n  - name: broken\n    mode: enforce\n    detection:\n      threshold: {count: 5, window: 10}\n")
	a.cmd.Process.Signal(syscall.SIGHUP)
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(a.log(), "rules reload refused") && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	log := a.log()
	if !strings.Contains(log, "rules reload refused") {
		t.Fatalf("no refusal logged:\n%s", log)
	}
	if !strings.Contains(log, "broken.yaml:5:") {
		t.Errorf("refusal does not name broken.yaml:5:col:\n%s", log)
	}
	var rs struct {
		Rules []struct{ Name string } `json:"rules"`
	}
	if err := a.client().Do("GET", "/api/v1/rules", nil, &rs); err != nil {
		t.Fatal(err)
	}
	if len(rs.Rules) != 1 || rs.Rules[0].Name != "e2e-inbound-burst" {
		t.Errorf("running rules after refused reload: %+v", rs.Rules)
	}
	var metrics []byte
	if err := a.client().Do("GET", "/metrics", nil, &metrics); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(metrics), "connwarden_rules_last_reload_successful 0") {
		t.Error("reload failure not in metrics")
	}
	// The agent still detects with the old rules.
	svc := serve(t, top.Victim, top.Victim.IPv4, 0)
	dial(t, top.Attacker, svc, 5, 2*time.Second)
	a.waitBlocked(top.Attacker.IPv4, 10*time.Second)
}

// kill -9 then restart: every block and its expiry survive, and XDP keeps
// dropping while no agent runs.
func TestAgentKill9RestartKeepsBlocks(t *testing.T) {
	top := requireKernel(t)
	a := newAgent(t, top, map[string]string{"burst.yaml": burstRule})
	a.start()
	svc := serve(t, top.Victim, top.Victim.IPv4, 0)
	dial(t, top.Attacker, svc, 5, 2*time.Second)
	before := a.waitBlocked(top.Attacker.IPv4, 10*time.Second)
	if err := a.client().Do("POST", "/api/v1/blocklist", map[string]string{"address": top.Internal.IPv6.String(), "ttl": "1h"}, nil); err != nil {
		t.Fatal(err)
	}
	beforeAll := a.blocklist()

	a.stop(syscall.SIGKILL)
	// No agent: the pinned XDP program still drops the attacker.
	if n := dial(t, top.Attacker, svc, 1, time.Second); n != 0 {
		t.Error("attacker connects while the agent is down")
	}
	a.start()
	after := a.blocklist()
	if len(after) != len(beforeAll) {
		t.Fatalf("blocklist before kill %+v, after restart %+v", beforeAll, after)
	}
	for i := range after {
		b, c := beforeAll[i], after[i]
		if b.Address != c.Address || (b.Expires == nil) != (c.Expires == nil) ||
			(b.Expires != nil && b.Expires.Sub(*c.Expires).Abs() > time.Second) {
			t.Errorf("entry changed across restart: %+v -> %+v", b, c)
		}
	}
	if before.Expires == nil {
		t.Error("detector block without expiry")
	}
	if n := dial(t, top.Attacker, svc, 1, time.Second); n != 0 {
		t.Error("attacker connects after restart")
	}
}

// SIGTERM: a clean stop leaves the blocklist pinned and attached.
func TestAgentSIGTERMLeavesBlocklistPinned(t *testing.T) {
	top := requireKernel(t)
	a := newAgent(t, top, map[string]string{"burst.yaml": burstRule})
	a.start()
	if err := a.client().Do("POST", "/api/v1/blocklist", map[string]string{"address": top.Attacker.IPv4.String()}, nil); err != nil {
		t.Fatal(err)
	}
	if err := a.stop(syscall.SIGTERM); err != nil {
		t.Fatalf("agent exit after SIGTERM: %v\n%s", err, a.log())
	}
	var bl *bpf.Blocklist
	if err := top.Victim.Do(func() (err error) {
		bl, err = bpf.OpenBlocklist(bpf.BlocklistOptions{PinDir: a.pinDir})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer bl.Close()
	att := bl.Attached()
	if len(att) != 1 || att[0].Interface != a.iface {
		t.Errorf("attached after SIGTERM: %+v", att)
	}
	if _, ok, _ := bl.Lookup(top.Attacker.IPv4); !ok {
		t.Error("block lost after SIGTERM")
	}
	svc := serve(t, top.Victim, top.Victim.IPv4, 0)
	if n := dial(t, top.Attacker, svc, 1, time.Second); n != 0 {
		t.Error("attacker connects after the agent stopped")
	}
}

// The live /metrics passes promtool.
func TestAgentMetricsPassPromtool(t *testing.T) {
	top := requireKernel(t)
	path, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool not installed (make setup)")
	}
	a := newAgent(t, top, map[string]string{"burst.yaml": burstRule})
	a.start()
	var body []byte
	if err := a.client().Do("GET", "/metrics", nil, &body); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`connwarden_xdp_packets_total{action="pass"}`, `connwarden_xdp_packets_total{action="drop"}`, "connwarden_build_info"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	cmd := exec.Command(path, "check", "metrics")
	cmd.Stdin = strings.NewReader(string(body))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}

// `connwarden demo` runs start to finish, narrates the block and cleans up.
func TestDemoRuns(t *testing.T) {
	requireKernel(t)
	out, err := exec.Command(agentBin, "demo").CombinedOutput()
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, out)
	}
	for _, want := range []string{"ALERT demo-inbound-burst", "decision: block", "0 of 5 pings answered", "3 of 3 pings answered again", "removed."} {
		if !strings.Contains(string(out), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
	// The demo names its namespaces after its victim interface (cwID + v1).
	m := regexp.MustCompile(`\(interface (cw[0-9a-f]{4})v1\)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("demo output names no victim interface:\n%s", out)
	}
	after, _ := exec.Command("ip", "netns", "list").Output()
	if strings.Contains(string(after), string(m[1])) {
		t.Errorf("demo left namespaces %s*:\n%s", m[1], after)
	}
}

// A change in the rules directory is noticed and loaded without a signal.
func TestAgentReloadsOnRulesDirChange(t *testing.T) {
	top := requireKernel(t)
	a := newAgent(t, top, map[string]string{"burst.yaml": burstRule})
	a.start()
	a.writeRules("more.yaml", strings.ReplaceAll(burstRule, "e2e-inbound-burst", "e2e-added-later"))
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		var rs struct {
			Rules []struct{ Name string } `json:"rules"`
		}
		if err := a.client().Do("GET", "/api/v1/rules", nil, &rs); err != nil {
			t.Fatal(err)
		}
		if len(rs.Rules) == 2 {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("new rule file not loaded within 10s:\n%s", a.log())
}
