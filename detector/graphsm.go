package detector

import (
	"errors"
	"io"
	"net/netip"

	"github.com/connwarden/connwarden/detector/event"
	"github.com/connwarden/connwarden/graph"
	"github.com/connwarden/connwarden/rules"
	"github.com/connwarden/connwarden/statemachine"
)

// GraphDetail describes a flow-graph finding (fanout, new_edge, pivot).
type GraphDetail struct {
	Kind string `json:"kind"` // fan_out, new_edge, pivot
	// Subject is the process ("process:curl") or, for inbound fan-out, the
	// remote host ("host:203.0.113.9").
	Subject string `json:"subject"`
	// Peer is the triggering event's peer (the internal target of a pivot).
	Peer netip.AddrPort `json:"peer"`
	// PeerPrefix is the new peer as a new_edge rule aggregates it.
	PeerPrefix netip.Prefix `json:"peer_prefix,omitzero"`
	// Distinct is the number of distinct peers a fan-out counted.
	Distinct int `json:"distinct,omitempty"`
	// Pivot is the chain attacker -> service -> process -> target.
	Pivot *PivotDetail `json:"pivot,omitempty"`
}

// PivotDetail is a pivot chain's inbound half.
type PivotDetail struct {
	Attacker   netip.AddrPort `json:"attacker"`
	Service    netip.AddrPort `json:"service"`
	AcceptedAt uint64         `json:"accepted_at"`
	// Accepts counts the accepts within the window; above 1 the attribution
	// to Attacker (the most recent) is ambiguous.
	Accepts int `json:"accepts"`
}

// SessionDetail describes a sequence violation.
type SessionDetail struct {
	// From is the session's state when the event came (after timeouts),
	// To its state after.
	From string `json:"from"`
	To   string `json:"to"`
	// Transition or Forbidden names what the event matched.
	Transition string `json:"transition,omitempty"`
	Forbidden  string `json:"forbidden,omitempty"`
	TimedOut   bool   `json:"timed_out,omitempty"`
}

// ErrGraphDisabled is returned by GraphJSON and GraphDOT when the set's
// settings.graph.enabled is false.
var ErrGraphDisabled = errors.New("detector: flow graph disabled (settings.graph.enabled)")

func (e *Engine) buildGraphSM(st *ruleState, r *rules.Rule) error {
	var err error
	switch r.Detection.Type {
	case rules.DetectFanOut:
		st.fan, err = graph.NewFanOut(r.Detection.FanOut.Config)
	case rules.DetectNewEdge:
		st.ne, err = graph.NewNewEdge(r.Detection.NewEdge.Config)
	case rules.DetectPivot:
		st.pv, err = graph.NewPivot(r.Detection.Pivot.Config)
		st.sup = newThresholdState(&rules.Threshold{Count: 1, Window: r.Detection.Pivot.Config.Window})
	case rules.DetectSequence:
		st.by = r.Detection.Sequence.By
		st.sm, err = statemachine.New[groupKey](r.Detection.Sequence.Spec)
		st.sup = newThresholdState(&rules.Threshold{Count: 1, Window: r.Detection.Sequence.Suppress})
	}
	return err
}

// observeGraphSM runs a flow-graph or sequence detection on ev.
func (e *Engine) observeGraphSM(st *ruleState, ev *event.Event) {
	switch {
	case st.fan != nil:
		e.findings = st.fan.Observe(ev, e.findings[:0])
	case st.ne != nil:
		e.findings = st.ne.Observe(ev, e.findings[:0])
	case st.pv != nil:
		e.findings = st.pv.Observe(ev, e.findings[:0])
	case st.sm != nil:
		k := makeKey(st.by, ev)
		res := st.sm.Step(k, ev)
		if res.Violation && e.once(st, k, ev.Timestamp) {
			e.fireSession(st, ev, &res)
		}
		return
	}
	for i := range e.findings {
		f := &e.findings[i]
		if st.pv != nil {
			// A pivot fires on every inward connection in the window; keep
			// one alert per (process, attacker) per window.
			k := groupKey{comm: f.Subject.Comm, addr: f.Pivot.Attacker.Addr().As16()}
			if !e.once(st, k, ev.Timestamp) {
				continue
			}
		}
		e.fireFinding(st, ev, f)
	}
}

