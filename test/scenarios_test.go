package test

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/connwarden/connwarden/test/topology"
)

// stats is the API's /api/v1/stats.
type stats struct {
	PacketsProcessed uint64 `json:"packets_processed"`
	PacketsPassed    uint64 `json:"packets_passed"`
	PacketsDropped   uint64 `json:"packets_dropped"`
	AttacksBlocked   uint64 `json:"attacks_blocked"`
	EventsReceived   uint64 `json:"events_received"`
	EventsLost       uint64 `json:"events_lost"`
	Alerts           uint64 `json:"alerts"`
	ActiveBlocks     int    `json:"active_blocks"`
}

func (a *agentProc) stats() stats {
	a.t.Helper()
	var s stats
	if err := a.client().Do("GET", "/api/v1/stats", nil, &s); err != nil {
		a.t.Fatal(err)
	}
	return s
}

// metric returns the value of the series line that starts with name{labels}.
func (a *agentProc) metric(series string) float64 {
	a.t.Helper()
	var body []byte
	if err := a.client().Do("GET", "/metrics", nil, &body); err != nil {
		a.t.Fatal(err)
	}
	for _, l := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(l, series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				a.t.Fatalf("metric %s: %v", series, err)
			}
			return f
		}
	}
	a.t.Fatalf("metric %s absent", series)
	return 0
}

// quiet waits until the XDP counters stop moving for a second (stragglers
// of earlier traffic, such as IPv6 multicast listener reports, have passed)
// and returns the stats then.
func (a *agentProc) quiet() stats {
	a.t.Helper()
	last, still := a.stats(), 0
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline) && still < 4; {
		time.Sleep(250 * time.Millisecond)
		s := a.stats()
		if s.PacketsProcessed == last.PacketsProcessed {
			still++
		} else {
			still = 0
		}
		last = s
	}
	return last
}

