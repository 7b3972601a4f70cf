package bpf

import (
	"bytes"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/connwarden/connwarden/internal/kerneltest"
)

// isGenerated reports whether name is bpf2go output (objects and bindings).
func isGenerated(name string) bool {
	return strings.HasSuffix(name, "_bpfel.o") || strings.HasSuffix(name, "_bpfel.go") ||
		strings.HasSuffix(name, "_bpfeb.o") || strings.HasSuffix(name, "_bpfeb.go")
}

// TestGeneratedCurrent checks that the committed BPF objects and bindings are
// what the C sources compile to: it copies the package's sources (without any
// generated file) and go.mod into a temporary module, runs every go:generate
// line of gen.go there, and compares each *_bpfel.o and *_bpfel.go byte for
// byte with the committed one. It needs clang and llvm-strip; without them it
// skips, or fails when CONNWARDEN_REQUIRE_KERNEL=1 (as in CI).
func TestGeneratedCurrent(t *testing.T) {
	if testing.Short() {
		t.Skip("compiles BPF objects; skipped with -short")
	}
	for _, tool := range []string{"clang", "llvm-strip"} {
		if _, err := exec.LookPath(tool); err != nil {
			if kerneltest.Required() {
				t.Fatalf("%s not found but %s=1: cannot check the committed BPF objects", tool, kerneltest.EnvRequire)
			}
			t.Skipf("%s not found: cannot check the committed BPF objects (set %s=1 to make this a failure)", tool, kerneltest.EnvRequire)
		}
	}
	goTool := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goTool); err != nil {
		if goTool, err = exec.LookPath("go"); err != nil {
			t.Fatalf("go command: %v", err)
		}
	}

	pkgDir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	modRoot := filepath.Dir(pkgDir)
	tmpRoot := t.TempDir()
	tmpPkg := filepath.Join(tmpRoot, filepath.Base(pkgDir))
	for _, f := range []string{"go.mod", "go.sum"} {
		copyPackageFile(t, filepath.Join(modRoot, f), filepath.Join(tmpRoot, f))
	}

	var committed []string
	err = filepath.WalkDir(pkgDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(pkgDir, path)
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			if rel != "." && (d.Name() == "testdata" || strings.HasPrefix(d.Name(), ".")) {
				return filepath.SkipDir
			}
			return os.MkdirAll(filepath.Join(tmpPkg, rel), 0o755)
		case isGenerated(d.Name()):
			committed = append(committed, rel)
			return nil
		default:
			copyPackageFile(t, path, filepath.Join(tmpPkg, rel))
			return nil
		}
	})
	if err != nil {
		t.Fatalf("copy package sources: %v", err)
	}

	// go generate on the one file runs exactly gen.go's directives, with
	// GOPACKAGE and GOFILE set as for the real package.
	cmd := exec.Command(goTool, "generate", "gen.go")
	cmd.Dir = tmpPkg
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go generate gen.go: %v\n%s", err, out)
	}

	var regenerated []string
	entries, err := os.ReadDir(tmpPkg)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if isGenerated(e.Name()) {
			regenerated = append(regenerated, e.Name())
		}
	}
	slices.Sort(committed)
	if !slices.Equal(committed, regenerated) {
		t.Fatalf("generated files differ: committed %v, gen.go makes %v; run make generate and commit", committed, regenerated)
	}
	for _, name := range committed {
		want, err := os.ReadFile(filepath.Join(tmpPkg, name))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(pkgDir, name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s is not what the C compiles to (committed %d bytes, regenerated %d); run make generate and commit", name, len(got), len(want))
		}
	}
	if !slices.ContainsFunc(committed, func(n string) bool { return strings.HasSuffix(n, "_bpfel.o") }) {
		t.Errorf("no *_bpfel.o committed")
	}
}

func copyPackageFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatalf("copy: %v", err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		t.Fatalf("copy: %v", err)
	}
}
