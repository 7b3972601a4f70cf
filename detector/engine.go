package detector

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/connwarden/connwarden/detector/event"
	"github.com/connwarden/connwarden/graph"
	"github.com/connwarden/connwarden/rules"
	"github.com/connwarden/connwarden/statemachine"
)

// Engine evaluates a compiled rule set over a stream of events.
//
// Process is called from one goroutine. Reload, SetExtraAllowlist, Stats
// and Rules may be called from others: they share one mutex with Process,
// which is uncontended except for the moment one of them runs.
type Engine struct {
	mu      sync.Mutex
	log     *zap.Logger
	opts    Options
	cur     *ruleSet
	blocks  *blocks
	loss    lossLog
	extra   atomic.Pointer[rules.PrefixSet]
	now     uint64 // newest event time seen
	events  uint64
	pending []*Alert // alerts raised under the lock, delivered after it

	flow     *graph.Graph // the exported flow graph; nil when disabled
	flowConf rules.GraphSettings
	findings []graph.Finding // reused buffer for graph detectors
}

// kindSlots bounds event.Kind values the engine indexes rules by; Process
// ignores anything beyond.
const kindSlots = event.NumKinds

// ruleSet is a compiled set with per-rule state, indexed by event kind so
// that an event only meets the rules whose filter admits its kind.
type ruleSet struct {
	set     *rules.Set
	all     []*ruleState
	byKind  [kindSlots][]*ruleState
	dryRun  bool
	maxKeys int
}

// ruleState is one enabled rule and its detection state.
type ruleState struct {
	rule   *rules.Rule
	key    string // rule.StateKey()
	by     rules.KeyFields
	window uint64
	tbl    *table
	th     *thresholdState
	ds     distinctCounter
	fan    *graph.FanOut
	ne     *graph.NewEdge
	pv     *graph.Pivot
	sm     *statemachine.Machine[groupKey]
	sup    *thresholdState // count 1 per key: one pivot/sequence alert per window
	// needsPeer: the rule groups by the remote end, so an event that does not
	// name one (an authentication whose peer is unknown) cannot count.
	needsPeer bool
	stats     RuleStats
}

// New compiles set into an engine.
func New(set *rules.Set, opts Options) (*Engine, error) {
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	e := &Engine{log: opts.Logger.Named("detector"), opts: opts}
	rs, err := e.build(set)
	if err != nil {
		return nil, err
	}
	e.cur = rs
	e.blocks = newBlocks(set.Settings)
	e.findings = make([]graph.Finding, 0, 8)
	if e.flow, err = newFlowGraph(set.Settings.Graph); err != nil {
		return nil, fmt.Errorf("detector: flow graph: %w", err)
	}
	e.flowConf = set.Settings.Graph
	e.SetExtraAllowlist(opts.ExtraAllowlist)
	e.log.Info("rules loaded", zap.Int("rules", len(set.Rules)), zap.Int("enabled", len(rs.all)), zap.Bool("dry_run", rs.dryRun))
	return e, nil
}

// ReorderSlack is how far out of time order an event may arrive and still
// meet its key's earlier events. Events from different CPUs' ring buffers
// arrive out of order by microseconds; a key idle for longer than its
// rule's window plus this slack is dropped.
const ReorderSlack = uint64(time.Second)

// ErrNoRules is returned for a nil rule set.
var ErrNoRules = errors.New("detector: no rule set")

