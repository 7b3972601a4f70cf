package graph_test

import (
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/connwarden/connwarden/detector/event"
	"github.com/connwarden/connwarden/graph"
)

// An SSH login from outside followed, within a minute, by the ssh client
// reaching into the internal network.
func ExamplePivot() {
	d, err := graph.NewPivot(graph.PivotConfig{
		Name:     "ssh-pivot",
		Window:   time.Minute,
		Services: []graph.PivotService{{Port: 22, Comms: []string{"sshd", "ssh"}}},
		Internal: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	accept := event.Event{
		Timestamp: uint64(time.Second), Kind: event.KindInboundAccept, Direction: event.DirInbound,
		Local:  netip.MustParseAddrPort("192.0.2.1:22"),
		Remote: netip.MustParseAddrPort("203.0.113.66:51000"),
	}
	connect := event.Event{
		Timestamp: uint64(30 * time.Second), Kind: event.KindTCPAttempt, Direction: event.DirOutbound,
		PID: 4242, TGID: 4242, UID: 1000,
		Local:  netip.MustParseAddrPort("10.0.0.1:40000"),
		Remote: netip.MustParseAddrPort("10.20.30.40:22"),
	}
	connect.SetComm("ssh")

	var findings []graph.Finding
	findings = d.Observe(&accept, findings)
	findings = d.Observe(&connect, findings)
	for _, f := range findings {
		fmt.Println(f.String())
	}
	// Output:
	// pivot "ssh-pivot" at 30000000000: process:ssh (tgid 4242 uid 1000): 203.0.113.66:51000 -> service 192.0.2.1:22 (accepted at 1000000000, 1 accepts in window) -> ssh -> 10.20.30.40:22
}

func ExampleSnapshot_WriteDOT() {
	g, err := graph.New(graph.Config{MaxNodes: 1024, MaxEdges: 4096, MaxAge: time.Hour})
	if err != nil {
		fmt.Println(err)
		return
	}
	ev := event.Event{
		Timestamp: 1, Kind: event.KindTCPAttempt, Direction: event.DirOutbound, TGID: 7,
		Remote: netip.MustParseAddrPort("10.0.0.2:5432"),
	}
	ev.SetComm("api")
	g.Observe(&ev)
	g.Observe(&event.Event{
		Timestamp: 2, Kind: event.KindInboundAccept, Direction: event.DirInbound,
		Local:  netip.MustParseAddrPort("192.0.2.1:443"),
		Remote: netip.MustParseAddrPort("198.51.100.9:61000"),
	})
	if err := g.Snapshot().WriteDOT(os.Stdout); err != nil {
		fmt.Println(err)
	}
	// Output:
	// digraph connwarden {
	// 	rankdir=LR;
	// 	node [fontname="monospace"];
	// 	n0 [shape=box, label="process\napi"];
	// 	n1 [shape=doubleoctagon, label="service\n192.0.2.1:443"];
	// 	n2 [shape=ellipse, label="host\n10.0.0.2"];
	// 	n3 [shape=ellipse, label="host\n198.51.100.9"];
	// 	n0 -> n2 [label="port 5432\nn=1"];
	// 	n3 -> n1 [label="n=1"];
	// }
}
