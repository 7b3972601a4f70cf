package detector

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/connwarden/connwarden/detector/event"
	"github.com/connwarden/connwarden/rules"
)

// The seed: a process that connects to the API service (8443) without
// having completed a connection to the auth service (9000) within the last
// 5 minutes is a violation.
const apiAuthRule = `
rules:
  - name: api-without-auth
    description: API reached without authenticating first.
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
        idle_timeout: 10m
        suppress: 1s
`

func outbound(ts uint64, kind event.Kind, tgid uint32, remote string) *event.Event {
	ev := connect(ts, tgid, remote)
	ev.Kind, ev.Result = kind, 0
	return ev
}

func TestSequenceSeed(t *testing.T) {
	const m5 = uint64(5 * time.Minute)
	api := func(ts uint64, tgid uint32) *event.Event {
		return outbound(ts, event.KindTCPAttempt, tgid, "10.0.0.9:8443")
	}
	auth := func(ts uint64, tgid uint32) *event.Event {
		return outbound(ts, event.KindTCPEstablished, tgid, "10.0.0.8:9000")
	}
	refused := func(ts uint64, tgid uint32) *event.Event { // an auth attempt that failed
		ev := outbound(ts, event.KindTCPClose, tgid, "10.0.0.8:9000")
		ev.Result = -event.ECONNREFUSED
		return ev
	}
	tests := []struct {
		name string
		evs  []*event.Event
		want []string // alerting events: "index from->to"
	}{
		{"API first is a violation", []*event.Event{api(0, 1)}, []string{"0 unauthenticated->unauthenticated"}},
		{"auth then API is fine", []*event.Event{auth(0, 1), api(sec, 1)}, nil},
		{"auth only counts when completed", []*event.Event{outbound(0, event.KindTCPAttempt, 1, "10.0.0.8:9000"), refused(1, 1), api(sec, 1)}, []string{"2 unauthenticated->unauthenticated"}},
		{"auth exactly 5 minutes ago still holds", []*event.Event{auth(0, 1), api(m5, 1)}, nil},
		{"auth 5 minutes and 1ns ago has expired", []*event.Event{auth(0, 1), api(m5+1, 1)}, []string{"1 unauthenticated->unauthenticated"}},
		{"a refresh restarts the 5 minutes", []*event.Event{auth(0, 1), auth(4*sec*60, 1), api(8*sec*60, 1)}, nil},
		{"sessions are per process", []*event.Event{auth(0, 1), api(sec, 2)}, []string{"1 unauthenticated->unauthenticated"}},
		{"repeats within suppress fold into one alert", []*event.Event{api(0, 1), api(1, 1), api(sec, 1)}, []string{"0 unauthenticated->unauthenticated", "2 unauthenticated->unauthenticated"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, c := newEngine(t, compile(t, apiAuthRule), Options{})
			var got []string
			for i, ev := range tt.evs {
				ev.Timestamp += 1e12
				n := len(c.alerts)
				e.Process(ev)
				for _, a := range c.alerts[n:] {
					got = append(got, strings.Join([]string{itoa(i), a.Session.From + "->" + a.Session.To}, " "))
					if a.Session.Forbidden != "api-before-auth" || a.Key != "tgid="+itoa(int(ev.TGID)) {
						t.Errorf("alert %+v, want forbidden api-before-auth for tgid=%d", a.Session, ev.TGID)
					}
				}
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("alerts (-want +got):\n%s", diff)
			}
		})
	}
}

func itoa(i int) string { b, _ := json.Marshal(i); return string(b) }

const pivotRule = `
rules:
  - name: pivot
    description: In over SSH, then inward.
    mode: enforce
    severity: critical
    filter: {kind: [inbound_accept, tcp_attempt]}
    detection:
      pivot:
        window: 1m
        services: [{port: 22, comms: [sshd, bash, ssh]}]
        internal: [10.0.0.0/8]
    actions:
      block: {ttl: 1h}
`

func TestPivot(t *testing.T) {
	e, c := newEngine(t, compile(t, pivotRule), Options{})
	accept := inbound(1e12, event.KindInboundAccept, "198.51.100.23:51000", 22)
	e.Process(accept)
	inward := func(ts uint64, comm, remote string) {
		ev := outbound(ts, event.KindTCPAttempt, 4242, remote)
		ev.SetComm(comm)
		e.Process(ev)
	}
	inward(1e12+sec, "curl", "10.1.2.3:22")   // not a service comm
	inward(1e12+2*sec, "ssh", "192.0.2.1:22") // not internal
	inward(1e12+3*sec, "ssh", "10.1.2.3:22")  // pivot
	inward(1e12+4*sec, "ssh", "10.1.2.4:22")  // same pair, same window: folded
	e.Process(inbound(1e12+5*sec, event.KindInboundAccept, "198.51.100.99:52000", 22))
	inward(1e12+6*sec, "ssh", "10.1.2.6:22")                 // another attacker: its own alert
	inward(1e12+uint64(2*time.Minute), "ssh", "10.1.2.5:22") // accept too old
	want := []string{
		"pivot key=process:ssh attacker=198.51.100.23 count=1 block=198.51.100.23/32 ttl=1h0m0s repeat=0",
		"pivot key=process:ssh attacker=198.51.100.99 count=2 block=198.51.100.99/32 ttl=1h0m0s repeat=0",
	}
	if diff := cmp.Diff(want, c.summaries()); diff != "" {
		t.Fatalf("alerts (-want +got):\n%s", diff)
	}
	p := c.alerts[0].Graph.Pivot
	if p.Attacker != accept.Remote || p.Service != accept.Local || p.AcceptedAt != 1e12 {
		t.Errorf("chain %+v, want attacker %s service %s at 1e12", p, accept.Remote, accept.Local)
	}
	if got := c.alerts[0].Graph.Peer.String(); got != "10.1.2.3:22" {
		t.Errorf("target %s, want 10.1.2.3:22", got)
	}
}

