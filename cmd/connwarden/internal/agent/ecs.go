package agent

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/connwarden/connwarden/cmd/connwarden/internal/alertlog"
	"github.com/connwarden/connwarden/detector"
	"github.com/connwarden/connwarden/detector/event"
)

// toRecord renders an engine alert in the SIEM schema. wall converts a kernel
// timestamp to wall-clock time.
func toRecord(a *detector.Alert, wall func(uint64) time.Time, hostname string, blockErr error) *alertlog.Record {
	ev := &a.Event
	r := &alertlog.Record{
		Timestamp: wall(ev.Timestamp),
		Event: alertlog.Event{
			Kind:     "alert",
			Category: []string{"network", "intrusion_detection"},
			Type:     []string{"connection"},
			Action:   a.Detection.String(),
			Severity: int(a.Severity) + 1,
			Reason:   a.Description,
			Created:  time.Now().UTC(),
		},
		Rule: alertlog.Rule{Name: a.Rule, Description: a.Description, Ruleset: "connwarden"},
		Host: alertlog.Host{Hostname: hostname},
		Connwarden: alertlog.Connwarden{
			Key:        a.Key,
			Count:      a.Count,
			Mode:       a.Mode.String(),
			Severity:   a.Severity.String(),
			EventKind:  ev.Kind.String(),
			EventsLost: a.Lost,
			Suppressed: a.Suppressed,
		},
	}
	if a.Window > 0 {
		r.Connwarden.Window = a.Window.String()
	}
	var techniques []alertlog.Technique
	for _, t := range a.Tags {
		if id, ok := strings.CutPrefix(t, "attack."); ok && len(id) > 1 && (id[0] == 't' || id[0] == 'T') {
			techniques = append(techniques, alertlog.Technique{ID: strings.ToUpper(id)})
		}
	}
	if len(techniques) > 0 {
		r.Threat = &alertlog.Threat{Framework: "MITRE ATT&CK", Technique: techniques}
	}
	local := endpoint(ev.Local)
	remote := endpoint(ev.Remote)
	if ev.Direction == event.DirInbound {
		r.Source, r.Dest = remote, local
	} else {
		r.Source, r.Dest = local, remote
	}
	if ev.Kind.HasProcess() {
		r.Process = &alertlog.Process{PID: ev.TGID, TID: ev.PID, Name: ev.CommString()}
		r.User = &alertlog.User{ID: fmt.Sprint(ev.UID)}
	}
	if ev.Kind.IsAuth() {
		r.Event.Category = append(r.Event.Category, "authentication")
		r.Event.Type = append(r.Event.Type, "start")
		peer := "known"
		switch {
		case ev.Peers == event.PeersUnknown:
			peer = "unknown (too many descriptors to look through)"
		case !ev.PeerKnown():
			peer = fmt.Sprintf("unknown (%d inbound connections)", ev.Peers)
		}
		r.Connwarden.Auth = &alertlog.Auth{
			Service: string(ev.ServiceBytes()),
			User:    string(ev.UserBytes()),
			Result:  event.PAMResultName(ev.Result),
			Peer:    peer,
		}
	}
	if d := a.Decision; d != nil {
		r.Event.Type = append(r.Event.Type, "denied")
		res := "ok"
		if blockErr != nil {
			res = "error: " + blockErr.Error()
		}
		r.Connwarden.Block = &alertlog.Block{Target: d.Prefix.String(), TTL: d.TTL.String(), Repeat: d.Repeat, Result: res}
	}
	details := map[string]any{}
	if len(a.Values) > 0 {
		details["distinct_values"] = a.Values
	}
	if a.Graph != nil {
		details["graph"] = a.Graph
	}
	if a.Session != nil {
		details["session"] = a.Session
	}
	if len(details) > 0 {
		r.Connwarden.Details = details
	}
	return r
}

func endpoint(ap netip.AddrPort) *alertlog.Endpoint {
	if !ap.Addr().IsValid() {
		return nil
	}
	return &alertlog.Endpoint{IP: ap.Addr().String(), Port: ap.Port()}
}
