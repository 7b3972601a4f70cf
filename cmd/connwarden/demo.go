package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/connwarden/connwarden/cmd/connwarden/internal/api"
	"github.com/connwarden/connwarden/cmd/connwarden/internal/client"
	"github.com/connwarden/connwarden/internal/mounts"
	"github.com/connwarden/connwarden/test/topology"
)

func init() { subcommands = append(subcommands, newDemoCmd) }

const demoRule = `rules:
  - name: demo-inbound-burst
    description: A remote host opened 5 connections to this host within 10 seconds.
    mode: enforce
    severity: high
    tags: [attack.t1499]
    filter: {kind: [inbound_accept]}
    detection:
      threshold: {count: 5, window: 10s, by: [remote_ip]}
    actions:
      block: {ttl: 10m}
`

func newDemoCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "demo",
		Short: "Show connwarden catch and block an attack between throw-away network namespaces",
		Long: `Builds an attacker and a victim host as network namespaces joined by a veth
pair, runs the agent on the victim, and narrates: baseline traffic, an inbound
connection burst detected and blocked, the attacker's packets dropped by XDP, and
the unblock. Everything it creates is removed at the end. Needs root.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runDemo(cmd.OutOrStdout())
		},
	}
}

type demo struct {
	out   io.Writer
	top   *topology.Topology
	agent *exec.Cmd
	c     *client.Client
	dir   string
	pins  string
	step  int
}

func (d *demo) say(format string, args ...any) {
	fmt.Fprintf(d.out, "    "+format+"\n", args...)
}

func (d *demo) section(title string) {
	d.step++
	fmt.Fprintf(d.out, "\n[%d] %s\n", d.step, title)
}

func runDemo(out io.Writer) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("the demo needs root (network namespaces, BPF)")
	}
	if err := mounts.Ensure(); err != nil {
		return err
	}
	start := time.Now()
	d := &demo{out: out}
	defer func() {
		if cerr := d.cleanup(); err == nil {
			err = cerr
		}
		fmt.Fprintf(out, "\nDone in %.1fs; namespaces, pins and XDP removed.\n", time.Since(start).Seconds())
	}()

	d.section("Building two hosts as network namespaces joined by a veth pair")
	if d.top, err = topology.Build(); err != nil {
		return err
	}
	att, vic := d.top.Attacker.IPv4, d.top.Victim.IPv4
	d.say("attacker %s  <--veth-->  %s victim (interface %s)", att, vic, d.top.Victim.IfName)

	d.section("Starting the agent on the victim with one rule: 5 connections in 10s from one address = block for 10m")
	if err := d.startAgent(); err != nil {
		return err
	}
	d.say("agent ready: XDP blocklist attached to %s, tracer on connect() and TCP state changes", d.top.Victim.IfName)
	svc, ln, err := d.top.Victim.Serve(vic, 0)
	if err != nil {
		return err
	}
	defer ln.Close()
	d.say("a TCP service listens on the victim at %s", svc)

	d.section("Baseline: the attacker pings and connects once; everything passes")
	s0, _ := d.stats()
	answered := d.ping(vic, 3)
	ok := d.dial(svc, 1)
	s1, _ := d.stats()
	d.say("%d of 3 pings answered, %d of 1 connections made", answered, ok)
	d.say("XDP counters: PASS %d -> %d, DROP %d", s0.PacketsPassed, s1.PacketsPassed, s1.PacketsDropped)

	d.section("Attack: the attacker opens connections in a burst")
	ok = d.dial(svc, 4)
	d.say("%d more connections made (5 in all): the rule's threshold", ok)
	al, err := d.waitAlert(10 * time.Second)
	if err != nil {
		return err
	}
	d.say("ALERT %s: %s", al.Rule.Name, al.Event.Reason)
	d.say("  source %s, count %d in %s, mode %s", al.Source.IP, al.Connwarden.Count, al.Connwarden.Window, al.Connwarden.Mode)
	if al.Connwarden.Block != nil {
		d.say("  decision: block %s for %s (%s)", al.Connwarden.Block.Target, al.Connwarden.Block.TTL, al.Connwarden.Block.Result)
	}
	var ents []api.BlockEntry
	if err := d.c.Do("GET", "/api/v1/blocklist", nil, &ents); err == nil {
		for _, e := range ents {
			d.say("blocklist: %s expires %s", e.Address, e.Expires.Format(time.TimeOnly))
		}
	}

	d.section("The attacker's packets are now dropped in XDP, before the network stack")
	time.Sleep(time.Second)
	s2, _ := d.stats()
	answered = d.ping(vic, 5)
	ok = d.dial(svc, 1)
	s3, _ := d.stats()
	d.say("%d of 5 pings answered, %d of 1 connections made", answered, ok)
	d.say("XDP counters: DROP %d -> %d (+%d: 5 echo requests and the SYN with its retries)", s2.PacketsDropped, s3.PacketsDropped, s3.PacketsDropped-s2.PacketsDropped)

	d.section("An operator unblocks the address: DELETE /api/v1/blocklist/" + att.String())
	var res api.Result
	if err := d.c.Do("DELETE", "/api/v1/blocklist/"+att.String(), nil, &res); err != nil {
		return err
	}
	d.say("%s", res.Message)
	answered = d.ping(vic, 3)
	d.say("%d of 3 pings answered again", answered)
	s4, _ := d.stats()
	d.say("final counters: processed %d = passed %d + dropped %d; alerts %d; events received %d, lost %d",
		s4.PacketsProcessed, s4.PacketsPassed, s4.PacketsDropped, s4.Alerts, s4.EventsReceived, s4.EventsLost)
	return nil
}

func (d *demo) startAgent() error {
	var err error
	if d.dir, err = os.MkdirTemp("", "connwarden-demo-"); err != nil {
		return err
	}
	rules := filepath.Join(d.dir, "rules")
	os.Mkdir(rules, 0o755)
	if err := os.WriteFile(filepath.Join(rules, "demo.yaml"), []byte(demoRule), 0o644); err != nil {
		return err
	}
	b := make([]byte, 4)
	rand.Read(b)
	d.pins = "/sys/fs/bpf/connwarden-demo-" + hex.EncodeToString(b)
	self, err := os.Executable()
	if err != nil {
		return err
	}
	sock := filepath.Join(d.dir, "api.sock")
	d.agent = d.top.Victim.Command(self, "run", "--rules", rules, "--interface", d.top.Victim.IfName,
		"--pin-dir", d.pins, "--api-listen", "", "--api-socket", sock,
		"--alerts", filepath.Join(d.dir, "alerts.jsonl"), "--cleanup-on-exit", "--log-level", "warn")
	logf, err := os.Create(filepath.Join(d.dir, "agent.log"))
	if err != nil {
		return err
	}
	d.agent.Stdout, d.agent.Stderr = logf, logf
	if err := d.agent.Start(); err != nil {
		return err
	}
	d.c = client.New(sock, "")
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if d.c.Do("GET", "/readyz", nil, nil) == nil {
			return nil
		}
	}
	b2, _ := os.ReadFile(filepath.Join(d.dir, "agent.log"))
	return fmt.Errorf("agent not ready after 30s:\n%s", b2)
}

// dial and ping run from the attacker; a failure to run them counts as
// nothing getting through, which the narration then shows.
func (d *demo) dial(dst netip.AddrPort, n int) int {
	ok, _ := d.top.Attacker.Dial(dst, n, time.Second)
	return ok
}

func (d *demo) ping(dst netip.Addr, n int) int {
	ok, _ := d.top.Attacker.Ping(dst, n)
	return ok
}

func (d *demo) stats() (api.Stats, error) {
	var s api.Stats
	err := d.c.Do("GET", "/api/v1/stats", nil, &s)
	return s, err
}

type demoAlert struct {
	Event struct {
		Reason string `json:"reason"`
	} `json:"event"`
	Rule struct {
		Name string `json:"name"`
	} `json:"rule"`
	Source struct {
		IP string `json:"ip"`
	} `json:"source"`
	Connwarden struct {
		Count  int    `json:"count"`
		Window string `json:"window"`
		Mode   string `json:"mode"`
		Block  *struct {
			Target, TTL, Result string
		} `json:"block"`
	} `json:"connwarden"`
}

func (d *demo) waitAlert(within time.Duration) (*demoAlert, error) {
	want := d.top.Attacker.IPv4.String()
	for deadline := time.Now().Add(within); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		b, _ := os.ReadFile(filepath.Join(d.dir, "alerts.jsonl"))
		sc := bufio.NewScanner(bytes.NewReader(b))
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var a demoAlert
			if json.Unmarshal(sc.Bytes(), &a) == nil && a.Source.IP == want {
				return &a, nil
			}
		}
	}
	return nil, fmt.Errorf("no alert for %s within %v", want, within)
}

func (d *demo) cleanup() error {
	var errs []error
	if d.agent != nil && d.agent.Process != nil {
		d.agent.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- d.agent.Wait() }()
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		select {
		case <-done:
		case <-ctx.Done():
			d.agent.Process.Kill()
			errs = append(errs, errors.New("agent did not stop; killed"))
		}
		cancel()
	}
	if d.pins != "" {
		if _, err := os.Stat(d.pins); err == nil {
			os.RemoveAll(d.pins)
		}
	}
	if d.top != nil {
		errs = append(errs, d.top.Remove())
	}
	if d.dir != "" {
		os.RemoveAll(d.dir)
	}
	return errors.Join(errs...)
}