// ping sends count echo requests from h to dst and returns how many were
// answered.
func ping(t *testing.T, h *topology.Host, dst netip.Addr, count int) int {
	t.Helper()
	n, err := h.Ping(dst, count)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// The seed's test phases, over IPv4 and IPv6: baseline, PASS rises, a burst
// is detected and blocked, DROP rises by exactly what the attacker sends,
// DELETE restores connectivity, and the API and /metrics agree throughout.
func TestScenarioSeedPhases(t *testing.T) {
	for _, family := range []string{"ipv4", "ipv6"} {
		t.Run(family, func(t *testing.T) {
			top := requireKernel(t)
			if err := top.PinNeighbors(); err != nil {
				t.Fatal(err)
			}
			victim, attacker := top.Victim.IPv4, top.Attacker.IPv4
			if family == "ipv6" {
				victim, attacker = top.Victim.IPv6, top.Attacker.IPv6
			}
			a := newAgent(t, top, map[string]string{"burst.yaml": burstRule})
			a.start()
			svc := serve(t, top.Victim, victim, 0)

			// Phase 1-2: baseline connectivity; traffic raises PASS.
			s0 := a.stats()
			if n := ping(t, top.Attacker, victim, 3); n != 3 {
				t.Fatalf("baseline: %d of 3 pings answered", n)
			}
			if n := dial(t, top.Attacker, svc, 2, 2*time.Second); n != 2 {
				t.Fatalf("baseline: %d of 2 connections", n)
			}
			s1 := a.stats()
			if s1.PacketsPassed < s0.PacketsPassed+3+2*3 {
				t.Errorf("PASS rose by %d, want at least 9 (3 pings, 2 handshakes+FINs)", s1.PacketsPassed-s0.PacketsPassed)
			}
			if s1.PacketsDropped != s0.PacketsDropped {
				t.Errorf("DROP rose by %d before any block", s1.PacketsDropped-s0.PacketsDropped)
			}

			// Phase 3: a burst is detected, alerted and blocked.
			dial(t, top.Attacker, svc, 3, 2*time.Second)
			a.waitBlocked(attacker, 10*time.Second)
			a.waitAlert("e2e-inbound-burst", attacker, 5*time.Second)

			// Phase 4: the attacker's pings and SYNs are dropped, DROP rises by
			// exactly the pings sent (neighbours are pinned and the link is
			// let settle first, so nothing else crosses it from the attacker).
			s2 := a.quiet()
			if n := ping(t, top.Attacker, victim, 5); n != 0 {
				t.Errorf("%d pings answered while blocked", n)
			}
			s3 := a.stats()
			if d := s3.PacketsDropped - s2.PacketsDropped; d != 5 {
				t.Errorf("DROP rose by %d for 5 pings", d)
			}
			if n := dial(t, top.Attacker, svc, 1, 500*time.Millisecond); n != 0 {
				t.Error("attacker connected while blocked")
			}
			if s4 := a.stats(); s4.PacketsDropped <= s3.PacketsDropped {
				t.Error("the SYN was not counted as dropped")
			}

			// Phase 5: DELETE restores connectivity.
			var res struct {
				Success bool   `json:"success"`
				Message string `json:"message"`
			}
			if err := a.client().Do("DELETE", "/api/v1/blocklist/"+attacker.String(), nil, &res); err != nil || !res.Success {
				t.Fatalf("DELETE: %v %+v", err, res)
			}
			if n := ping(t, top.Attacker, victim, 3); n != 3 {
				t.Errorf("after DELETE: %d of 3 pings answered", n)
			}

			// Phase 6: the API and the metrics agree.
			s5 := a.stats()
			if m := a.metric(`connwarden_xdp_packets_total{action="drop"}`); uint64(m) < s5.PacketsDropped {
				t.Errorf("metrics drop %v < API drop %d", m, s5.PacketsDropped)
			}
			if m := a.metric(`connwarden_xdp_packets_total{action="pass"}`); uint64(m) < s5.PacketsPassed {
				t.Errorf("metrics pass %v < API pass %d", m, s5.PacketsPassed)
			}
			if s5.PacketsProcessed != s5.PacketsPassed+s5.PacketsDropped {
				t.Errorf("processed %d != passed %d + dropped %d", s5.PacketsProcessed, s5.PacketsPassed, s5.PacketsDropped)
			}
		})
	}
}

// A probe of many closed ports is caught by the default pack (resets sent)
// and the prober blocked.
func TestScenarioClosedPortProbe(t *testing.T) {
	top := requireKernel(t)
	a := newAgent(t, top, nil)
	// The embedded default rules: no --rules. Scanners probe service ports,
	// below the ephemeral range the default rule ignores.
	a.rulesDir = ""
	a.startDefault()
	err := top.Attacker.Do(func() error {
		for p := 1; p <= 20; p++ {
			c, err := net.DialTimeout("tcp", netip.AddrPortFrom(top.Victim.IPv4, uint16(1000+p)).String(), 300*time.Millisecond)
			if err == nil {
				c.Close()
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	a.waitBlocked(top.Attacker.IPv4, 10*time.Second)
	al := a.waitAlert("inbound-port-scan", top.Attacker.IPv4, 5*time.Second)
	if cw, _ := al["connwarden"].(map[string]any); cw["event_kind"] != "reset_sent" && cw["event_kind"] != "inbound_accept" {
		t.Errorf("alert event kind %v", cw["event_kind"])
	}
}

// A local process opening 5 connections within 10 s is reported with its
// pid and comm.
func TestScenarioLocalProcessBurst(t *testing.T) {
	top := requireKernel(t)
	a := newAgent(t, top, map[string]string{"local.yaml": `rules:
  - name: e2e-local-burst
    description: A process made 5 connection attempts within 10 seconds.
    mode: monitor
    severity: medium
    filter: {kind: [tcp_attempt], direction: outbound}
    detection:
      threshold: {count: 5, window: 10s, by: [tgid]}
`})
	a.start()
	svc := serve(t, top.Internal, top.Internal.IPv4, 0)
	script := fmt.Sprintf("for i in 1 2 3 4 5; do exec 3<>/dev/tcp/%s/%d; exec 3<&-; done", svc.Addr(), svc.Port())
	cmd := top.Victim.Command("bash", "-c", script)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// nsenter execs bash in place, so the process's pid is bash's tgid.
	pid := cmd.Process.Pid
	if err := cmd.Wait(); err != nil {
		t.Fatalf("bash connects: %v", err)
	}
	al := a.waitAlert("e2e-local-burst", top.Internal.IPv4, 10*time.Second)
	p, _ := al["process"].(map[string]any)
	if p == nil || p["name"] != "bash" || p["pid"] != float64(pid) {
		t.Errorf("alert process %v, want bash pid %d", al["process"], pid)
	}
}

// An allowlisted attacker is never blocked, whatever it does.
func TestScenarioAllowlistedNeverBlocked(t *testing.T) {
	top := requireKernel(t)
	rules := "allowlist: [" + top.Attacker.IPv4.String() + "]\n" + burstRule
	a := newAgent(t, top, map[string]string{"burst.yaml": rules})
	a.start()
	svc := serve(t, top.Victim, top.Victim.IPv4, 0)
	if n := dial(t, top.Attacker, svc, 12, 2*time.Second); n != 12 {
		t.Errorf("allowlisted attacker: %d of 12 connections", n)
	}
	al := a.waitAlert("e2e-inbound-burst", top.Attacker.IPv4, 10*time.Second)
	if cw, _ := al["connwarden"].(map[string]any); cw["block_suppressed"] != "allowlisted" || cw["block"] != nil {
		t.Errorf("alert connwarden %v: want block_suppressed allowlisted and no block", cw)
	}
	// A manual block is refused too, and the kernel would not drop it anyway.
	err := a.client().Do("POST", "/api/v1/blocklist", map[string]string{"address": top.Attacker.IPv4.String()}, nil)
	if err == nil || !strings.Contains(err.Error(), "409") {
		t.Errorf("manual block of an allowlisted address: %v, want 409", err)
	}
	if n := dial(t, top.Attacker, svc, 2, 2*time.Second); n != 2 {
		t.Errorf("allowlisted attacker cut off: %d of 2", n)
	}
	for _, e := range a.blocklist() {
		if e.Address == top.Attacker.IPv4.String()+"/32" {
			t.Errorf("allowlisted attacker in the blocklist: %+v", e)
		}
	}
}

// A block with a TTL expires on time and traffic resumes without any API call.
func TestScenarioTTLExpires(t *testing.T) {
	top := requireKernel(t)
	a := newAgent(t, top, map[string]string{"burst.yaml": burstRule})
	a.start()
	if err := a.client().Do("POST", "/api/v1/blocklist", map[string]string{"address": top.Attacker.IPv4.String(), "ttl": "3s"}, nil); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if n := ping(t, top.Attacker, top.Victim.IPv4, 2); n != 0 {
		t.Fatalf("%d pings answered while blocked", n)
	}
	time.Sleep(time.Until(start.Add(3*time.Second + 200*time.Millisecond)))
	if n := ping(t, top.Attacker, top.Victim.IPv4, 2); n != 2 {
		t.Errorf("after the TTL: %d of 2 pings answered", n)
	}
	// The garbage collector (every second here) removes the expired entry.
	// Only ours counts: the tracer sees every namespace, so other tests'
	// bursts may be blocked by this agent too.
	own := netip.PrefixFrom(top.Attacker.IPv4, 32).String()
	present := func() bool {
		return slices.ContainsFunc(a.blocklist(), func(e blockEntry) bool { return e.Address == own })
	}
	deadline := time.Now().Add(5 * time.Second)
	for present() && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if present() {
		t.Errorf("expired entry %s not collected: %+v", own, a.blocklist())
	}
}
