// Package kerneltest decides, in one place, whether a test that needs the real
// kernel (root, BPF, bpffs, network namespaces) runs, skips, or fails.
//
// On a machine without BPF such tests skip with the reason. When
// CONNWARDEN_REQUIRE_KERNEL=1 (as .ci/run sets it) they fail instead, so a skip
// can never pass CI silently.
package kerneltest

import (
	"fmt"
	"os"
	"sync"
	"testing"

	"github.com/connwarden/connwarden/internal/mounts"
)

// EnvRequire names the environment variable that turns skips into failures.
const EnvRequire = "CONNWARDEN_REQUIRE_KERNEL"

var (
	once   sync.Once
	reason string
)

// Required reports whether kernel tests must run (CONNWARDEN_REQUIRE_KERNEL=1).
func Required() bool { return os.Getenv(EnvRequire) == "1" }

// Unavailable says why kernel tests cannot run here, or "" when they can.
// It checks once per process: root, a mounted bpffs at /sys/fs/bpf (mounting it
// when missing) and tracefs at /sys/kernel/tracing (likewise).
func Unavailable() string {
	once.Do(func() { reason = probe() })
	return reason
}

func probe() string {
	if os.Geteuid() != 0 {
		return "not root"
	}
	if err := mounts.Ensure(); err != nil {
		return err.Error()
	}
	return ""
}

// Require skips t (or fails it, when kernel tests are required) unless the
// kernel side can be exercised on this machine.
func Require(t testing.TB) {
	t.Helper()
	if r := Unavailable(); r != "" {
		if Required() {
			t.Fatalf("kernel test cannot run (%s) but %s=1", r, EnvRequire)
		}
		t.Skipf("kernel test skipped: %s (set %s=1 to make this a failure)", r, EnvRequire)
	}
}

// Unsupported is for a test that found a specific kernel feature missing after
// Require passed: it skips with why, or fails when kernel tests are required.
func Unsupported(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if Required() {
		t.Fatalf("kernel feature unavailable but %s=1: %s", EnvRequire, msg)
	}
	t.Skip(msg)
}