func (e *Engine) build(set *rules.Set) (*ruleSet, error) {
	if set == nil {
		return nil, ErrNoRules
	}
	rs := &ruleSet{set: set, dryRun: set.Settings.DryRun || e.opts.DryRun, maxKeys: set.Settings.MaxKeysPerRule}
	if e.opts.MaxKeysPerRule > 0 {
		rs.maxKeys = e.opts.MaxKeysPerRule
	}
	if rs.maxKeys <= 0 {
		rs.maxKeys = rules.DefaultSettings.MaxKeysPerRule
	}
	for _, r := range set.Rules {
		if !r.Enabled {
			continue
		}
		st := &ruleState{rule: r, key: r.StateKey(), window: uint64(r.Detection.Window())}
		st.stats.Name, st.stats.Severity = r.Name, r.Severity
		switch r.Detection.Type {
		case rules.DetectThreshold:
			st.by = r.Detection.Threshold.By
			st.th = newThresholdState(r.Detection.Threshold)
		case rules.DetectDistinct:
			st.by = r.Detection.Distinct.By
			st.ds = newDistinctState(r.Detection.Distinct)
		case rules.DetectFanOut, rules.DetectNewEdge, rules.DetectPivot, rules.DetectSequence:
			if err := e.buildGraphSM(st, r); err != nil {
				return nil, fmt.Errorf("detector: rule %q: %w", r.Name, err)
			}
		default:
			return nil, fmt.Errorf("detector: rule %q: unsupported detection %s", r.Name, r.Detection.Type)
		}
		// Every distinct field is an address or port, and so are these keys.
		st.needsPeer = r.Detection.Type == rules.DetectDistinct ||
			st.by&(rules.KeyRemoteIP|rules.KeyRemoteNet|rules.KeyRemotePort|rules.KeyLocalPort) != 0
		keyed := st.by
		if st.pv != nil {
			keyed = pivotKeyFields // the suppression key: comm and attacker
		}
		st.tbl = newTable(rs.maxKeys, keyed)
		rs.all = append(rs.all, st)
		for _, k := range r.Filter.Kinds() {
			rs.byKind[k] = append(rs.byKind[k], st)
		}
	}
	return rs, nil
}

// Process evaluates one event. It does not allocate unless a rule fires.
// Reuse one Event for the stream: the pointer is handed to matchers behind
// interfaces (state machines), so an Event on the caller's stack escapes.
func (e *Engine) Process(ev *event.Event) {
	e.mu.Lock()
	e.events++
	if ev.Timestamp > e.now {
		e.now = ev.Timestamp
	}
	e.expireBlocks()
	if e.flow != nil {
		e.flow.Observe(ev)
	}
	if int(ev.Kind) < len(e.cur.byKind) {
		for _, st := range e.cur.byKind[ev.Kind] {
			if !st.rule.Filter.Match(ev) || (st.needsPeer && !ev.PeerKnown()) {
				continue
			}
			st.stats.Matches++
			e.observe(st, ev)
		}
	}
	if len(e.pending) == 0 {
		e.mu.Unlock()
		return
	}
	out := e.pending
	e.pending = nil
	e.mu.Unlock()
	if e.opts.OnAlert != nil {
		for _, a := range out {
			e.opts.OnAlert(a)
		}
	}
}

// Advance moves engine time to ts without an event, so that blocks expire
// on a quiet host. The agent calls it periodically with the kernel clock.
func (e *Engine) Advance(ts uint64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if ts > e.now {
		e.now = ts
	}
	e.expireBlocks()
}

func (e *Engine) observe(st *ruleState, ev *event.Event) {
	now := e.now
	st.tbl.expire(now, st.window+ReorderSlack, 2)
	if st.th == nil && st.ds == nil {
		e.observeGraphSM(st, ev)
		return
	}
	slot, fresh := st.tbl.get(makeKey(st.by, ev), now)
	var fire, suppressed bool
	switch {
	case st.th != nil:
		st.th.ensure(slot)
		if fresh {
			st.th.reset(slot)
		}
		fire, suppressed = st.th.observe(slot, ev.Timestamp)
	case st.ds != nil:
		st.ds.ensure(slot)
		if fresh {
			st.ds.reset(slot)
		}
		fire, suppressed = st.ds.observeEvent(slot, ev)
	}
	if suppressed {
		st.stats.Suppressed++
	}
	if fire {
		e.fire(st, slot, ev)
	}
}

