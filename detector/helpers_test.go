package detector

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/connwarden/connwarden/detector/event"
	"github.com/connwarden/connwarden/rules"
)

func compile(t testing.TB, yaml string) *rules.Set {
	t.Helper()
	set, err := rules.Compile(rules.Source{Name: "test.yaml", Data: []byte(yaml)})
	if err != nil {
		t.Fatalf("compile:\n%v", err)
	}
	return set
}

// thresholdRule is the seed's shape with count, window and mode filled in.
func thresholdRule(count int, window time.Duration, extra string) string {
	return fmt.Sprintf(`
rules:
- name: burst
  description: burst
  mode: monitor
  severity: medium
  filter: {kind: connect}
  detection: {threshold: {count: %d, window: %dns, by: [pid]}}
%s`, count, int64(window), extra)
}

func connect(ts uint64, pid uint32, remote string) *event.Event {
	e := &event.Event{
		Timestamp: ts, Kind: event.KindConnect, Direction: event.DirOutbound,
		PID: pid, TGID: pid, UID: 1000, Result: -event.EINPROGRESS,
		Local: netip.MustParseAddrPort("10.0.0.1:40000"), Remote: netip.MustParseAddrPort(remote),
	}
	e.SetComm("scanner")
	return e
}

func inbound(ts uint64, kind event.Kind, remote string, lport uint16) *event.Event {
	return &event.Event{
		Timestamp: ts, Kind: kind, Direction: event.DirInbound,
		Local:  netip.AddrPortFrom(netip.MustParseAddr("10.0.0.1"), lport),
		Remote: netip.MustParseAddrPort(remote),
	}
}

// collector gathers alerts and blocker calls.
type collector struct {
	alerts   []*Alert
	blocks   []Decision
	unblocks []netip.Prefix
	fail     error
}

func (c *collector) Block(d Decision) error {
	if c.fail != nil {
		return c.fail
	}
	c.blocks = append(c.blocks, d)
	return nil
}

func (c *collector) Unblock(p netip.Prefix) error {
	c.unblocks = append(c.unblocks, p)
	return nil
}

func (c *collector) summaries() []string {
	var out []string
	for _, a := range c.alerts {
		out = append(out, a.Summary())
	}
	return out
}

func newEngine(t testing.TB, set *rules.Set, opts Options) (*Engine, *collector) {
	t.Helper()
	c := &collector{}
	if opts.Blocker == nil {
		opts.Blocker = c
	}
	opts.OnAlert = func(a *Alert) { c.alerts = append(c.alerts, a) }
	e, err := New(set, opts)
	if err != nil {
		t.Fatal(err)
	}
	return e, c
}

const sec = uint64(time.Second)