func TestFanOutAndNewEdge(t *testing.T) {
	e, c := newEngine(t, compile(t, `
rules:
  - name: fan-in
    description: host probes many local ports
    mode: enforce
    severity: high
    detection:
      fanout: {direction: inbound, window: 10s, count: 3, count_ports: true}
    actions:
      block: {target: remote_net, ttl: 1m}
  - name: new-peer
    description: new network for a program
    mode: monitor
    severity: low
    detection:
      new_edge: {learning: 1s, prefix_v4: 24}
`), Options{})
	// Learning: curl talks to 192.0.2.0/24.
	e.Process(outbound(1e12, event.KindTCPAttempt, 7, "192.0.2.1:443"))
	for p := range uint16(3) {
		e.Process(inbound(1e12+2*sec+uint64(p), event.KindResetSent, "203.0.113.7:4000", 100+p))
	}
	e.Process(outbound(1e12+3*sec, event.KindTCPAttempt, 7, "192.0.2.99:443"))   // known /24
	e.Process(outbound(1e12+4*sec, event.KindTCPAttempt, 7, "198.51.100.1:443")) // new
	want := []string{
		"fan-in key=host:203.0.113.7 count=3 block=203.0.113.0/24 ttl=1m0s repeat=0",
		"new-peer key=process:scanner peer=198.51.100.0/24 count=1",
	}
	if diff := cmp.Diff(want, c.summaries()); diff != "" {
		t.Errorf("alerts (-want +got):\n%s", diff)
	}
}

func TestGraphExport(t *testing.T) {
	e, _ := newEngine(t, compile(t, "settings: {graph: {enabled: true}}\n"+strings.TrimPrefix(pivotRule, "\n")), Options{})
	e.Process(inbound(1e12, event.KindInboundAccept, "198.51.100.23:51000", 22))
	e.Process(outbound(1e12+1, event.KindTCPAttempt, 9, "10.1.2.3:5432"))
	var js, dot bytes.Buffer
	if err := e.GraphJSON(&js); err != nil {
		t.Fatal(err)
	}
	if err := e.GraphDOT(&dot); err != nil {
		t.Fatal(err)
	}
	var snap struct {
		Nodes []struct{ Kind, Name string }
		Edges []json.RawMessage
	}
	if err := json.Unmarshal(js.Bytes(), &snap); err != nil {
		t.Fatalf("GraphJSON is not JSON: %v\n%s", err, js.String())
	}
	if len(snap.Nodes) != 4 || len(snap.Edges) != 2 {
		t.Errorf("graph has %d nodes and %d edges, want 4 and 2:\n%s", len(snap.Nodes), len(snap.Edges), js.String())
	}
	if !strings.HasPrefix(dot.String(), "digraph") {
		t.Errorf("GraphDOT does not start a digraph:\n%s", dot.String())
	}

	off, _ := newEngine(t, compile(t, pivotRule), Options{}) // off by default
	if err := off.GraphJSON(&js); err != ErrGraphDisabled {
		t.Errorf("GraphJSON with the graph disabled: %v, want ErrGraphDisabled", err)
	}
}

func TestReloadKeepsSessions(t *testing.T) {
	e, c := newEngine(t, compile(t, apiAuthRule), Options{})
	e.Process(outbound(1e12, event.KindTCPEstablished, 1, "10.0.0.8:9000")) // authenticated
	changed := strings.Replace(apiAuthRule, "severity: high", "severity: critical", 1)
	if err := e.Reload(compile(t, changed)); err != nil {
		t.Fatal(err)
	}
	e.Process(outbound(1e12+sec, event.KindTCPAttempt, 1, "10.0.0.9:8443"))
	if len(c.alerts) != 0 {
		t.Errorf("session lost across a reload that kept the machine: %v", c.summaries())
	}
	// Changing the machine starts sessions afresh.
	changed = strings.Replace(changed, "after: 5m", "after: 6m", 1)
	if err := e.Reload(compile(t, changed)); err != nil {
		t.Fatal(err)
	}
	e.Process(outbound(1e12+2*sec, event.KindTCPAttempt, 1, "10.0.0.9:8443"))
	if len(c.alerts) != 1 || c.alerts[0].Severity != rules.SeverityCritical {
		t.Errorf("alerts %v, want one critical after the machine changed", c.summaries())
	}
}

