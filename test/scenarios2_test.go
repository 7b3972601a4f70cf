package test

import (
	"bufio"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"
)

// Lateral movement: the attacker reaches a service on the victim, and that
// service's process then connects to the internal host: a pivot alert names
// the chain attacker -> service -> process -> target.
func TestScenarioPivot(t *testing.T) {
	top := requireKernel(t)
	a := newAgent(t, top, map[string]string{"pivot.yaml": fmt.Sprintf(`rules:
  - name: e2e-pivot
    description: A service accepted a connection and its process then reached an internal host.
    mode: monitor
    severity: high
    tags: [attack.t1021]
    filter: {kind: [inbound_accept, tcp_attempt]}
    detection:
      pivot:
        window: 30s
        services:
          - port: 2222
            comms: [test.test]
        internal: [%s/32]
`, top.Internal.IPv4)})
	a.start()
	target := serve(t, top.Internal, top.Internal.IPv4, 0)
	svcAddr := netip.AddrPortFrom(top.Victim.IPv4, 2222)
	cmd := top.Victim.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "CW_HELPER=pivot", "CW_LISTEN="+svcAddr.String(), "CW_TARGET="+target.String())
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	if line, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || !strings.HasPrefix(line, "listening") {
		t.Fatalf("pivot helper: %q %v", line, err)
	}
	if n := dial(t, top.Attacker, svcAddr, 1, 2*time.Second); n != 1 {
		t.Fatal("attacker could not reach the service")
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("pivot helper: %v", err)
	}
	al := a.waitAlert("e2e-pivot", top.Internal.IPv4, 10*time.Second)
	cw, _ := al["connwarden"].(map[string]any)
	det, _ := cw["details"].(map[string]any)
	g, _ := det["graph"].(map[string]any)
	pv, _ := g["pivot"].(map[string]any)
	if pv == nil || !strings.HasPrefix(fmt.Sprint(pv["attacker"]), top.Attacker.IPv4.String()+":") || pv["service"] != svcAddr.String() {
		t.Errorf("pivot chain %v: want attacker %v, service %v", det, top.Attacker.IPv4, svcAddr)
	}
	if p, _ := al["process"].(map[string]any); p == nil || p["name"] != "test.test" {
		t.Errorf("pivot process %v", al["process"])
	}
}

// Access without authentication: reaching the API port without first
// completing the auth connection is a state-machine violation; with the auth
// connection first, nothing.
func TestScenarioAccessWithoutAuth(t *testing.T) {
	top := requireKernel(t)
	a := newAgent(t, top, map[string]string{"auth.yaml": `rules:
  - name: e2e-api-without-auth
    description: A process reached the API without authenticating in the last 5 minutes.
    mode: monitor
    severity: high
    filter: {kind: [tcp_established, tcp_attempt], direction: outbound}
    detection:
      sequence:
        by: [tgid]
        states: [unauthenticated, authenticated]
        initial: unauthenticated
        transitions:
          - {name: login, from: unauthenticated, to: authenticated, when: {kind: tcp_established, remote_port: 9000}}
          - {name: refresh, from: authenticated, to: authenticated, when: {kind: tcp_established, remote_port: 9000}}
        timeouts:
          - {state: authenticated, after: 5m, to: unauthenticated}
        forbidden:
          - {name: api-before-auth, state: unauthenticated, when: {kind: tcp_attempt, remote_port: 8443}}
`})
	a.start()
	serve(t, top.Internal, top.Internal.IPv4, 9000)
	serve(t, top.Internal, top.Internal.IPv4, 8443)
	client := func(script string) int {
		t.Helper()
		cmd := top.Victim.Command("bash", "-c", script)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		if err := cmd.Wait(); err != nil {
			t.Fatalf("client %q: %v", script, err)
		}
		return cmd.Process.Pid
	}
	ip := top.Internal.IPv4
	good := client(fmt.Sprintf("exec 3<>/dev/tcp/%s/9000; exec 3<&-; sleep 0.2; exec 4<>/dev/tcp/%s/8443; exec 4<&-", ip, ip))
	bad := client(fmt.Sprintf("exec 4<>/dev/tcp/%s/8443; exec 4<&-", ip))
	al := a.waitAlert("e2e-api-without-auth", ip, 10*time.Second)
	p, _ := al["process"].(map[string]any)
	if p == nil || p["pid"] != float64(bad) {
		t.Errorf("violation by %v, want the unauthenticated client pid %d", al["process"], bad)
	}
	time.Sleep(500 * time.Millisecond)
	for _, m := range a.alerts() {
		if p, _ := m["process"].(map[string]any); p != nil && p["pid"] == float64(good) {
			t.Errorf("the authenticated client (pid %d) raised %v", good, m["rule"])
		}
	}
}

// Under a flood that overflows a deliberately small ring buffer the agent
// keeps running, reports the loss in metrics and in the alerts of that
// window, and recovers.
func TestScenarioRingBufferOverflow(t *testing.T) {
	top := requireKernel(t)
	a := newAgent(t, top, map[string]string{"flood.yaml": `rules:
  - name: e2e-connect-burst
    description: A process made 20 connects within 10 seconds.
    mode: monitor
    severity: low
    filter: {kind: [connect], direction: outbound}
    detection:
      threshold: {count: 20, window: 10s, by: [tgid]}
`})
	a.start("--ring-buffer-bytes", "4096")
	flood := top.Victim.Command(os.Args[0])
	flood.Env = append(os.Environ(), "CW_HELPER=flood", "CW_LISTEN=127.0.0.1:0", "CW_COUNT=3000")
	if out, err := flood.CombinedOutput(); err != nil {
		t.Fatalf("flood: %v %s", err, out)
	}
	time.Sleep(600 * time.Millisecond) // the agent notes losses every 250ms
	s := a.stats()
	if s.EventsLost == 0 {
		t.Fatalf("no events lost with a 4 KiB ring under 3000 connects: %+v", s)
	}
	if m := a.metric(`connwarden_events_lost_total{source="tracer"}`); m == 0 {
		t.Error("loss not in metrics")
	}
	if err := a.client().Do("GET", "/readyz", nil, nil); err != nil {
		t.Fatalf("agent not ready after the flood: %v", err)
	}
	// Recovery: a new process's burst is still detected, and its alert says
	// events were lost within its window. The burst is paced (20ms apart) so
	// the 4 KiB ring, read every 2ms, holds it.
	svc := serve(t, top.Internal, top.Internal.IPv4, 0)
	cmd := top.Victim.Command("bash", "-c", fmt.Sprintf("for i in $(seq 25); do exec 3<>/dev/tcp/%s/%d; exec 3<&-; sleep 0.02; done", svc.Addr(), svc.Port()))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("burst: %v %s", err, out)
	}
	al := a.waitAlert("e2e-connect-burst", top.Internal.IPv4, 10*time.Second)
	if cw, _ := al["connwarden"].(map[string]any); cw["events_lost"] == float64(0) {
		t.Errorf("alert in the loss window reports no lost events: %v", cw)
	}
}
