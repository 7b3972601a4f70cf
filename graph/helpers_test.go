package graph

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/connwarden/connwarden/detector/event"
)

// outbound is an outbound event from process comm/tgid to remote.
func outbound(ts uint64, kind event.Kind, comm string, tgid uint32, remote string) *event.Event {
	ev := &event.Event{
		Timestamp: ts, Kind: kind, Direction: event.DirOutbound,
		PID: tgid, TGID: tgid, UID: 1000,
		Local:  netip.MustParseAddrPort("192.0.2.1:40000"),
		Remote: netip.MustParseAddrPort(remote),
	}
	ev.SetComm(comm)
	return ev
}

// inbound is an inbound event (no process) from remote to local.
func inbound(ts uint64, kind event.Kind, remote, local string) *event.Event {
	return &event.Event{
		Timestamp: ts, Kind: kind, Direction: event.DirInbound,
		Local:  netip.MustParseAddrPort(local),
		Remote: netip.MustParseAddrPort(remote),
	}
}

func fieldErrors(t *testing.T, err error) []FieldError {
	t.Helper()
	if err == nil {
		return nil
	}
	var out []FieldError
	for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
		var fe *FieldError
		if !errors.As(e, &fe) {
			t.Fatalf("error %v is not a FieldError", e)
		}
		out = append(out, *fe)
	}
	return out
}
