package bpf

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/connwarden/connwarden/internal/kerneltest"
)

// Environment of the loader helper process (TestBlocklistPinHelper).
const (
	envHelper  = "CWBL_HELPER"
	envPinDir  = "CWBL_PINDIR"
	envNetns   = "CWBL_NETNS"
	envIfname  = "CWBL_IFNAME"
	envBlock   = "CWBL_BLOCK"
	envTTL     = "CWBL_TTL"
	helperLoad = "load"
)

// TestBlocklistPinHelper is not a test: it is the body of the loader process
// that TestBlocklistSurvivesLoaderExit runs (the os/exec helper process
// pattern). Without CWBL_HELPER it does nothing.
func TestBlocklistPinHelper(t *testing.T) {
	if os.Getenv(envHelper) != helperLoad {
		return
	}
	ttl, err := time.ParseDuration(os.Getenv(envTTL))
	if err != nil {
		t.Fatal(err)
	}
	b, err := OpenBlocklist(BlocklistOptions{PinDir: os.Getenv(envPinDir), MaxExact: 1024, MaxCIDR: 1024})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close() // keeps the pins: that is the point
	if err := inNetns(os.Getenv(envNetns), func() error {
		_, err := b.Attach(os.Getenv(envIfname), AttachAuto)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	p := netip.MustParsePrefix(os.Getenv(envBlock))
	if err := b.Block(p, ttl, ReasonDetector); err != nil {
		t.Fatal(err)
	}
	e, ok, err := b.Lookup(p.Addr())
	if err != nil || !ok {
		t.Fatalf("lookup %s: %v %v", p, ok, err)
	}
	fmt.Printf("expires=%d\n", e.Expires.UnixNano())
}

// TestBlocklistSurvivesLoaderExit runs a loader process that attaches the
// blocklist to a veth, blocks a source with a TTL and exits. The pinned link
// must keep dropping with no process holding it, and a new Blocklist must
// adopt the link, the entry with its expiry, and the counters.
func TestBlocklistSurvivesLoaderExit(t *testing.T) {
	requireNetns(t)
	n := newTestNet(t)
	pinDir := testPinDir(t)

	cmd := exec.Command(os.Args[0], "-test.run=^TestBlocklistPinHelper$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(),
		envHelper+"="+helperLoad,
		envPinDir+"="+pinDir,
		envNetns+"="+n.victNs,
		envIfname+"="+n.vethV,
		envBlock+"="+n.srcBad.String()+"/32",
		envTTL+"=1h",
	)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("loader process: %v\n%s", err, out)
	}
	var expiresNano int64
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "expires="); ok {
			fmt.Sscan(v, &expiresNano)
		}
	}
	if expiresNano == 0 {
		t.Fatalf("loader printed no expiry:\n%s", out)
	}
	loaderExpires := time.Unix(0, expiresNano)

	// No process holds the blocklist now; only pins do.
	p := n.prober(t)
	const count = 4
	if e, r := p.probe(n.srcBad, count, 300*time.Millisecond); e != 0 || r != 0 {
		t.Errorf("blocked source with loader gone: %d echo replies, %d resets; want none", e, r)
	}
	if e, r := p.probe(n.srcGood, count, 3*time.Second); e != count || r != count {
		t.Errorf("unblocked source with loader gone: %d echo replies, %d resets; want %d each", e, r, count)
	}
	if d := pinnedCounter(t, filepath.Join(pinDir, "maps", "bl_counters"), blocklistBlCounterBL_CNT_DROP); d != 2*count {
		t.Errorf("pinned DROP counter %d, want %d", d, 2*count)
	}

	// Adopt from the victim's namespace, where rtnetlink can tell the mode.
	var b *Blocklist
	if err := inNetns(n.victNs, func() (err error) {
		b, err = OpenBlocklist(BlocklistOptions{PinDir: pinDir, MaxExact: 1024, MaxCIDR: 1024})
		return err
	}); err != nil {
		t.Fatalf("adopt: %v", err)
	}
	t.Cleanup(func() { b.Close() })
	if got := b.Attached(); len(got) != 1 || got[0].Interface != n.vethV || got[0].Mode != AttachNative || got[0].Ifindex == 0 {
		t.Errorf("Attached() = %+v, want the adopted native link on %s", got, n.vethV)
	}
	e, ok, err := b.Lookup(n.srcBad)
	if err != nil || !ok {
		t.Fatalf("lookup after adoption: %v %v", ok, err)
	}
	if e.Reason != ReasonDetector || e.Hits != 2*count {
		t.Errorf("adopted entry %+v, want reason detector and %d hits", e, 2*count)
	}
	// Wall times are derived from one monotonic deadline in two processes.
	if d := e.Expires.Sub(loaderExpires).Abs(); d > 100*time.Millisecond {
		t.Errorf("adopted expiry %s differs from the loader's %s by %s", e.Expires, loaderExpires, d)
	}

	// The adopted link runs this process's program on the same maps.
	if e, r := p.probe(n.srcBad, count, 300*time.Millisecond); e != 0 || r != 0 {
		t.Errorf("blocked source after adoption: %d echo replies, %d resets; want none", e, r)
	}
	s, err := b.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if want := (Stats{Passed: 2 * count, Dropped: 4 * count, DroppedExact: 4 * count}); s != want {
		t.Errorf("stats after adoption %+v, want %+v", s, want)
	}

	// Remove detaches and unpins everything.
	if err := b.Remove(); err != nil {
		t.Fatalf("remove: %v", err)
	}
	// Remove detaches before it returns: no waiting for the kernel.
	if e, r := p.probe(n.srcBad, count, 3*time.Second); e != count || r != count {
		t.Errorf("after Remove: %d echo replies, %d resets; want %d each", e, r, count)
	}
	if _, err := os.Stat(pinDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin dir after Remove: %v, want not exist", err)
	}
}

