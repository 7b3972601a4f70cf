package test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/connwarden/connwarden/bpf"
	"github.com/connwarden/connwarden/test/topology"
)

// This file holds the helpers of the agent benchmarks (bench_test.go): an
// agent binary started straight inside a network namespace, and the
// namespace itself. Unlike the test harness (harness_test.go) they take a
// testing.TB and start the agent without nsenter, so that a start-up time
// is the agent's own and not nsenter's too.

// benchNetns creates a network namespace with loopback up and, with veth, a
// veth pair inside it (both ends up; the first end's name is returned) for
// XDP to attach to. It is removed when tb ends, also on failure.
func benchNetns(tb testing.TB, veth bool) (*topology.Host, string) {
	tb.Helper()
	id := randID()
	h := &topology.Host{Name: "cwb" + id}
	tb.Cleanup(func() {
		if _, err := os.Stat("/run/netns/" + h.Name); err == nil {
			if out, err := exec.Command("ip", "netns", "del", h.Name).CombinedOutput(); err != nil {
				tb.Errorf("remove namespace %s: %v: %s", h.Name, err, out)
			}
		}
	})
	cmds := [][]string{
		{"ip", "netns", "add", h.Name},
		{"ip", "-n", h.Name, "link", "set", "lo", "up"},
	}
	ifname := ""
	if veth {
		ifname = "cwb" + id + "a"
		cmds = append(cmds,
			[]string{"ip", "-n", h.Name, "link", "add", ifname, "type", "veth", "peer", "name", "cwb" + id + "b"},
			[]string{"ip", "-n", h.Name, "link", "set", ifname, "up"},
			[]string{"ip", "-n", h.Name, "link", "set", "cwb" + id + "b", "up"},
		)
	}
	for _, c := range cmds {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			tb.Fatalf("%s: %v: %s", strings.Join(c, " "), err, out)
		}
	}
	return h, ifname
}

// ipBatch runs `ip -n NS -batch -` with one command per line.
func ipBatch(h *topology.Host, lines []string) error {
	cmd := exec.Command("ip", "-n", h.Name, "-batch", "-")
	cmd.Stdin = strings.NewReader(strings.Join(lines, "\n") + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("ip -n %s -batch: %w: %s", h.Name, err, bytes.TrimSpace(out))
	}
	return nil
}

// benchAgent is one agent binary running inside a namespace, with its own
// pin directory (/sys/fs/bpf/connwarden-bench-ID), API socket and alert log.
type benchAgent struct {
	tb      testing.TB
	host    *topology.Host
	args    []string
	dir     string
	pinDir  string
	socket  string
	alerts  string
	logPath string
	cmd     *exec.Cmd
	exited  chan error
	api     *apiClient
}

// newBenchAgent prepares an agent in h: rulesDir "" runs the embedded
// default pack; extra flags follow the common ones. The agent is stopped and
// its pins removed when tb ends, whatever happened.
func newBenchAgent(tb testing.TB, h *topology.Host, rulesDir string, extra ...string) *benchAgent {
	tb.Helper()
	dir := tb.TempDir()
	a := &benchAgent{
		tb: tb, host: h, dir: dir,
		pinDir:  "/sys/fs/bpf/connwarden-bench-" + randID(),
		socket:  filepath.Join(dir, "api.sock"),
		alerts:  filepath.Join(dir, "alerts.jsonl"),
		logPath: filepath.Join(dir, "agent.log"),
	}
	a.args = append([]string{"run", "--rules=" + rulesDir,
		"--pin-dir", a.pinDir, "--api-listen=", "--api-socket", a.socket,
		"--alerts", a.alerts, "--log-level", "info", "--cleanup-on-exit",
	}, extra...)
	a.api = &apiClient{hc: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", a.socket)
		}}}}
	tb.Cleanup(func() {
		if err := a.cleanup(); err != nil {
			tb.Errorf("agent cleanup: %v", err)
		}
		if tb.Failed() {
			if b, err := os.ReadFile(a.logPath); err == nil {
				tb.Logf("agent log:\n%s", b)
			}
		}
	})
	return a
}

