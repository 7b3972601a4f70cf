package detector

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"

	"github.com/connwarden/connwarden/detector/event"
	"github.com/connwarden/connwarden/rules"
)

// The replay output is JSON lines, one object per alert or decision, in the
// order the engine produced them. Each has a "type": "alert", "block" or
// "unblock". Durations are Go duration strings, times kernel ns.
//
//	{"type":"block","prefix":"203.0.113.9/32","ttl":"10m0s","rule":"inbound-port-scan",...}
//	{"type":"alert","rule":"inbound-port-scan","severity":"high","mode":"enforce",...}
//
// This is the engine's own stable form; the agent's SIEM output maps alerts
// to ECS field names separately.

type alertJSON struct {
	Type        string              `json:"type"`
	Rule        string              `json:"rule"`
	Severity    rules.Severity      `json:"severity"`
	Mode        rules.Mode          `json:"mode"`
	Detection   rules.DetectionType `json:"detection"`
	Tags        []string            `json:"tags,omitempty"`
	Key         string              `json:"key"`
	Count       int                 `json:"count"`
	Window      string              `json:"window"`
	First       uint64              `json:"first"`
	Last        uint64              `json:"last"`
	Lost        uint64              `json:"lost,omitempty"`
	Values      []string            `json:"values,omitempty"`
	Graph       *GraphDetail        `json:"graph,omitempty"`
	Session     *SessionDetail      `json:"session,omitempty"`
	Decision    *decisionJSON       `json:"decision,omitempty"`
	Suppressed  string              `json:"suppressed,omitempty"`
	Description string              `json:"description"`
	Event       event.Event         `json:"event"`
}

type decisionJSON struct {
	Type    string `json:"type,omitempty"`
	Action  Action `json:"action"`
	Prefix  string `json:"prefix"`
	TTL     string `json:"ttl,omitempty"`
	Rule    string `json:"rule,omitempty"`
	Reason  string `json:"reason,omitempty"`
	EventTS uint64 `json:"event_ts,omitempty"`
	Repeat  int    `json:"repeat,omitempty"`
}

func (d *Decision) wire() *decisionJSON {
	w := &decisionJSON{Action: d.Action, Prefix: d.Prefix.String(), Rule: d.Rule, Reason: d.Reason, EventTS: d.EventTS, Repeat: d.Repeat}
	if d.TTL > 0 {
		w.TTL = d.TTL.String()
	}
	return w
}

// MarshalJSON encodes the decision in the replay form.
func (d Decision) MarshalJSON() ([]byte, error) { return json.Marshal(d.wire()) }

// MarshalJSON encodes the alert in the replay form.
func (a *Alert) MarshalJSON() ([]byte, error) {
	w := alertJSON{
		Type: "alert", Rule: a.Rule, Severity: a.Severity, Mode: a.Mode, Detection: a.Detection,
		Tags: a.Tags, Key: a.Key, Count: a.Count, Window: a.Window.String(), First: a.First,
		Last: a.Last, Lost: a.Lost, Values: a.Values, Graph: a.Graph, Session: a.Session, Suppressed: a.Suppressed,
		Description: a.Description, Event: a.Event,
	}
	if a.Decision != nil {
		w.Decision = a.Decision.wire()
	}
	return json.Marshal(w)
}

// Summary is the alert in one line, as fixtures' .want files spell it:
// RULE key=KEY count=N [block=PREFIX ttl=TTL repeat=R | suppressed=REASON].
func (a *Alert) Summary() string {
	s := fmt.Sprintf("%s key=%s count=%d", a.Rule, a.Key, a.Count)
	switch {
	case a.Decision != nil:
		s += fmt.Sprintf(" block=%s ttl=%s repeat=%d", a.Decision.Prefix, a.Decision.TTL, a.Decision.Repeat)
	case a.Suppressed != "":
		s += " suppressed=" + a.Suppressed
	}
	return s
}

// recorder is the Blocker used by Replay: it succeeds and reports each call.
type recorder struct{ emit func(any) }

func (r recorder) Block(d Decision) error {
	w := d.wire()
	w.Type = "block"
	r.emit(w)
	return nil
}

func (r recorder) Unblock(p netip.Prefix) error {
	r.emit(&decisionJSON{Type: "unblock", Action: Unblock, Prefix: p.String()})
	return nil
}

// Replay runs the events in r (JSON lines as written by `connwarden record`;
// blank lines and lines starting with # are skipped) through a fresh engine
// for set and writes its alerts and decisions to w as JSON lines. The
// output depends only on the input: replaying the same events gives the
// same bytes. opts.Blocker and opts.OnAlert are replaced; the other options
// apply. At the end, blocks that would still be active are left so (no
// unblock lines are invented past the last event).
func Replay(r io.Reader, set *rules.Set, w io.Writer, opts Options) error {
	bw := bufio.NewWriter(w)
	var werr error
	emit := func(v any) {
		if werr != nil {
			return
		}
		b, err := json.Marshal(v)
		if err != nil {
			werr = err
			return
		}
		b = append(b, '\n')
		_, werr = bw.Write(b)
	}
	opts.Blocker = recorder{emit}
	opts.OnAlert = func(a *Alert) { emit(a) }
	e, err := New(set, opts)
	if err != nil {
		return err
	}
	if err := eachEvent(r, e.Process); err != nil {
		return err
	}
	if werr != nil {
		return fmt.Errorf("replay: write: %w", werr)
	}
	return bw.Flush()
}

// eachEvent decodes JSON-lines events and calls f with each.
func eachEvent(r io.Reader, f func(*event.Event)) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	var ev event.Event
	for line := 1; sc.Scan(); line++ {
		b := bytes.TrimSpace(sc.Bytes())
		if len(b) == 0 || b[0] == '#' {
			continue
		}
		if err := json.Unmarshal(b, &ev); err != nil {
			return fmt.Errorf("replay: line %d: %w", line, err)
		}
		f(&ev)
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("replay: %w", err)
	}
	return nil
}
