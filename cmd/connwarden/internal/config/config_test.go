package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func write(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestPrecedenceFileEnv(t *testing.T) {
	p := write(t, "rules_dir: /from/file\nxdp_mode: generic\ngc_interval: 30s\napi:\n  listen: 127.0.0.1:1\n")
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"CONNWARDEN_RULES_DIR": "/from/env", "CONNWARDEN_EGRESS": "true"}
	if err := c.ApplyEnv(func(k string) string { return env[k] }); err != nil {
		t.Fatal(err)
	}
	want := Default()
	want.RulesDir = "/from/env" // env beats file
	want.XDPMode = "generic"    // file beats default
	want.GCInterval = 30 * time.Second
	want.API.Listen = "127.0.0.1:1"
	want.Egress = true
	if d := cmp.Diff(want, c); d != "" {
		t.Errorf("config (-want +got):\n%s", d)
	}
}

func TestLoadErrors(t *testing.T) {
	tests := []struct{ body, want string }{
		{"rules_dri: /x\n", "rules_dri"},
		{"xdp_mode: fast\n", `xdp_mode "fast"`},
		{"gc_interval: 10\n", "gc_interval"},
		{"ring_buffer_bytes: 5000\n", "power of two"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			_, err := Load(write(t, tt.body))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Load(%q) = %v; want an error mentioning %q", tt.body, err, tt.want)
			}
		})
	}
}

func TestMissingExplicitFileIsError(t *testing.T) {
	if _, err := Load(filepath.Join(t.TempDir(), "absent.yaml")); err == nil {
		t.Error("missing --config file accepted")
	}
}

func TestEnvErrors(t *testing.T) {
	c := Default()
	err := c.ApplyEnv(func(k string) string {
		return map[string]string{"CONNWARDEN_EGRESS": "maybe", "CONNWARDEN_GC_INTERVAL": "10"}[k]
	})
	if err == nil || !strings.Contains(err.Error(), "CONNWARDEN_EGRESS") || !strings.Contains(err.Error(), "CONNWARDEN_GC_INTERVAL") {
		t.Errorf("ApplyEnv error = %v; want both bad variables named", err)
	}
}

func TestTokenFile(t *testing.T) {
	c := Default()
	c.API.TokenFile = write(t, "  s3cret\n")
	if err := c.ResolveToken(); err != nil {
		t.Fatal(err)
	}
	if c.API.Token != "s3cret" {
		t.Errorf("token %q", c.API.Token)
	}
}