// pivotKeyFields are the groupKey fields a pivot's suppression key uses.
const pivotKeyFields = rules.KeyComm | rules.KeyRemoteIP

// once reports whether key may alert at ts: at most once per rule window.
func (e *Engine) once(st *ruleState, k groupKey, ts uint64) bool {
	slot, fresh := st.tbl.get(k, e.now)
	st.sup.ensure(slot)
	if fresh {
		st.sup.reset(slot)
	}
	fire, suppressed := st.sup.observe(slot, ts)
	if suppressed {
		st.stats.Suppressed++
	}
	return fire
}

func (e *Engine) newAlert(st *ruleState, ev *event.Event) *Alert {
	r := st.rule
	st.stats.Alerts++
	return &Alert{
		Rule: r.Name, Description: r.Description, Severity: r.Severity, Mode: r.Mode,
		Detection: r.Detection.Type, Tags: r.Tags, Window: r.Detection.Window(), Event: *ev,
		First: ev.Timestamp, Last: ev.Timestamp, Count: 1,
	}
}

func (e *Engine) fireSession(st *ruleState, ev *event.Event, res *statemachine.Result) {
	a := e.newAlert(st, ev)
	a.Key = renderKey(st.by, ev)
	spec := &st.rule.Detection.Sequence.Spec
	d := &SessionDetail{From: st.sm.StateName(res.Prev), To: st.sm.StateName(res.State), TimedOut: res.TimedOut}
	if res.Transition >= 0 {
		d.Transition = spec.Transitions[res.Transition].Name
	}
	if res.Forbidden >= 0 {
		d.Forbidden = spec.Forbidden[res.Forbidden].Name
	}
	a.Session = d
	a.Lost = e.loss.between(sub(ev.Timestamp, st.window), ev.Timestamp)
	if st.rule.Block != nil {
		e.decide(st, ev, a, ev.Remote.Addr())
	}
	e.pending = append(e.pending, a)
}

func (e *Engine) fireFinding(st *ruleState, ev *event.Event, f *graph.Finding) {
	a := e.newAlert(st, ev)
	d := &GraphDetail{Kind: f.Kind.String(), Subject: f.Subject.String(), Peer: f.Peer, PeerPrefix: f.PeerPrefix, Distinct: f.Distinct}
	target := ev.Remote.Addr()
	a.Key = d.Subject
	switch f.Kind {
	case graph.FindingFanOut:
		a.Count = f.Distinct
		a.First = sub(ev.Timestamp, st.window)
		if f.Subject.Kind == graph.NodeHost {
			target = f.Subject.Addr
		}
	case graph.FindingNewEdge:
		a.Key += " peer=" + f.PeerPrefix.String()
	case graph.FindingPivot:
		p := f.Pivot
		d.Pivot = &PivotDetail{Attacker: p.Attacker, Service: p.Service, AcceptedAt: p.AcceptedAt, Accepts: p.Accepts}
		a.Key += " attacker=" + p.Attacker.Addr().String()
		a.Count, a.First = p.Accepts, p.AcceptedAt
		target = p.Attacker.Addr()
	}
	a.Graph = d
	a.Lost = e.loss.between(sub(ev.Timestamp, st.window), ev.Timestamp)
	if st.rule.Block != nil {
		e.decide(st, ev, a, target)
	}
	e.pending = append(e.pending, a)
}

// GraphJSON writes a snapshot of the flow graph as JSON. The engine's lock
// is held only while the snapshot is copied, not while it is written.
func (e *Engine) GraphJSON(w io.Writer) error {
	s, err := e.snapshot()
	if err != nil {
		return err
	}
	return s.WriteJSON(w)
}

// GraphDOT writes a snapshot of the flow graph in Graphviz DOT.
func (e *Engine) GraphDOT(w io.Writer) error {
	s, err := e.snapshot()
	if err != nil {
		return err
	}
	return s.WriteDOT(w)
}

func (e *Engine) snapshot() (*graph.Snapshot, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.flow == nil {
		return nil, ErrGraphDisabled
	}
	return e.flow.Snapshot(), nil
}

func newFlowGraph(s rules.GraphSettings) (*graph.Graph, error) {
	if !s.Enabled {
		return nil, nil
	}
	return graph.New(graph.Config{MaxNodes: s.MaxNodes, MaxEdges: s.MaxEdges, MaxAge: s.MaxAge})
}
