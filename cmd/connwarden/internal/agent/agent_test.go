package agent

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest"

	"github.com/connwarden/connwarden/cmd/connwarden/internal/api"
	"github.com/connwarden/connwarden/cmd/connwarden/internal/config"
	"github.com/connwarden/connwarden/internal/kerneltest"
)

const token = "s3cret-token"

// newTestAgent builds a real agent (tracer, engine, pinned blocklist in its
// own pin directory) with XDP not attached and no listeners, and serves its
// API handler with httptest.
func newTestAgent(t *testing.T) (*Agent, *httptest.Server) {
	t.Helper()
	kerneltest.Require(t)
	b := make([]byte, 4)
	rand.Read(b)
	cfg := config.Default()
	cfg.PinDir = "/sys/fs/bpf/connwarden-apitest-" + hex.EncodeToString(b)
	cfg.Interfaces = []string{"none"}
	cfg.API.Listen, cfg.API.Socket, cfg.API.Token = "", "", token
	cfg.Alerts.Output = filepath.Join(t.TempDir(), "alerts.jsonl")
	// A rule and the flow graph, which the default pack leaves off.
	cfg.RulesDir = t.TempDir()
	for name, body := range map[string]string{
		"settings.yaml": "settings:\n  graph: {enabled: true}\n",
		"rules.yaml":    "rules:\n  - name: api-test\n    description: A process made 5 connects within 10s.\n    mode: monitor\n    severity: low\n    filter: {kind: [connect]}\n    detection:\n      threshold: {count: 5, window: 10s, by: [tgid]}\n",
	} {
		if err := os.WriteFile(filepath.Join(cfg.RulesDir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cfg.CleanupOnExit = true
	a, err := New(cfg, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	srv := httptest.NewServer(a.Handler())
	t.Cleanup(srv.Close)
	return a, srv
}

func do(t *testing.T, srv *httptest.Server, method, path, auth, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestAPIAuth(t *testing.T) {
	_, srv := newTestAgent(t)
	body := `{"address":"198.51.100.7","ttl":"1m"}`
	tests := []struct {
		name, auth string
		want       int
	}{
		{"missing", "", 401},
		{"empty", "Bearer ", 401},
		{"wrong", "Bearer nope", 401},
		{"wrong scheme", "Basic " + token, 401},
		{"prefix of token", "Bearer " + token[:4], 401},
		{"right", "Bearer " + token, 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if code, out := do(t, srv, "POST", "/api/v1/blocklist", tt.auth, body); code != tt.want {
				t.Errorf("POST with %q: %d %s, want %d", tt.auth, code, out, tt.want)
			}
			if tt.want == 401 {
				if code, _ := do(t, srv, "DELETE", "/api/v1/blocklist/198.51.100.7", tt.auth, ""); code != 401 {
					t.Errorf("DELETE with %q: %d, want 401", tt.auth, code)
				}
				if code, _ := do(t, srv, "POST", "/api/v1/rules/reload", tt.auth, ""); code != 401 {
					t.Errorf("reload with %q: %d, want 401", tt.auth, code)
				}
			}
		})
	}
}

// With no token configured, nothing authenticates, not even an empty bearer.
func TestAPIEmptyTokenNeverAuthenticates(t *testing.T) {
	a, _ := newTestAgent(t)
	srv := httptest.NewServer(api.New((*backend)(a), "", nil, a.log))
	defer srv.Close()
	for _, auth := range []string{"", "Bearer ", "Bearer  ", "Bearer x"} {
		if code, _ := do(t, srv, "POST", "/api/v1/blocklist", auth, `{"address":"198.51.100.7"}`); code != 401 {
			t.Errorf("auth %q: %d, want 401", auth, code)
		}
	}
}

func TestAPIBlocklistLifecycle(t *testing.T) {
	_, srv := newTestAgent(t)
	auth := "Bearer " + token
	steps := []struct {
		method, path, body string
		want               int
		contains           string
	}{
		{"POST", "/api/v1/blocklist", `{"address":"198.51.100.7","ttl":"10m","reason":"test"}`, 200, `"success": true`},
		{"POST", "/api/v1/blocklist", `{"address":"2001:db8:1::/48"}`, 200, "2001:db8:1::/48"},
		{"GET", "/api/v1/blocklist", "", 200, `"address": "198.51.100.7/32"`},
		{"DELETE", "/api/v1/blocklist/198.51.100.7", "", 200, `"message": "IP 198.51.100.7 removed from blocklist"`},
		{"DELETE", "/api/v1/blocklist/198.51.100.7", "", 404, `"success": false`},
		{"DELETE", "/api/v1/blocklist/2001:db8:1::/48", "", 200, `"success": true`},
		{"DELETE", "/api/v1/blocklist/not-an-ip", "", 400, "invalid address"},
		{"DELETE", "/api/v1/blocklist/1.2.3.4%25eth0", "", 400, "invalid address"},
		{"POST", "/api/v1/blocklist", `{"address":"300.1.1.1"}`, 400, "invalid address"},
		{"POST", "/api/v1/blocklist", `{"address":"198.51.100.7","ttl":"10"}`, 400, "invalid ttl"},
		{"POST", "/api/v1/blocklist", `{"address":"198.51.100.7","ttl":"-1m"}`, 400, "invalid ttl"},
		{"POST", "/api/v1/blocklist", `{"address":`, 400, "invalid JSON"},
		{"POST", "/api/v1/blocklist", `{"address":"198.51.100.7","bogus":1}`, 400, "unknown field"},
		{"POST", "/api/v1/blocklist", `{"address":"198.51.100.7"}{}`, 400, "more than one"},
		{"POST", "/api/v1/blocklist", `{"address":"198.51.100.7","reason":"` + strings.Repeat("x", api.MaxBodyBytes) + `"}`, 413, "larger than"},
		{"POST", "/api/v1/blocklist", `{"address":"127.0.0.1"}`, 409, "allowlist"},
	}
	for _, s := range steps {
		code, out := do(t, srv, s.method, s.path, auth, s.body)
		if code != s.want || !strings.Contains(out, s.contains) {
			body := s.body
			if len(body) > 60 {
				body = body[:60] + "..."
			}
			t.Errorf("%s %s %s: %d %s; want %d containing %q", s.method, s.path, body, code, out, s.want, s.contains)
		}
	}
}

func TestAPIEndpointShapes(t *testing.T) {
	_, srv := newTestAgent(t)
	keys := func(t *testing.T, path string, want ...string) {
		t.Helper()
		code, out := do(t, srv, "GET", path, "", "")
		if code != 200 {
			t.Fatalf("GET %s: %d %s", path, code, out)
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(out), &m); err != nil {
			t.Fatalf("GET %s: %v: %s", path, err, out)
		}
		for _, k := range want {
			if _, ok := m[k]; !ok {
				t.Errorf("GET %s lacks %q: %s", path, k, out)
			}
		}
	}
	keys(t, "/api/v1/stats", "packets_processed", "packets_passed", "packets_dropped", "attacks_blocked",
		"events_received", "events_lost", "alerts", "active_blocks")
	keys(t, "/api/v1/rules", "source", "rules", "dry_run")
	keys(t, "/healthz", "status")
	keys(t, "/api/v1/graph", "nodes", "edges")
	if code, out := do(t, srv, "GET", "/api/v1/graph?format=dot", "", ""); code != 200 || !strings.HasPrefix(out, "digraph") {
		t.Errorf("graph dot: %d %.60s", code, out)
	}
	if code, _ := do(t, srv, "GET", "/api/v1/graph?format=svg", "", ""); code != 400 {
		t.Errorf("graph svg: %d, want 400", code)
	}
	for _, p := range []string{"/api/v1/alerts", "/api/v1/processes", "/api/v1/blocklist"} {
		code, out := do(t, srv, "GET", p, "", "")
		var arr []any
		if code != 200 || json.Unmarshal([]byte(out), &arr) != nil {
			t.Errorf("GET %s: %d %s; want a JSON array", p, code, out)
		}
	}
	if code, _ := do(t, srv, "GET", "/api/v1/alerts?limit=0", "", ""); code != 400 {
		t.Errorf("alerts limit=0: %d, want 400", code)
	}
	// Not running yet: not ready.
	if code, _ := do(t, srv, "GET", "/readyz", "", ""); code != 503 {
		t.Errorf("readyz before Run: %d, want 503", code)
	}
	if code, out := do(t, srv, "POST", "/api/v1/rules/reload", "Bearer "+token, ""); code != 200 {
		t.Errorf("reload: %d %s", code, out)
	}
	if code, out := do(t, srv, "GET", "/metrics", "", ""); code != 200 || !strings.Contains(out, "connwarden_xdp_packets_total") {
		t.Errorf("metrics: %d", code)
	}
	if code, _ := do(t, srv, "PUT", "/api/v1/stats", "", ""); code != 405 {
		t.Errorf("PUT stats: %d, want 405", code)
	}
}
