package rules

import (
	"net/netip"
	"testing"
	"time"

	"github.com/connwarden/connwarden/detector/event"
)

func mustCompile(t testing.TB, yaml string) *Set {
	t.Helper()
	set, err := Compile(Source{Name: "test.yaml", Data: []byte(yaml)})
	if err != nil {
		t.Fatalf("compile:\n%v", err)
	}
	return set
}

func ev(kind event.Kind, comm string, remote string, result int32) *event.Event {
	e := &event.Event{Kind: kind, Result: result, UID: 1000, PID: 7, TGID: 7, Cgroup: 42,
		Local: netip.MustParseAddrPort("10.0.0.1:40000"), Remote: netip.MustParseAddrPort(remote)}
	e.SetComm(comm)
	if kind == event.KindInboundAccept || kind == event.KindResetSent {
		e.Direction = event.DirInbound
	} else {
		e.Direction = event.DirOutbound
	}
	return e
}

func TestFilterMatch(t *testing.T) {
	set := mustCompile(t, `
lists:
  corp: {cidrs: [10.0.0.0/8, "fd00::/8"]}
  admin: {ports: [22, "3389"]}
  shells: {comms: [bash, "nc*", "*sh", "py?hon3"]}
rules:
- name: r
  description: d
  mode: monitor
  severity: low
  filter:
    kind: [connect, tcp_close]
    remote_port: [$admin, "8000-8099"]
    comm: [$shells, curl]
    uid: ["1000-1999"]
    not:
      - remote_addr: $corp
      - outcome: timeout
      - result: [EHOSTUNREACH]
  detection: {threshold: {count: 2, window: 1s, by: [tgid]}}
`)
	f := set.Rules[0].Filter
	tests := []struct {
		name string
		ev   *event.Event
		want bool
	}{
		{"match", ev(event.KindConnect, "curl", "192.0.2.1:22", 0), true},
		{"port range", ev(event.KindConnect, "curl", "192.0.2.1:8099", 0), true},
		{"port outside range", ev(event.KindConnect, "curl", "192.0.2.1:8100", 0), false},
		{"kind not listed", ev(event.KindTCPAttempt, "curl", "192.0.2.1:22", 0), false},
		{"glob prefix", ev(event.KindConnect, "ncat", "192.0.2.1:22", 0), true},
		{"glob prefix, exact", ev(event.KindConnect, "nc", "192.0.2.1:22", 0), true},
		{"glob suffix", ev(event.KindConnect, "zsh", "192.0.2.1:22", 0), true},
		{"glob ?", ev(event.KindConnect, "python3", "192.0.2.1:22", 0), true},
		{"glob ? needs one byte", ev(event.KindConnect, "pyhon3", "192.0.2.1:22", 0), false},
		{"comm not listed", ev(event.KindConnect, "wget", "192.0.2.1:22", 0), false},
		{"exact comm is not a prefix", ev(event.KindConnect, "curly", "192.0.2.1:22", 0), false},
		{"not: corp v4", ev(event.KindConnect, "curl", "10.9.9.9:22", 0), false},
		{"not: corp v6", ev(event.KindConnect, "curl", "[fd12::1]:22", 0), false},
		{"v6 outside corp", ev(event.KindConnect, "curl", "[2001:db8::1]:22", 0), true},
		{"not: timeout outcome", ev(event.KindTCPClose, "curl", "192.0.2.1:22", -event.ETIMEDOUT), false},
		{"refused passes", ev(event.KindTCPClose, "curl", "192.0.2.1:22", -event.ECONNREFUSED), true},
		{"not: errno name", ev(event.KindConnect, "curl", "192.0.2.1:22", -event.EHOSTUNREACH), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := f.Match(tt.ev); got != tt.want {
				t.Errorf("Match = %v, want %v (filter %s)", got, tt.want, f)
			}
		})
	}
	t.Run("uid outside range", func(t *testing.T) {
		e := ev(event.KindConnect, "curl", "192.0.2.1:22", 0)
		e.UID = 0
		if f.Match(e) {
			t.Error("uid 0 matched 1000-1999")
		}
	})
}

func TestFilterMatchDoesNotAllocate(t *testing.T) {
	set := mustCompile(t, `
rules:
- name: r
  description: d
  mode: monitor
  severity: low
  filter:
    remote_addr: [192.0.2.0/24, "2001:db8::/32"]
    comm: ["nc*", bash]
    remote_port: "1-1000"
  detection: {threshold: {count: 2, window: 1s, by: [tgid]}}
`)
	f := set.Rules[0].Filter
	e := ev(event.KindConnect, "ncat", "192.0.2.1:22", 0)
	if n := testing.AllocsPerRun(100, func() { f.Match(e) }); n != 0 {
		t.Errorf("Match allocates %v times per call", n)
	}
}

