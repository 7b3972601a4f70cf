package event

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
)

// The JSON-lines form of an event: one object per line, written by
// `connwarden record` and read by `connwarden replay` and rule fixtures.
//
//	{"ts":1234567890,"kind":"connect","direction":"outbound","pid":4242,"tgid":4242,
//	 "uid":1000,"comm":"curl","cgroup":5678,"result":-111,"state":0,
//	 "local":"10.0.0.1:0","remote":"10.0.0.2:22"}
//
// ts is the kernel monotonic timestamp in ns; result is 0 or a negative errno
// (a PAM return value for "auth" and "auth_account"); state is the TCP state
// after a socket-state transition; peers, service and user belong to the
// authentication kinds and lifetime_ms to "inbound_short"; local and remote are
// "addr:port" ("[v6]:port" for IPv6). Fields that are zero may be omitted, except
// ts, kind, local and remote. Unknown fields are an error, so a typo in a fixture
// is caught instead of silently read as zero.
type wire struct {
	TS        uint64 `json:"ts"`
	Kind      string `json:"kind"`
	Direction string `json:"direction,omitempty"`
	PID       uint32 `json:"pid,omitempty"`
	TGID      uint32 `json:"tgid,omitempty"`
	UID       uint32 `json:"uid,omitempty"`
	Comm      string `json:"comm,omitempty"`
	Cgroup    uint64 `json:"cgroup,omitempty"`
	Result    int32  `json:"result,omitempty"`
	State     uint8  `json:"state,omitempty"`
	Peers     uint8  `json:"peers,omitempty"`
	Lifetime  uint32 `json:"lifetime_ms,omitempty"`
	Service   string `json:"service,omitempty"`
	User      string `json:"user,omitempty"`
	Local     string `json:"local"`
	Remote    string `json:"remote"`
}

// MarshalJSON encodes the event in its JSON-lines form.
func (e Event) MarshalJSON() ([]byte, error) {
	w := wire{
		TS:       e.Timestamp,
		Kind:     e.Kind.String(),
		PID:      e.PID,
		TGID:     e.TGID,
		UID:      e.UID,
		Comm:     e.CommString(),
		Cgroup:   e.Cgroup,
		Result:   e.Result,
		State:    e.State,
		Peers:    e.Peers,
		Lifetime: e.LifetimeMS,
		Service:  string(e.ServiceBytes()),
		User:     string(e.UserBytes()),
		Local:    addrPortString(e.Local),
		Remote:   addrPortString(e.Remote),
	}
	if e.Direction != DirUnknown {
		w.Direction = e.Direction.String()
	}
	return json.Marshal(w)
}

func addrPortString(ap netip.AddrPort) string {
	if !ap.Addr().IsValid() {
		return ""
	}
	return ap.String()
}

// UnmarshalJSON decodes the JSON-lines form strictly.
func (e *Event) UnmarshalJSON(b []byte) error {
	var w wire
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&w); err != nil {
		return fmt.Errorf("event: %w", err)
	}
	k, ok := ParseKind(w.Kind)
	if !ok {
		return fmt.Errorf("event: unknown kind %q", w.Kind)
	}
	var ev Event
	ev.Timestamp = w.TS
	ev.Kind = k
	if w.Direction != "" {
		d, ok := ParseDirection(w.Direction)
		if !ok {
			return fmt.Errorf("event: unknown direction %q; valid: inbound, outbound", w.Direction)
		}
		ev.Direction = d
	}
	ev.PID, ev.TGID, ev.UID, ev.Cgroup = w.PID, w.TGID, w.UID, w.Cgroup
	ev.Result, ev.State = w.Result, w.State
	if len(w.Comm) >= CommLen {
		return fmt.Errorf("event: comm %q longer than %d bytes", w.Comm, CommLen-1)
	}
	if strings.IndexByte(w.Comm, 0) >= 0 {
		return fmt.Errorf("event: comm %q contains a NUL byte", w.Comm)
	}
	ev.SetComm(w.Comm)
	for _, f := range []struct{ name, v string }{{"service", w.Service}, {"user", w.User}} {
		if len(f.v) >= AuthStrLen {
			return fmt.Errorf("event: %s %q longer than %d bytes", f.name, f.v, AuthStrLen-1)
		}
		if strings.IndexByte(f.v, 0) >= 0 {
			return fmt.Errorf("event: %s %q contains a NUL byte", f.name, f.v)
		}
	}
	ev.SetService(w.Service)
	ev.SetUser(w.User)
	ev.Peers, ev.LifetimeMS = w.Peers, w.Lifetime
	var err error
	if ev.Local, err = parseAddrPort(w.Local); err != nil {
		return fmt.Errorf("event: local: %w", err)
	}
	if ev.Remote, err = parseAddrPort(w.Remote); err != nil {
		return fmt.Errorf("event: remote: %w", err)
	}
	*e = ev
	return nil
}

func parseAddrPort(s string) (netip.AddrPort, error) {
	if s == "" {
		return netip.AddrPort{}, nil
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.AddrPort{}, err
	}
	if ap.Addr().Zone() != "" {
		return netip.AddrPort{}, fmt.Errorf("%q: zones are not used", s)
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}