// start execs the agent inside its namespace (from a thread switched into
// it, so the child inherits the namespace without nsenter) and returns the
// time from just before the exec to the first /readyz that answers 200.
// /readyz is polled every millisecond.
func (a *benchAgent) start() (time.Duration, error) {
	logf, err := os.OpenFile(a.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return 0, err
	}
	defer logf.Close() // the child has its own descriptor
	a.cmd = exec.Command(agentBin, a.args...)
	a.cmd.Stdout, a.cmd.Stderr = logf, logf
	a.cmd.Env = append(os.Environ(), "CONNWARDEN_API_TOKEN=")
	var t0 time.Time
	if err := a.host.Do(func() error {
		t0 = time.Now()
		return a.cmd.Start()
	}); err != nil {
		return 0, fmt.Errorf("start agent: %w", err)
	}
	a.exited = make(chan error, 1)
	go func() { a.exited <- a.cmd.Wait() }()
	deadline := t0.Add(30 * time.Second)
	for {
		if err := a.api.Do("GET", "/readyz", nil, nil); err == nil {
			return time.Since(t0), nil
		}
		select {
		case err := <-a.exited:
			a.exited <- err
			return 0, fmt.Errorf("agent exited during start-up: %v", err)
		case <-time.After(time.Millisecond):
		}
		if time.Now().After(deadline) {
			return 0, errors.New("agent not ready after 30s")
		}
	}
}

func (a *benchAgent) running() bool {
	if a.cmd == nil || a.cmd.Process == nil {
		return false
	}
	select {
	case err := <-a.exited:
		a.exited <- err
		return false
	default:
		return true
	}
}

// stop sends SIGTERM (the agent removes its pins: --cleanup-on-exit) and
// waits; after 15s it kills.
func (a *benchAgent) stop() error {
	if !a.running() {
		return nil
	}
	a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-a.exited:
		a.exited <- err
		return err
	case <-time.After(15 * time.Second):
		a.cmd.Process.Kill()
		err := <-a.exited
		a.exited <- err
		return errors.New("agent did not stop within 15s; killed")
	}
}

// cleanup kills the agent if it still runs and removes whatever pins and
// XDP links are left under its pin directory. Idempotent.
func (a *benchAgent) cleanup() error {
	if a.running() {
		a.cmd.Process.Kill()
		err := <-a.exited
		a.exited <- err
	}
	if _, err := os.Stat(a.pinDir); err != nil {
		return nil
	}
	var bl *bpf.Blocklist
	err := a.host.Do(func() (err error) {
		bl, err = bpf.OpenBlocklist(bpf.BlocklistOptions{PinDir: a.pinDir})
		return err
	})
	if err == nil {
		return bl.Remove()
	}
	return errors.Join(err, os.RemoveAll(a.pinDir))
}

func (a *benchAgent) stats() (stats, error) {
	var s stats
	err := a.api.Do("GET", "/api/v1/stats", nil, &s)
	return s, err
}

// keysTracked sums connwarden_rule_keys_tracked over the rules, and returns
// rule's own value too.
func (a *benchAgent) keysTracked(rule string) (total, ofRule int, err error) {
	var body []byte
	if err := a.api.Do("GET", "/metrics", nil, &body); err != nil {
		return 0, 0, err
	}
	for _, l := range strings.Split(string(body), "\n") {
		series, v, ok := strings.Cut(l, " ")
		if !ok || !strings.HasPrefix(series, "connwarden_rule_keys_tracked{") {
			continue
		}
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("metric %s: %w", l, err)
		}
		total += int(f)
		if strings.Contains(series, `rule="`+rule+`"`) {
			ofRule = int(f)
		}
	}
	return total, ofRule, nil
}