func (e *Engine) fire(st *ruleState, slot int32, ev *event.Event) {
	r := st.rule
	a := &Alert{
		Rule: r.Name, Description: r.Description, Severity: r.Severity, Mode: r.Mode,
		Detection: r.Detection.Type, Tags: r.Tags, Key: renderKey(st.by, ev),
		Window: r.Detection.Window(), Event: *ev,
	}
	switch {
	case st.th != nil:
		a.First, a.Last, a.Count = st.th.span(slot)
	case st.ds != nil:
		a.First, a.Last, a.Count, a.Values = st.ds.span(slot)
	}
	a.Lost = e.loss.between(sub(ev.Timestamp, st.window), ev.Timestamp)
	st.stats.Alerts++
	if r.Block != nil {
		e.decide(st, ev, a, ev.Remote.Addr())
	}
	e.pending = append(e.pending, a)
}

func sub(a, b uint64) uint64 {
	if a < b {
		return 0
	}
	return a - b
}

// decide applies a firing rule's block action to target (normally the
// event's remote address), or says why not.
func (e *Engine) decide(st *ruleState, ev *event.Event, a *Alert, target netip.Addr) {
	r := st.rule
	p, ok := blockTarget(r.Block.Target, target)
	b := e.blocks
	switch {
	case r.Mode != rules.Enforce:
		a.Suppressed = SuppressedMonitor
	case e.cur.dryRun:
		a.Suppressed = SuppressedDryRun
	case !ok:
		a.Suppressed = SuppressedNoTarget
	case e.cur.set.Allowlist.Overlaps(p) || e.extra.Load().Overlaps(p):
		a.Suppressed = SuppressedAllowlisted
	case b.active[p] > e.now:
		a.Suppressed = SuppressedActive
	case len(b.active) >= b.maxActive:
		b.capped++
		a.Suppressed = SuppressedCapped
	case !b.take(e.now):
		b.rateLimited++
		a.Suppressed = SuppressedRateLimited
	}
	if a.Suppressed != "" {
		return
	}
	period := time.Duration(0)
	if r.Block.Escalation != nil {
		period = r.Block.Escalation.Period
	}
	repeats := b.repeats(p, e.now, period)
	d := &Decision{
		Action: Block, Prefix: p, TTL: r.Block.TTLFor(repeats), Rule: r.Name,
		Reason: fmt.Sprintf("%s: %d within %s", a.Key, a.Count, a.Window), EventTS: ev.Timestamp, Repeat: repeats,
	}
	if e.opts.Blocker != nil {
		if err := e.opts.Blocker.Block(*d); err != nil {
			b.errors++
			e.log.Warn("block failed", zap.String("rule", r.Name), zap.Stringer("prefix", p), zap.Error(err))
			a.Suppressed = SuppressedBlockError
			return
		}
	}
	b.record(p, e.now, e.now+uint64(d.TTL), repeats)
	st.stats.Blocks++
	a.Decision = d
}

func (e *Engine) expireBlocks() {
	b := e.blocks
	if len(b.expiry) == 0 || b.expiry[0].at > e.now {
		return
	}
	for {
		p, ok := b.due(e.now)
		if !ok {
			return
		}
		if e.opts.Blocker != nil {
			if err := e.opts.Blocker.Unblock(p); err != nil {
				b.errors++
				e.log.Warn("unblock failed", zap.Stringer("prefix", p), zap.Error(err))
			}
		}
	}
}

// RecordLoss notes that the kernel dropped n events at time ts (ring buffer
// full). Alerts whose window covers ts report them in Lost.
func (e *Engine) RecordLoss(ts uint64, n uint64) {
	e.mu.Lock()
	e.loss.add(ts, n)
	e.mu.Unlock()
}

