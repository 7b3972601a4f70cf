package event

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
)

func TestKindNamesRoundTrip(t *testing.T) {
	for _, k := range Kinds() {
		got, ok := ParseKind(k.String())
		if !ok || got != k {
			t.Errorf("ParseKind(%q) = %v, %v; want %v", k.String(), got, ok, k)
		}
	}
	if _, ok := ParseKind("unknown"); ok {
		t.Error(`ParseKind("unknown") accepted`)
	}
}

func TestOutcome(t *testing.T) {
	tests := []struct {
		kind   Kind
		result int32
		want   Outcome
	}{
		{KindConnect, 0, OutcomeSuccess},
		{KindConnect, -EINPROGRESS, OutcomePending},
		{KindConnect, -ECONNREFUSED, OutcomeRefused},
		{KindConnect, -ETIMEDOUT, OutcomeTimeout},
		{KindConnect, -ENETUNREACH, OutcomeOther},
		{KindTCPEstablished, 0, OutcomeSuccess},
		{KindTCPClose, -ECONNREFUSED, OutcomeRefused},
		{KindTCPClose, 0, OutcomeOther},
		{KindTCPAttempt, 0, OutcomeNone},
		{KindInboundAccept, 0, OutcomeNone},
	}
	for _, tt := range tests {
		e := Event{Kind: tt.kind, Result: tt.result}
		if got := e.Outcome(); got != tt.want {
			t.Errorf("%v result %d: outcome %v, want %v", tt.kind, tt.result, got, tt.want)
		}
	}
}

func TestJSONRoundTrip(t *testing.T) {
	in := Event{
		Timestamp: 123456789, Kind: KindConnect, Direction: DirOutbound,
		PID: 10, TGID: 9, UID: 1000, Cgroup: 77, Result: -ECONNREFUSED,
		Local:  netip.MustParseAddrPort("10.0.0.1:40000"),
		Remote: netip.MustParseAddrPort("[2001:db8::1]:22"),
	}
	in.SetComm("curl")
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var out Event
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("unmarshal %s: %v", b, err)
	}
	if out != in {
		t.Errorf("round trip:\n got %+v\nwant %+v", out, in)
	}
}

func TestJSONUnmapsV4InV6(t *testing.T) {
	var e Event
	if err := json.Unmarshal([]byte(`{"ts":1,"kind":"connect","local":"","remote":"[::ffff:10.1.2.3]:80"}`), &e); err != nil {
		t.Fatal(err)
	}
	if want := netip.MustParseAddrPort("10.1.2.3:80"); e.Remote != want {
		t.Errorf("remote %v, want %v", e.Remote, want)
	}
}

func TestJSONRejects(t *testing.T) {
	for _, in := range []string{
		`{"ts":1,"kind":"connect","local":"","remote":"","bogus":1}`,
		`{"ts":1,"kind":"nope","local":"","remote":""}`,
		`{"ts":1,"kind":"connect","direction":"sideways","local":"","remote":""}`,
		`{"ts":1,"kind":"connect","local":"1.2.3.4","remote":""}`,
		`{"ts":1,"kind":"connect","comm":"` + strings.Repeat("x", 16) + `","local":"","remote":""}`,
	} {
		var e Event
		if err := json.Unmarshal([]byte(in), &e); err == nil {
			t.Errorf("accepted %s", in)
		}
	}
}

func FuzzEventJSON(f *testing.F) {
	f.Add([]byte(`{"ts":1,"kind":"connect","comm":"ssh","local":"10.0.0.1:1","remote":"[::1]:22"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var e Event
		if err := json.Unmarshal(b, &e); err != nil {
			return
		}
		again, err := json.Marshal(e)
		if err != nil {
			t.Fatalf("marshal of decoded event: %v", err)
		}
		var e2 Event
		if err := json.Unmarshal(again, &e2); err != nil {
			t.Fatalf("re-decode %s: %v", again, err)
		}
		if e2 != e {
			t.Fatalf("not stable: %+v vs %+v", e, e2)
		}
	})
}