// metricValues returns the values of the named series (name{labels} as
// /metrics writes them), in order; absent series are an error.
func (a *benchAgent) metricValues(series ...string) ([]float64, error) {
	var body []byte
	if err := a.api.Do("GET", "/metrics", nil, &body); err != nil {
		return nil, err
	}
	vals := make([]float64, len(series))
	found := 0
	for _, l := range strings.Split(string(body), "\n") {
		name, v, ok := strings.Cut(l, " ")
		i := slices.Index(series, name)
		if !ok || i < 0 {
			continue
		}
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return nil, fmt.Errorf("metric %s: %w", l, err)
		}
		vals[i] = f
		found++
	}
	if found != len(series) {
		return nil, fmt.Errorf("/metrics lacks some of %v", series)
	}
	return vals, nil
}

// quiesce waits until the agent has read every event it is going to (its
// received count stops moving for 300ms), for at most 30s.
func (a *benchAgent) quiesce() (stats, error) {
	last, err := a.stats()
	if err != nil {
		return stats{}, err
	}
	for still, deadline := 0, time.Now().Add(30*time.Second); still < 3; {
		if time.Now().After(deadline) {
			return last, errors.New("agent still receiving events after 30s")
		}
		time.Sleep(100 * time.Millisecond)
		s, err := a.stats()
		if err != nil {
			return stats{}, err
		}
		if s.EventsReceived == last.EventsReceived {
			still++
		} else {
			still = 0
		}
		last = s
	}
	return last, nil
}

// memory reads the agent's resident set size now and at its peak (VmRSS,
// VmHWM), in MiB.
func (a *benchAgent) memory() (rss, peak float64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", a.cmd.Process.Pid))
	if err != nil {
		return 0, 0, err
	}
	kb := func(field string) (float64, error) {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, field+":"); ok {
				n, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 64)
				return n, err
			}
		}
		return 0, fmt.Errorf("%s not in /proc/%d/status", field, a.cmd.Process.Pid)
	}
	r, err := kb("VmRSS")
	if err != nil {
		return 0, 0, err
	}
	p, err := kb("VmHWM")
	if err != nil {
		return 0, 0, err
	}
	return r / 1024, p / 1024, nil
}

// benchAlert is the part of an alert line the benchmarks read.
type benchAlert struct {
	Timestamp time.Time `json:"@timestamp"`
	Rule      struct {
		Name string `json:"name"`
	} `json:"rule"`
	Source *struct {
		IP string `json:"ip"`
	} `json:"source"`
	Connwarden struct {
		Block *struct {
			Target string `json:"target"`
			TTL    string `json:"ttl"`
			Result string `json:"result"`
		} `json:"block"`
	} `json:"connwarden"`
}

// readAlerts parses the agent's alert log.
func (a *benchAgent) readAlerts() ([]benchAlert, error) {
	f, err := os.Open(a.alerts)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []benchAlert
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var al benchAlert
		if err := json.Unmarshal(sc.Bytes(), &al); err != nil {
			return nil, fmt.Errorf("alert line %q: %w", sc.Bytes(), err)
		}
		out = append(out, al)
	}
	return out, sc.Err()
}

// serveAccept listens on addr (port 0: any) inside h and closes every
// connection it accepts, until tb ends.
func serveAccept(tb testing.TB, h *topology.Host, addr netip.AddrPort) netip.AddrPort {
	tb.Helper()
	var ln net.Listener
	if err := h.Do(func() (err error) {
		ln, err = net.Listen("tcp", addr.String())
		return err
	}); err != nil {
		tb.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	tb.Cleanup(func() { ln.Close(); <-done })
	return netip.MustParseAddrPort(ln.Addr().String())
}

// percentile returns the nearest-rank q-quantile (0 < q <= 1) of sorted s.
func percentile(s []time.Duration, q float64) time.Duration {
	if len(s) == 0 {
		return 0
	}
	i := int(float64(len(s))*q+0.999999) - 1
	return s[min(max(i, 0), len(s)-1)]
}

func median(s []float64) float64 {
	s = slices.Clone(s)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