// Reload swaps in a new rule set atomically. Rules whose StateKey is
// unchanged keep their keys, windows and counters; a rule whose filter or
// detection changed starts afresh. Active blocks and escalation history are
// kept. On error nothing changes.
func (e *Engine) Reload(set *rules.Set) error {
	rs, err := e.build(set)
	if err != nil {
		return err
	}
	// Built outside the lock; used only if the graph settings changed.
	flow, err := newFlowGraph(set.Settings.Graph)
	if err != nil {
		return fmt.Errorf("detector: flow graph: %w", err)
	}
	e.mu.Lock()
	old := map[string]*ruleState{}
	for _, st := range e.cur.all {
		old[st.key] = st
	}
	kept := 0
	for _, st := range rs.all {
		prev := old[st.key]
		if prev == nil {
			continue
		}
		st.tbl, st.th, st.ds = prev.tbl, prev.th, prev.ds
		st.fan, st.ne, st.pv, st.sm, st.sup = prev.fan, prev.ne, prev.pv, prev.sm, prev.sup
		st.tbl.shrink(rs.maxKeys)
		name, sev := st.stats.Name, st.stats.Severity
		st.stats = prev.stats
		st.stats.Name, st.stats.Severity = name, sev
		delete(old, st.key)
		kept++
	}
	e.cur = rs
	e.blocks.configure(set.Settings)
	if set.Settings.Graph != e.flowConf {
		e.flow, e.flowConf = flow, set.Settings.Graph
	}
	e.mu.Unlock()
	e.log.Info("rules reloaded", zap.Int("rules", len(set.Rules)), zap.Int("enabled", len(rs.all)), zap.Int("state_kept", kept))
	return nil
}

// SetExtraAllowlist replaces the runtime allowlist (added to the set's).
func (e *Engine) SetExtraAllowlist(p []netip.Prefix) {
	e.extra.Store(rules.NewPrefixSet(p))
}

// Rules lists the loaded rules, enabled or not, in set order.
func (e *Engine) Rules() []RuleInfo {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []RuleInfo
	for _, r := range e.cur.set.Rules {
		out = append(out, RuleInfo{Name: r.Name, Mode: r.Mode, Severity: r.Severity, Enabled: r.Enabled, Detection: r.Detection.Type})
	}
	return out
}

// Stats returns a snapshot of the counters.
func (e *Engine) Stats() Stats {
	e.mu.Lock()
	defer e.mu.Unlock()
	b := e.blocks
	s := Stats{
		Events: e.events, LostEvents: e.loss.total, Blocks: b.blocks, Unblocks: b.unblocks,
		RateLimited: b.rateLimited, Capped: b.capped, BlockErrors: b.errors, ActiveBlocks: len(b.active),
	}
	for _, st := range e.cur.all {
		rs := st.stats
		rs.Evictions, rs.Expired, rs.Keys = st.tbl.evictions, st.tbl.expired, st.tbl.len()
		// Graph detectors and machines keep their own keys; the table then
		// holds only alert-suppression keys.
		switch {
		case st.fan != nil:
			fs := st.fan.Stats()
			rs.Keys, rs.Evictions, rs.Expired = fs.Subjects, fs.Evicted, fs.Expired
		case st.ne != nil:
			ns := st.ne.Stats()
			rs.Keys, rs.Evictions = ns.Pairs, ns.Evicted
		case st.sm != nil:
			ms := st.sm.Stats()
			rs.Keys, rs.Evictions, rs.Expired = ms.Sessions, ms.Evicted, ms.Expired
		}
		s.Rules = append(s.Rules, rs)
		s.Alerts[rs.Severity] += rs.Alerts
		s.Evictions += rs.Evictions
		s.KeysTracked += rs.Keys
	}
	return s
}

// lossLog remembers recent kernel losses in a fixed ring, enough to answer
// "how many events were lost within this alert's window".
type lossLog struct {
	recs  [256]lossRec
	next  int
	total uint64
}

type lossRec struct{ ts, n uint64 }

func (l *lossLog) add(ts, n uint64) {
	l.total += n
	l.recs[l.next] = lossRec{ts, n}
	l.next = (l.next + 1) % len(l.recs)
}

func (l *lossLog) between(from, to uint64) uint64 {
	var n uint64
	for _, r := range l.recs {
		if r.n > 0 && r.ts >= from && r.ts <= to {
			n += r.n
		}
	}
	return n
}
