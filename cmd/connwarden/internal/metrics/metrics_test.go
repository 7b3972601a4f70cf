package metrics

import (
	"bytes"
	"io"
	"net/http/httptest"
	"os/exec"
	"strings"
	"testing"

	"github.com/connwarden/connwarden/internal/kerneltest"
)

func sampleSnapshot() Snapshot {
	return Snapshot{
		XDPPass: 10, XDPDrop: 3,
		XDPReasons:     map[string]uint64{"drop_exact": 2, "drop_cidr": 1, "pass_non_ip": 4},
		EventsReceived: map[string]uint64{"tracer": 100},
		EventsLost:     map[string]uint64{"tracer": 7},
		ActiveBlocks:   2, BlockCapacity: 65536,
		Rules:     []RuleStat{{Rule: "inbound-scan", Severity: "high", Matches: 9, KeysTracked: 3}},
		Alerts:    map[[2]string]uint64{{"inbound-scan", "high"}: 1},
		Decisions: map[[2]string]uint64{{"block", "ok"}: 1},
	}
}

func scrape(t *testing.T, m *Metrics) string {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	b, _ := io.ReadAll(rec.Body)
	return string(b)
}

func TestExposition(t *testing.T) {
	m := New(sampleSnapshot)
	m.DetectToBlock.Observe(0.002)
	out := scrape(t, m)
	for _, want := range []string{
		`connwarden_xdp_packets_total{action="pass"} 10`,
		`connwarden_xdp_packets_total{action="drop"} 3`,
		`connwarden_xdp_verdicts_total{reason="drop_cidr"} 1`,
		`connwarden_events_lost_total{source="tracer"} 7`,
		`connwarden_alerts_total{rule="inbound-scan",severity="high"} 1`,
		`connwarden_blocklist_capacity 65536`,
		`connwarden_detect_to_block_seconds_count 1`,
		`connwarden_build_info{`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in:\n%s", want, out)
		}
	}
}

// promtool (Debian's prometheus package, installed by scripts/setup-host.sh)
// is the judge of the exposition format and naming conventions.
func TestPromtoolCheckMetrics(t *testing.T) {
	path, err := exec.LookPath("promtool")
	if err != nil {
		if kerneltest.Required() {
			t.Fatal("promtool not installed (run scripts/setup-host.sh)")
		}
		t.Skip("promtool not installed")
	}
	m := New(sampleSnapshot)
	cmd := exec.Command(path, "check", "metrics")
	cmd.Stdin = strings.NewReader(scrape(t, m))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out.String())
	}
}