func TestSequenceStatsCountSessions(t *testing.T) {
	e, _ := newEngine(t, compile(t, apiAuthRule), Options{})
	for tgid := range uint32(3) {
		e.Process(outbound(1e12, event.KindTCPEstablished, tgid+1, "10.0.0.8:9000"))
	}
	e.Process(outbound(1e12, event.KindTCPAttempt, 9, "10.0.0.9:8443")) // violation, no session
	r := e.Stats().Rules[0]
	if r.Keys != 3 || r.Alerts != 1 || r.Matches != 4 {
		t.Errorf("keys=%d alerts=%d matches=%d, want 3 sessions, 1 alert, 4 matches", r.Keys, r.Alerts, r.Matches)
	}
}

// TestGraphBoundaries pins the window edges of the flow-graph detections as
// rules see them: exactly the window counts, the window plus 1ns does not.
func TestGraphBoundaries(t *testing.T) {
	const T = uint64(time.Minute)
	fanRule := `
rules:
  - name: fan
    description: fan
    mode: monitor
    severity: low
    detection:
      fanout: {direction: outbound, window: 1m, count: 3}
`
	edgeRule := `
rules:
  - name: edge
    description: edge
    mode: monitor
    severity: low
    detection:
      new_edge: {learning: 1m}
`
	type step struct {
		ts     uint64
		kind   event.Kind
		remote string
	}
	att := func(ts uint64, remote string) step { return step{ts, event.KindTCPAttempt, remote} }
	acc := func(ts uint64) step { return step{ts, event.KindInboundAccept, "198.51.100.23:50000"} }
	tests := []struct {
		name, rules string
		steps       []step
		want        []int
	}{
		{"fanout: N peers over exactly T", fanRule, []step{att(0, "192.0.2.1:1"), att(1, "192.0.2.2:1"), att(T, "192.0.2.3:1")}, []int{2}},
		{"fanout: N peers over T+1ns", fanRule, []step{att(0, "192.0.2.1:1"), att(1, "192.0.2.2:1"), att(T+1, "192.0.2.3:1")}, nil},
		{"fanout: N-1 peers", fanRule, []step{att(0, "192.0.2.1:1"), att(1, "192.0.2.2:1"), att(2, "192.0.2.2:2")}, nil},
		{"new_edge: exactly L after the first event still learns", edgeRule, []step{att(0, "192.0.2.1:1"), att(T, "192.0.2.2:1")}, nil},
		{"new_edge: L+1ns alerts", edgeRule, []step{att(0, "192.0.2.1:1"), att(T+1, "192.0.2.2:1")}, []int{1}},
		{"new_edge: a learned edge stays quiet", edgeRule, []step{att(0, "192.0.2.1:1"), att(T+1, "192.0.2.1:1")}, nil},
		{"pivot: exactly T after the accept", pivotRule, []step{acc(0), {T, event.KindTCPAttempt, "10.1.2.3:22"}}, []int{1}},
		{"pivot: T+1ns after the accept", pivotRule, []step{acc(0), {T + 1, event.KindTCPAttempt, "10.1.2.3:22"}}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, c := newEngine(t, compile(t, tt.rules), Options{})
			var got []int
			for i, s := range tt.steps {
				var ev *event.Event
				if s.kind == event.KindInboundAccept {
					ev = inbound(1e12+s.ts, s.kind, s.remote, 22)
				} else {
					ev = outbound(1e12+s.ts, s.kind, 7, s.remote)
					ev.SetComm("ssh")
				}
				n := len(c.alerts)
				e.Process(ev)
				if len(c.alerts) > n {
					got = append(got, i)
				}
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("alerting events (-want +got):\n%s", diff)
			}
		})
	}
}

// TestReloadFailureChangesNothing hands Reload a set the engine cannot run
// (a detection type it does not know, which Compile never produces): the
// running rules and their state must be untouched.
func TestReloadFailureChangesNothing(t *testing.T) {
	set := compile(t, thresholdRule(2, 10*time.Second, ""))
	e, c := newEngine(t, set, Options{})
	e.Process(connect(1e12, 1, "192.0.2.1:22"))
	bad := *set
	bad.Rules = []*rules.Rule{{Name: "odd", Enabled: true, Filter: set.Rules[0].Filter, Detection: rules.Detection{Type: 99}}}
	if err := e.Reload(&bad); err == nil {
		t.Fatal("Reload accepted a set with an unknown detection")
	}
	if got := e.Rules(); len(got) != 1 || got[0].Name != "burst" {
		t.Fatalf("rules after a failed reload: %+v", got)
	}
	e.Process(connect(1e12+1, 1, "192.0.2.1:22"))
	if diff := cmp.Diff([]string{"burst key=pid=1 count=2"}, c.summaries()); diff != "" {
		t.Errorf("state lost by a failed reload (-want +got):\n%s", diff)
	}
}
