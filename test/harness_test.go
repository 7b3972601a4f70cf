package test

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
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/connwarden/connwarden/bpf"
	"github.com/connwarden/connwarden/internal/kerneltest"
	"github.com/connwarden/connwarden/test/topology"
)

// agentBin is the connwarden binary under test, built once by TestMain.
var agentBin string

func TestMain(m *testing.M) {
	// Re-executed as a helper process (a service or client with its own pid
	// and comm, "test.test") inside a test namespace.
	if h := os.Getenv("CW_HELPER"); h != "" {
		os.Exit(runHelper(h))
	}
	dir, err := os.MkdirTemp("", "connwarden-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	agentBin = filepath.Join(dir, "connwarden")
	// The product binary as shipped (no -race: the race detector's slowdown
	// would make the agent lose events no real deployment loses; the agent's
	// packages run under -race in their own tests).
	out, err := exec.Command("go", "build", "-o", agentBin, "../cmd/connwarden").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build connwarden: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func randID() string {
	b := make([]byte, 4)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// agentProc is one agent running in the victim's network namespace.
type agentProc struct {
	t         *testing.T
	cmd       *exec.Cmd
	dir       string // temp dir: rules, alert log, stderr, socket
	rulesDir  string
	pinDir    string
	socket    string
	alertPath string
	logPath   string
	iface     string
	host      *topology.Host
	exited    chan error
	// wrap, when set, runs before the agent inside the namespace and must
	// exec it (setpriv, unshare): wrap[0] wrap[1:]... agentBin args...
	wrap []string
}

// newAgent prepares (does not start) an agent for the victim of top with the
// given rule files (name -> YAML).
func newAgent(t *testing.T, top *topology.Topology, ruleFiles map[string]string) *agentProc {
	t.Helper()
	dir := t.TempDir()
	a := &agentProc{
		t: t, dir: dir,
		rulesDir:  filepath.Join(dir, "rules"),
		pinDir:    "/sys/fs/bpf/connwarden-e2e-" + randID(),
		socket:    filepath.Join(dir, "api.sock"),
		alertPath: filepath.Join(dir, "alerts.jsonl"),
		logPath:   filepath.Join(dir, "agent.log"),
		iface:     top.Victim.IfName,
		host:      top.Victim,
	}
	os.Mkdir(a.rulesDir, 0o755)
	for name, body := range ruleFiles {
		a.writeRules(name, body)
	}
	t.Cleanup(func() {
		a.stop(syscall.SIGKILL)
		// Whatever the test did, leave no pins or XDP links behind.
		if _, err := os.Stat(a.pinDir); err == nil {
			var bl *bpf.Blocklist
			err := top.Victim.Do(func() (err error) {
				bl, err = bpf.OpenBlocklist(bpf.BlocklistOptions{PinDir: a.pinDir})
				return err
			})
			if err == nil {
				bl.Remove()
			} else {
				os.RemoveAll(a.pinDir)
			}
		}
		if t.Failed() {
			if b, err := os.ReadFile(a.logPath); err == nil {
				t.Logf("agent log:\n%s", b)
			}
		}
	})
	return a
}

func (a *agentProc) writeRules(name, body string) {
	a.t.Helper()
	if err := os.WriteFile(filepath.Join(a.rulesDir, name), []byte(body), 0o644); err != nil {
		a.t.Fatal(err)
	}
}

// start runs the agent and waits until /readyz answers.
func (a *agentProc) start(extra ...string) {
	a.t.Helper()
	args := append([]string{"run",
		"--rules", a.rulesDir, "--interface", a.iface, "--pin-dir", a.pinDir,
		"--api-listen", "", "--api-socket", a.socket, "--alerts", a.alertPath,
		"--gc-interval", "1s", "--log-level", "debug",
	}, extra...)
	logf, err := os.OpenFile(a.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		a.t.Fatal(err)
	}
	if len(a.wrap) > 0 {
		a.cmd = a.host.Command(a.wrap[0], append(append(a.wrap[1:len(a.wrap):len(a.wrap)], agentBin), args...)...)
	} else {
		a.cmd = a.host.Command(agentBin, args...)
	}
	a.cmd.Stdout, a.cmd.Stderr = logf, logf
	a.cmd.Env = append(os.Environ(), "CONNWARDEN_API_TOKEN=")
	if err := a.cmd.Start(); err != nil {
		a.t.Fatal(err)
	}
	a.exited = make(chan error, 1)
	go func() { a.exited <- a.cmd.Wait(); logf.Close() }()
	c := a.client()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if err := c.Do("GET", "/readyz", nil, nil); err == nil {
			return
		}
		select {
		case err := <-a.exited:
			a.exited <- err
			a.t.Fatalf("agent exited during start-up: %v", err)
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			a.t.Fatal("agent not ready after 30s")
		}
	}
}

// stop signals the agent (nsenter passes signals on) and waits for it.
func (a *agentProc) stop(sig syscall.Signal) error {
	if a.cmd == nil || a.cmd.Process == nil {
		return nil
	}
	select {
	case err := <-a.exited:
		a.exited <- err
		return err
	default:
	}
	if sig == syscall.SIGKILL {
		// nsenter forwards catchable signals only: kill the agent itself.
		killChildren(a.cmd.Process.Pid)
	}
	a.cmd.Process.Signal(sig)
	select {
	case err := <-a.exited:
		a.exited <- err
		return err
	case <-time.After(15 * time.Second):
		a.cmd.Process.Kill()
		return errors.New("agent did not stop within 15s")
	}
}

// killChildren SIGKILLs the direct children of pid (the agent under nsenter).
func killChildren(pid int) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		return
	}
	for _, f := range strings.Fields(string(b)) {
		var c int
		fmt.Sscan(f, &c)
		syscall.Kill(c, syscall.SIGKILL)
	}
}