func pinnedCounter(t testing.TB, path string, idx blocklistBlCounter) uint64 {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(path, &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var perCPU []uint64
	if err := m.Lookup(uint32(idx), &perCPU); err != nil {
		t.Fatal(err)
	}
	var sum uint64
	for _, v := range perCPU {
		sum += v
	}
	return sum
}

// TestBlocklistReopen closes a blocklist and opens its pins again in the
// same process: entries and capacities survive, and pins that do not match
// this build are refused with ErrIncompatiblePin.
func TestBlocklistReopen(t *testing.T) {
	kerneltest.Require(t)
	dir := testPinDir(t)
	b, err := OpenBlocklist(BlocklistOptions{PinDir: dir, MaxExact: 512, MaxCIDR: 256})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Block(mustPrefix(t, "10.1.0.0/16"), 10*time.Minute, ReasonFeed); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}

	// Zero capacities adopt whatever is pinned.
	b, err = OpenBlocklist(BlocklistOptions{PinDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := b.Capacity(), 2*512+2*256; got != want {
		t.Errorf("adopted capacity %d, want %d", got, want)
	}
	if e, ok, err := b.Lookup(netip.MustParseAddr("10.1.2.3")); err != nil || !ok || e.Reason != ReasonFeed {
		t.Errorf("entry after reopen: %+v %v %v", e, ok, err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}

	// An explicit capacity that differs from the pins is an error.
	if _, err := OpenBlocklist(BlocklistOptions{PinDir: dir, MaxExact: 1024}); !errors.Is(err, ErrIncompatiblePin) {
		t.Errorf("open with another capacity: error %v, want ErrIncompatiblePin", err)
	}
}

func TestBlocklistIncompatiblePin(t *testing.T) {
	kerneltest.Require(t)
	dir := testPinDir(t)
	if err := os.MkdirAll(filepath.Join(dir, "maps"), 0o700); err != nil {
		t.Fatal(err)
	}
	// What an older build might have left: same name, other value layout.
	m, err := ebpf.NewMap(&ebpf.MapSpec{Name: "bl_exact_v4", Type: ebpf.Hash, KeySize: 4, ValueSize: 8, MaxEntries: 16})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Pin(filepath.Join(dir, "maps", "bl_exact_v4")); err != nil {
		t.Fatal(err)
	}
	_, err = OpenBlocklist(BlocklistOptions{PinDir: dir})
	if !errors.Is(err, ErrIncompatiblePin) {
		t.Fatalf("open over an incompatible pin: error %v, want ErrIncompatiblePin", err)
	}
	if !strings.Contains(err.Error(), "ValueSize") {
		t.Errorf("error %q does not say what differs", err)
	}
	// The pin of the older build is left alone for the operator to decide.
	if _, err := os.Stat(filepath.Join(dir, "maps", "bl_exact_v4")); err != nil {
		t.Errorf("incompatible pin: %v", err)
	}

	// Clearing the pins lets this build start afresh.
	if err := RemoveBlocklistPins(dir); err != nil {
		t.Fatalf("remove pins: %v", err)
	}
	b := openTestBlocklist(t, BlocklistOptions{PinDir: dir})
	if n, err := b.Len(); err != nil || n != 0 {
		t.Errorf("Len after RemoveBlocklistPins = %d, %v; want 0", n, err)
	}
}

// TestRemoveBlocklistPinsDetaches checks that removing the pins of a closed
// blocklist also detaches its XDP link.
func TestRemoveBlocklistPinsDetaches(t *testing.T) {
	requireNetns(t)
	n := newTestNet(t)
	dir := testPinDir(t)
	b, err := OpenBlocklist(BlocklistOptions{PinDir: dir, MaxExact: 64, MaxCIDR: 64})
	if err != nil {
		t.Fatal(err)
	}
	if err := inNetns(n.victNs, func() error {
		_, err := b.Attach(n.vethV, AttachAuto)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := b.Block(netip.PrefixFrom(n.srcBad, 32), 0, ReasonManual); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	p := n.prober(t)
	if e, _ := p.probe(n.srcBad, 2, 300*time.Millisecond); e != 0 {
		t.Fatalf("closed blocklist stopped dropping: %d echo replies", e)
	}
	if err := RemoveBlocklistPins(dir); err != nil {
		t.Fatal(err)
	}
	if !p.passesWithin(n.srcBad, 3*time.Second) {
		t.Error("blocked source still dropped 3s after RemoveBlocklistPins")
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin dir after RemoveBlocklistPins: %v", err)
	}
}
