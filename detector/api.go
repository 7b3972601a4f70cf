package detector

import (
	"net/netip"
	"time"

	"go.uber.org/zap"

	"github.com/connwarden/connwarden/detector/event"
	"github.com/connwarden/connwarden/rules"
)

// Blocker carries out block decisions. The kernel side implements it (the
// XDP blocklist); the engine never touches maps itself. Calls come from the
// goroutine that calls Process, with the engine's lock held: implementations
// must be quick and must not call back into the Engine.
type Blocker interface {
	Block(d Decision) error
	Unblock(p netip.Prefix) error
}

// Action is what a Decision asks for.
type Action uint8

const (
	Block   Action = iota + 1 // add Prefix to the blocklist for TTL
	Unblock                   // remove Prefix (its TTL has passed)
)

func (a Action) String() string {
	switch a {
	case Block:
		return "block"
	case Unblock:
		return "unblock"
	}
	return "unknown"
}

// MarshalText renders the action's name.
func (a Action) MarshalText() ([]byte, error) { return []byte(a.String()), nil }

// Decision is one block or unblock.
type Decision struct {
	Action Action
	Prefix netip.Prefix
	// TTL is how long the block lasts (0 for Unblock). The engine calls
	// Unblock when it has passed in event time; a blocklist with its own
	// expiry may use TTL directly.
	TTL  time.Duration
	Rule string
	// Reason is the alert's key and count, e.g. "remote_ip=203.0.113.9: 15
	// within 1m0s", for the blocklist's own log.
	Reason string
	// EventTS is the kernel time (ns) of the event that decided it.
	EventTS uint64
	// Repeat counts earlier blocks of Prefix within the rule's escalation
	// period (0 for a first offence).
	Repeat int
}

// Reasons an alert carries no Decision although its rule has a block action.
const (
	SuppressedMonitor     = "monitor"         // the rule is in monitor mode
	SuppressedDryRun      = "dry_run"         // the set or the engine is in dry-run
	SuppressedAllowlisted = "allowlisted"     // the target overlaps the allowlist
	SuppressedActive      = "already_blocked" // the target is blocked already
	SuppressedCapped      = "capped"          // max_active_blocks reached
	SuppressedRateLimited = "rate_limited"    // block_rate exhausted
	SuppressedNoTarget    = "no_target"       // the event has no remote address
	SuppressedBlockError  = "block_error"     // the Blocker returned an error
)

// Alert is one rule firing for one key.
type Alert struct {
	Rule        string
	Description string
	Severity    rules.Severity
	Mode        rules.Mode
	Detection   rules.DetectionType
	Tags        []string
	// Key is the rendered group key, e.g. "tgid=4242 remote_ip=192.0.2.7".
	Key string
	// Count is the number of events (threshold) or distinct values
	// (distinct) that met the rule within Window.
	Count  int
	Window time.Duration
	// First and Last bound the counted events (kernel ns).
	First, Last uint64
	// Event is the event that made the rule fire.
	Event event.Event
	// Lost is the number of kernel events lost (RecordLoss) within
	// [Event.Timestamp - Window, Event.Timestamp]: counts may be low by that.
	Lost uint64
	// Decision is the block carried out, nil when none was (see Suppressed).
	Decision *Decision
	// Suppressed says why a rule with a block action did not block; empty
	// when a block was made or the rule has no block action.
	Suppressed string
	// Values are the distinct values counted (distinct detections), sorted.
	Values []string
	// Graph details a fanout, new_edge or pivot finding.
	Graph *GraphDetail
	// Session details a sequence violation.
	Session *SessionDetail
}

// Options configure an Engine.
type Options struct {
	// Blocker carries out decisions; nil means decisions are only reported.
	Blocker Blocker
	// OnAlert receives each alert, from the goroutine that calls Process,
	// after the engine's lock is released (it may call Stats, say).
	OnAlert func(*Alert)
	// Logger for the engine's own operation; nothing is logged per event.
	Logger *zap.Logger
	// ExtraAllowlist is added to the rule set's allowlist (the agent passes
	// loopback, host addresses and default gateways).
	ExtraAllowlist []netip.Prefix
	// DryRun makes every rule monitor-only, whatever the set says.
	DryRun bool
	// MaxKeysPerRule overrides the set's settings.max_keys_per_rule when > 0
	// for threshold and distinct rules. Flow-graph and sequence rules take
	// their bounds (max_subjects, max_pairs, max_sessions) from the set.
	MaxKeysPerRule int
}

// RuleInfo describes a loaded rule.
type RuleInfo struct {
	Name      string
	Mode      rules.Mode
	Severity  rules.Severity
	Enabled   bool
	Detection rules.DetectionType
}

// RuleStats are one rule's counters since it was loaded (kept across
// reloads that leave the rule's detection unchanged).
type RuleStats struct {
	Name       string
	Severity   rules.Severity
	Matches    uint64 // events that passed the filter
	Alerts     uint64
	Blocks     uint64
	Suppressed uint64 // re-fires within a window, folded into the first alert
	Evictions  uint64 // keys evicted because the rule hit its key bound
	Expired    uint64 // keys dropped after a window without events
	Keys       int    // keys tracked now
}

// Stats are the engine's counters.
type Stats struct {
	Events       uint64
	LostEvents   uint64
	Rules        []RuleStats
	Alerts       [4]uint64 // by rules.Severity
	Blocks       uint64
	Unblocks     uint64
	RateLimited  uint64
	Capped       uint64
	BlockErrors  uint64
	ActiveBlocks int
	Evictions    uint64 // sum over rules
	KeysTracked  int    // sum over rules
}