// blockEntry is the API's blocklist entry.
type blockEntry struct {
	Address string     `json:"address"`
	Expires *time.Time `json:"expires"`
	Reason  string     `json:"reason"`
	Hits    uint64     `json:"hits"`
}

// apiClient speaks HTTP to the agent's unix socket, as the CLI does.
type apiClient struct{ hc *http.Client }

func (a *agentProc) client() *apiClient {
	return &apiClient{hc: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", a.socket)
		}}}}
}

// Do sends a request; a non-2xx status is an error carrying the body. out may
// be nil, a *[]byte for the raw body, or a value to decode JSON into.
func (c *apiClient) Do(method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, "http://agent"+path, rd)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s %s: %d: %s", method, path, resp.StatusCode, bytes.TrimSpace(data))
	}
	switch o := out.(type) {
	case nil:
		return nil
	case *[]byte:
		*o = data
		return nil
	default:
		return json.Unmarshal(data, out)
	}
}

func (a *agentProc) blocklist() []blockEntry {
	a.t.Helper()
	var ents []blockEntry
	if err := a.client().Do("GET", "/api/v1/blocklist", nil, &ents); err != nil {
		a.t.Fatalf("GET blocklist: %v", err)
	}
	return ents
}

// waitBlocked polls the API until addr is blocked.
func (a *agentProc) waitBlocked(addr netip.Addr, within time.Duration) blockEntry {
	a.t.Helper()
	return a.waitBlockedPrefix(netip.PrefixFrom(addr, addr.BitLen()), within)
}

// waitBlockedPrefix polls the API until p is blocked.
func (a *agentProc) waitBlockedPrefix(p netip.Prefix, within time.Duration) blockEntry {
	a.t.Helper()
	for deadline := time.Now().Add(within); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		for _, e := range a.blocklist() {
			if e.Address == p.String() {
				return e
			}
		}
	}
	a.t.Fatalf("%v not blocked within %v; blocklist: %+v", p, within, a.blocklist())
	return blockEntry{}
}

// alerts returns the alert log's records.
func (a *agentProc) alerts() []map[string]any {
	b, _ := os.ReadFile(a.alertPath)
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			a.t.Errorf("alert line is not JSON: %v: %s", err, sc.Bytes())
			continue
		}
		out = append(out, m)
	}
	return out
}

// waitAlert polls the alert log for an alert of rule whose source (inbound)
// or destination (outbound) is peer. The tracer sees every namespace, so other
// tests' traffic may raise alerts too: a test matches its own by address.
func (a *agentProc) waitAlert(rule string, peer netip.Addr, within time.Duration) map[string]any {
	a.t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		for _, m := range a.alerts() {
			r, _ := m["rule"].(map[string]any)
			if r == nil || r["name"] != rule {
				continue
			}
			src, _ := m["source"].(map[string]any)
			dst, _ := m["destination"].(map[string]any)
			if (src != nil && src["ip"] == peer.String()) || (dst != nil && dst["ip"] == peer.String()) {
				return m
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	a.t.Fatalf("no alert of rule %s within %v (have %d alerts)", rule, within, len(a.alerts()))
	return nil
}

func (a *agentProc) log() string {
	b, _ := os.ReadFile(a.logPath)
	return string(b)
}

// serve starts h.Serve's listener for the test's lifetime.
func serve(t *testing.T, h *topology.Host, ip netip.Addr, port uint16) netip.AddrPort {
	t.Helper()
	addr, ln, err := h.Serve(ip, port)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return addr
}

// dial makes n connections from h to dst (see Host.Dial); it returns how many
// connected.
func dial(t *testing.T, h *topology.Host, dst netip.AddrPort, n int, timeout time.Duration) int {
	t.Helper()
	ok, err := h.Dial(dst, n, timeout)
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

func requireKernel(t *testing.T) *topology.Topology {
	t.Helper()
	kerneltest.Require(t)
	return topology.New(t)
}

// startDefault starts the agent on the embedded default rules.
func (a *agentProc) startDefault(extra ...string) {
	a.t.Helper()
	a.start(append([]string{"--rules="}, extra...)...)
}