func TestGlobMatch(t *testing.T) {
	tests := []struct {
		pat, name string
		want      bool
	}{
		{"*", "", true}, {"*", "x", true}, {"a*", "a", true}, {"a*", "ba", false},
		{"*a", "ba", true}, {"*a*b", "xaxxb", true}, {"*a*b", "xaxxbc", false},
		{"a?c", "abc", true}, {"a?c", "ac", false}, {"**", "abc", true}, {"a*b*c", "abbbc", true},
	}
	for _, tt := range tests {
		t.Run(tt.pat+"/"+tt.name, func(t *testing.T) {
			if got := globMatch(tt.pat, []byte(tt.name)); got != tt.want {
				t.Errorf("globMatch(%q, %q) = %v, want %v", tt.pat, tt.name, got, tt.want)
			}
		})
	}
}

func TestPrefixSet(t *testing.T) {
	s := NewPrefixSet([]netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("::ffff:192.0.2.0/120"),
		netip.MustParsePrefix("2001:db8::/33"), netip.MustParsePrefix("0.0.0.0/0"),
	})
	if s.Len() != 4 {
		t.Fatalf("Len = %d, want 4", s.Len())
	}
	all := NewPrefixSet([]netip.Prefix{netip.MustParsePrefix("::/0")})
	tests := []struct {
		set  *PrefixSet
		addr string
		want bool
	}{
		{s, "10.1.2.3", true}, {s, "8.8.8.8", true}, {s, "2001:db8::1", true},
		{s, "2001:db8:8000::1", false}, {s, "::ffff:10.0.0.1", true},
		{all, "2001:db8::1", true}, {all, "10.0.0.1", false},
	}
	for _, tt := range tests {
		t.Run(tt.addr, func(t *testing.T) {
			if got := tt.set.Contains(netip.MustParseAddr(tt.addr)); got != tt.want {
				t.Errorf("Contains(%s) = %v, want %v (set %s)", tt.addr, got, tt.want, tt.set)
			}
		})
	}
	small := NewPrefixSet([]netip.Prefix{netip.MustParsePrefix("192.0.2.7/32")})
	if !small.Overlaps(netip.MustParsePrefix("192.0.2.0/24")) {
		t.Error("a /24 containing an allowlisted host must overlap it")
	}
	if small.Overlaps(netip.MustParsePrefix("192.0.3.0/24")) {
		t.Error("disjoint /24 overlaps")
	}
}

func TestTTLFor(t *testing.T) {
	b := &Block{TTL: time.Minute, Escalation: &Escalation{Factor: 3, Period: time.Hour, Max: 20 * time.Minute}}
	for repeats, want := range []time.Duration{time.Minute, 3 * time.Minute, 9 * time.Minute, 20 * time.Minute, 20 * time.Minute} {
		if got := b.TTLFor(repeats); got != want {
			t.Errorf("TTLFor(%d) = %v, want %v", repeats, got, want)
		}
	}
	if got := b.TTLFor(1 << 30); got != 20*time.Minute {
		t.Errorf("TTLFor(huge) = %v, want the cap", got)
	}
	plain := &Block{TTL: time.Minute}
	if got := plain.TTLFor(5); got != time.Minute {
		t.Errorf("without escalation TTLFor(5) = %v, want ttl", got)
	}
}

func TestStateKey(t *testing.T) {
	base := `
lists:
  p: {ports: [%s]}
rules:
- name: r
  description: %s
  mode: monitor
  severity: %s
  filter: {remote_port: $p}
  detection: {threshold: {count: 3, window: 1s, by: [tgid]}}
`
	key := func(ports, desc, sev string) string {
		return mustCompile(t, sprintf(base, ports, desc, sev)).Rules[0].StateKey()
	}
	a := key("22, 23", "one", "low")
	if b := key("23, 22", "two", "high"); a != b {
		t.Errorf("description, severity and list order must not change the state key:\n%q\n%q", a, b)
	}
	if b := key("22", "one", "low"); a == b {
		t.Error("a changed list must change the state key")
	}
}

func TestCommSetLong(t *testing.T) {
	// Exact names and prefixes are indexed by first byte; other globs not.
	s := newCommSet([]string{"a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8", "a9", "curl", "fire*", "*-bin", "x?z", "f*x"})
	tests := []struct {
		comm string
		want bool
	}{
		{"curl", true}, {"a9", true}, {"a10", false}, {"firefox", true}, {"fire", true},
		{"fir", false}, {"foo-bin", true}, {"xyz", true}, {"xz", false}, {"", false},
		{"fox", true}, {"fo", false}, {"a", false}, {"curl2", false}, {"-bin", true},
	}
	for _, tt := range tests {
		t.Run(tt.comm, func(t *testing.T) {
			var c [event.CommLen]byte
			copy(c[:], tt.comm)
			if got := s.Match(&c); got != tt.want {
				t.Errorf("Match(%q) = %v, want %v", tt.comm, got, tt.want)
			}
		})
	}
}
