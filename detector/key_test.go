package detector

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/connwarden/connwarden/detector/event"
	"github.com/connwarden/connwarden/rules"
)

func TestKeys(t *testing.T) {
	mk := func(remote string, pid uint32, comm string) *event.Event {
		ev := connect(1, pid, remote)
		ev.SetComm(comm)
		return ev
	}
	tests := []struct {
		name    string
		by      rules.KeyFields
		a, b    *event.Event
		same    bool
		renderA string
	}{
		{"pid apart", rules.KeyPID, mk("192.0.2.1:1", 1, "x"), mk("192.0.2.1:1", 2, "x"), false, "pid=1"},
		{"pid ignores remote", rules.KeyPID, mk("192.0.2.1:1", 1, "x"), mk("198.51.100.1:2", 1, "y"), true, "pid=1"},
		{"remote_net24 groups a /24", rules.KeyRemoteNet24, mk("192.0.2.1:1", 1, "x"), mk("192.0.2.200:1", 2, "x"), true, "remote_net24=192.0.2.0/24"},
		{"remote_net24 splits /24s", rules.KeyRemoteNet24, mk("192.0.2.1:1", 1, "x"), mk("192.0.3.1:1", 1, "x"), false, "remote_net24=192.0.2.0/24"},
		{"remote_net24 keeps v6 whole", rules.KeyRemoteNet24, mk("[2001:db8::1]:1", 1, "x"), mk("[2001:db8::2]:1", 1, "x"), false, "remote_net24=2001:db8::1/128"},
		{"remote_net groups a /64", rules.KeyRemoteNet, mk("[2001:db8::1]:1", 1, "x"), mk("[2001:db8::ffff:2]:1", 1, "x"), true, "remote_net=2001:db8::/64"},
		{"remote_net64 keeps v4 whole", rules.KeyRemoteNet64, mk("192.0.2.1:1", 1, "x"), mk("192.0.2.2:1", 1, "x"), false, "remote_net64=192.0.2.1/32"},
		{"comm and port", rules.KeyComm | rules.KeyRemotePort, mk("192.0.2.1:22", 1, "ssh"), mk("192.0.2.9:22", 2, "ssh"), true, `comm="ssh" remote_port=22`},
		{"host-wide", 0, mk("192.0.2.1:22", 1, "ssh"), mk("198.51.100.1:80", 2, "curl"), true, "host"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ka, kb := makeKey(tt.by, tt.a), makeKey(tt.by, tt.b)
			if (ka == kb) != tt.same {
				t.Errorf("keys equal = %v, want %v", ka == kb, tt.same)
			}
			if (ka.hash(tt.by, 7) == kb.hash(tt.by, 7)) != tt.same {
				t.Errorf("hashes equal = %v, want %v", ka.hash(tt.by, 7) == kb.hash(tt.by, 7), tt.same)
			}
			if diff := cmp.Diff(tt.renderA, renderKey(tt.by, tt.a)); diff != "" {
				t.Errorf("renderKey (-want +got):\n%s", diff)
			}
		})
	}
}

// FuzzReplay feeds arbitrary event lines through the default pack: odd
// events (no addresses, zero ports, huge timestamps, time going backwards)
// must not panic the engine.
func FuzzReplay(f *testing.F) {
	set, err := rules.Default()
	if err != nil {
		f.Fatal(err)
	}
	f.Add([]byte(`{"ts":1,"kind":"reset_sent","local":"10.0.0.1:22","remote":"203.0.113.1:1"}`))
	f.Add([]byte(`{"ts":18446744073709551615,"kind":"inbound_accept","local":"","remote":""}`))
	f.Add([]byte("{\"ts\":5,\"kind\":\"tcp_attempt\",\"pid\":1,\"tgid\":1,\"comm\":\"a\",\"local\":\"[::1]:0\",\"remote\":\"[::]:0\"}\n{\"ts\":1,\"kind\":\"tcp_attempt\",\"local\":\"\",\"remote\":\"0.0.0.0:0\"}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var out bytes.Buffer
		_ = Replay(bytes.NewReader(data), set, &out, Options{ExtraAllowlist: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
	})
}
