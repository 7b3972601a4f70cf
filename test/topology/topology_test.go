package topology

import (
	"net"
	"net/netip"
	"os/exec"
	"testing"
	"time"

	"github.com/connwarden/connwarden/internal/kerneltest"
)

func TestStarReachability(t *testing.T) {
	kerneltest.Require(t)
	top := New(t)
	for _, dst := range []netip.Addr{top.Victim.IPv4, top.Victim.IPv6, top.Internal.IPv4, top.Internal.IPv6} {
		out, err := top.Attacker.Command("ping", "-c1", "-W2", dst.String()).CombinedOutput()
		if err != nil {
			t.Errorf("attacker cannot ping %v: %v\n%s", dst, err, out)
		}
	}
	// A listener inside the victim, a dial from inside the attacker.
	var ln net.Listener
	if err := top.Victim.Do(func() (err error) {
		ln, err = net.Listen("tcp", netip.AddrPortFrom(top.Victim.IPv4, 0).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Close()
		}
	}()
	if err := top.Attacker.Do(func() error {
		c, err := net.DialTimeout("tcp", ln.Addr().String(), 2*time.Second)
		if err == nil {
			c.Close()
		}
		return err
	}); err != nil {
		t.Errorf("dial victim from attacker: %v", err)
	}
	// The test addresses exist only inside the namespaces, not on this host.
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		for _, h := range []*Host{top.Attacker, top.Victim, top.Internal} {
			if ipn, ok := a.(*net.IPNet); ok && (ipn.IP.Equal(h.IPv4.AsSlice()) || ipn.IP.Equal(h.IPv6.AsSlice())) {
				t.Errorf("test address %v is on the root namespace", ipn.IP)
			}
		}
	}
}

func TestRemoveCleansUp(t *testing.T) {
	kerneltest.Require(t)
	top := New(t)
	if err := top.Remove(); err != nil {
		t.Fatal(err)
	}
	for _, h := range []*Host{top.Attacker, top.Victim, top.Internal} {
		if err := exec.Command("ip", "netns", "pids", h.Name).Run(); err == nil {
			t.Errorf("namespace %s still exists", h.Name)
		}
	}
}
