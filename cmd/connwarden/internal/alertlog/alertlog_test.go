package alertlog

import (
	"bytes"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

func sample() *Record {
	return &Record{
		Timestamp: time.Date(2026, 11, 21, 10, 0, 0, 5, time.UTC),
		Event: Event{Kind: "alert", Category: []string{"network", "intrusion_detection"},
			Type: []string{"connection", "denied"}, Action: "threshold", Severity: 3},
		Rule:       Rule{Name: "inbound-flood", Ruleset: "connwarden"},
		Threat:     &Threat{Framework: "MITRE ATT&CK", Technique: []Technique{{ID: "T1046"}}},
		Source:     &Endpoint{IP: "10.0.0.9", Port: 40000},
		Dest:       &Endpoint{IP: "10.0.0.1", Port: 22},
		Host:       Host{Hostname: "h"},
		Connwarden: Connwarden{Key: "remote_ip=10.0.0.9", Count: 5, Mode: "enforce", EventsLost: 0},
	}
}

func TestLineShape(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	if err := w.Write(sample()); err != nil {
		t.Fatal(err)
	}
	line := buf.String()
	if !strings.HasPrefix(line, `{"@timestamp":"2026-11-21T10:00:00.000000005Z","event":{"kind":"alert"`) {
		t.Errorf("line does not start with @timestamp then event.kind: %s", line)
	}
	if strings.Count(line, "\n") != 1 || !strings.HasSuffix(line, "\n") {
		t.Errorf("want exactly one line, got %q", line)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(line), &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"rule", "threat", "source", "destination", "host", "connwarden"} {
		if _, ok := m[k]; !ok {
			t.Errorf("missing %s in %s", k, line)
		}
	}
}

func TestReopenAfterRotate(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "alerts.jsonl")
	w, err := Open(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	w.Write(sample())
	if err := os.Rename(p, p+".1"); err != nil {
		t.Fatal(err)
	}
	w.Write(sample()) // still goes to the rotated file
	if err := w.Reopen(); err != nil {
		t.Fatal(err)
	}
	w.Write(sample())
	old, _ := os.ReadFile(p + ".1")
	cur, _ := os.ReadFile(p)
	if n := bytes.Count(old, []byte("\n")); n != 2 {
		t.Errorf("rotated file has %d lines, want 2", n)
	}
	if n := bytes.Count(cur, []byte("\n")); n != 1 {
		t.Errorf("new file has %d lines, want 1", n)
	}
}

func TestSyslogRFC5424(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "log")
	l, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	s, err := DialSyslog("unixgram://" + sock)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	w := NewWriter(&buf)
	w.syslog = s
	if err := w.Write(sample()); err != nil {
		t.Fatal(err)
	}
	l.SetReadDeadline(time.Now().Add(5 * time.Second))
	msg := make([]byte, 8192)
	n, err := l.Read(msg)
	if err != nil {
		t.Fatal(err)
	}
	// <PRI>1 TIMESTAMP HOST APP PID MSGID - MSG ; authpriv(10)*8 + error(3) = 83
	re := regexp.MustCompile(`^<83>1 2026-11-21T10:00:00\.000000Z \S+ connwarden \d+ inbound-flood - \{"@timestamp"`)
	if !re.Match(msg[:n]) {
		t.Errorf("not RFC 5424 as expected: %s", msg[:n])
	}
}

func TestDialSyslogRejectsScheme(t *testing.T) {
	if _, err := DialSyslog("http://x"); err == nil {
		t.Error("http scheme accepted")
	}
}
