package test

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func runCLI(t *testing.T, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(agentBin, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return out.String(), ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), 0
}

// Invalid rules exit 3 with every error printed; usage errors exit 2.
func TestCLIRulesValidateExitCodes(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "a.yaml"), []byte("rules:\n  - name: x\n    description: d\n    mode: enforse\n    severity: high\n    filter: {kind: [connect]}\n    detection:\n      threshold: {count: 5, window: 10, by: [tgid]}\n"), 0o644)
	out, code := runCLI(t, "rules", "validate", dir)
	if code != 3 {
		t.Errorf("exit %d, want 3:\n%s", code, out)
	}
	for _, want := range []string{"a.yaml:4:11", "enforse", "a.yaml:8:", `"10s"`} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if out, code := runCLI(t, "rules", "validate"); code != 0 || !strings.HasPrefix(out, "ok:") {
		t.Errorf("embedded pack: exit %d: %s", code, out)
	}
	if _, code := runCLI(t, "rules", "frobnicate", "x", "y"); code != 2 {
		t.Errorf("bad usage: exit %d, want 2", code)
	}
	if _, code := runCLI(t, "run", "--no-such-flag"); code != 2 {
		t.Errorf("unknown flag: exit %d, want 2", code)
	}
	if out, code := runCLI(t, "rules", "test"); code != 0 || !strings.Contains(out, " passed, 0 failed") {
		t.Errorf("rules test: exit %d:\n%s", code, out)
	}
}

// record captures live events as JSON lines that replay accepts, and replay
// is deterministic.
func TestCLIRecordReplay(t *testing.T) {
	top := requireKernel(t)
	svc := serve(t, top.Victim, top.Victim.IPv4, 0)
	path := filepath.Join(t.TempDir(), "ev.jsonl")
	rec := exec.Command(agentBin, "record", "-o", path, "--duration", "3s")
	var stderr bytes.Buffer
	rec.Stderr = &stderr
	if err := rec.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // tracer attached
	dial(t, top.Attacker, svc, 6, 2*time.Second)
	if err := rec.Wait(); err != nil {
		t.Fatalf("record: %v %s", err, stderr.String())
	}
	b, _ := os.ReadFile(path)
	seen := 0
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("not JSON: %s", l)
		}
		if m["kind"] == "inbound_accept" && strings.HasPrefix(m["remote"].(string), top.Attacker.IPv4.String()+":") {
			seen++
		}
	}
	if seen != 6 {
		t.Errorf("recorded %d of the attacker's 6 accepts", seen)
	}
	rules := t.TempDir()
	os.WriteFile(filepath.Join(rules, "r.yaml"), []byte(burstRule), 0o644)
	out1, code := runCLI(t, "replay", "--rules", rules, path)
	out2, _ := runCLI(t, "replay", "--rules", rules, path)
	if code != 0 || out1 != out2 {
		t.Fatalf("replay exit %d, deterministic %v", code, out1 == out2)
	}
	if !strings.Contains(out1, `"type":"block"`) || !strings.Contains(out1, top.Attacker.IPv4.String()+"/32") {
		t.Errorf("replay did not block the attacker:\n%s", out1)
	}
}

// The blocklist CLI works through the agent's socket, and straight on the
// pinned maps when no agent runs.
func TestCLIBlocklist(t *testing.T) {
	top := requireKernel(t)
	a := newAgent(t, top, map[string]string{"burst.yaml": burstRule})
	a.start()
	common := []string{"--socket", a.socket, "--pin-dir", a.pinDir}
	cli := func(args ...string) string {
		t.Helper()
		out, code := runCLI(t, append(args, common...)...)
		if code != 0 {
			t.Fatalf("%v: exit %d: %s", args, code, out)
		}
		return out
	}
	cli("blocklist", "add", "198.51.100.9", "--ttl", "10m")
	cli("blocklist", "add", "2001:db8:9::/48")
	if out := cli("blocklist", "list"); !strings.Contains(out, "198.51.100.9/32") || !strings.Contains(out, "2001:db8:9::/48") {
		t.Errorf("list:\n%s", out)
	}
	cli("blocklist", "del", "198.51.100.9")
	if out := cli("status"); !strings.Contains(out, "agent: running, ready") {
		t.Errorf("status:\n%s", out)
	}
	if err := a.stop(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// No agent: the CLI edits the pinned maps directly.
	if out := cli("blocklist", "list"); !strings.Contains(out, "2001:db8:9::/48") || strings.Contains(out, "198.51.100.9") {
		t.Errorf("pinned list:\n%s", out)
	}
	cli("blocklist", "flush")
	if out := cli("blocklist", "list", "--json"); strings.TrimSpace(out) != "[]" {
		t.Errorf("after flush: %s", out)
	}
	if out, code := runCLI(t, append([]string{"status"}, common...)...); code != 1 || !strings.Contains(out, "not running") {
		t.Errorf("status without agent: exit %d: %s", code, out)
	}
}
