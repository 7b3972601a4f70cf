package bpf

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/google/go-cmp/cmp"
)

type ldEntry struct {
	flags      int32
	key, value string
}

// ldCache builds a cache in glibc's new format, after an optional old-format
// prefix, the way ldconfig lays it out: header, entries, string table.
func ldCache(prefix []byte, entries ...ldEntry) []byte {
	le := binary.LittleEndian
	var strs bytes.Buffer
	base := ldCacheHeaderSize + ldCacheEntrySize*len(entries)
	offs := map[string]uint32{}
	add := func(s string) uint32 {
		if o, ok := offs[s]; ok {
			return o
		}
		o := uint32(base + strs.Len())
		strs.WriteString(s)
		strs.WriteByte(0)
		offs[s] = o
		return o
	}
	hdr := make([]byte, ldCacheHeaderSize)
	copy(hdr, ldCacheMagic)
	le.PutUint32(hdr[20:], uint32(len(entries)))
	hdr[28] = 2 // little endian
	var ents []byte
	for _, e := range entries {
		b := make([]byte, ldCacheEntrySize)
		le.PutUint32(b[0:], uint32(e.flags))
		le.PutUint32(b[4:], add(e.key))
		le.PutUint32(b[8:], add(e.value))
		ents = append(ents, b...)
	}
	le.PutUint32(hdr[24:], uint32(strs.Len()))
	out := append(append([]byte(nil), prefix...), hdr...)
	return append(append(out, ents...), strs.Bytes()...)
}

func TestParseLDCache(t *testing.T) {
	x86 := int32(ldFlagELFLibc6 | ldFlagX8664Lib64)
	arm := int32(ldFlagELFLibc6 | ldFlagAArch64Lib64)
	entries := []ldEntry{
		{x86, "libpam.so.0", "/lib/x86_64-linux-gnu/libpam.so.0"},
		{arm, "libpam.so.0", "/lib/aarch64-linux-gnu/libpam.so.0"},
		{ldFlagELFLibc6, "libpam.so.0", "/lib32/libpam.so.0"}, // i386: no required flag
		{x86, "libpam_misc.so.0", "/lib/x86_64-linux-gnu/libpam_misc.so.0"},
		{x86, "libpam.so.0", "relative/libpam.so.0"},
		{x86, "libpam.so.0", "/usr/local/lib/libpam.so.0"},
	}
	for _, tc := range []struct {
		name   string
		data   []byte
		arch   int32
		want   []string
		hasErr bool
	}{
		{"x86-64 in cache order", ldCache(nil, entries...), ldFlagX8664Lib64,
			[]string{"/lib/x86_64-linux-gnu/libpam.so.0", "/usr/local/lib/libpam.so.0"}, false},
		{"arm64", ldCache(nil, entries...), ldFlagAArch64Lib64, []string{"/lib/aarch64-linux-gnu/libpam.so.0"}, false},
		{"after an old-format part", ldCache([]byte("ld.so-1.7.0\x00\x00\x00\x00\x00"), entries...), ldFlagX8664Lib64,
			[]string{"/lib/x86_64-linux-gnu/libpam.so.0", "/usr/local/lib/libpam.so.0"}, false},
		{"not a cache", []byte("hello"), ldFlagX8664Lib64, nil, true},
		{"truncated header", []byte(ldCacheMagic + "\x01"), ldFlagX8664Lib64, nil, true},
		{"entries beyond the end", ldCache(nil, entries...)[:ldCacheHeaderSize+10], ldFlagX8664Lib64, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseLDCache(tc.data, "libpam.so.0", tc.arch)
			if (err != nil) != tc.hasErr {
				t.Fatalf("error %v, want error: %v", err, tc.hasErr)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("paths (-want +got):\n%s", diff)
			}
		})
	}
}

// TestFindLibrary looks libpam up below a root of the test's own: through the
// cache, through a default directory when the cache does not have it, and not
// at all.
func TestFindLibrary(t *testing.T) {
	arch := ldArchFlag(runtime.GOARCH)
	if arch == 0 {
		t.Skipf("no loader flags known for %s", runtime.GOARCH)
	}
	write := func(t *testing.T, path string, data []byte) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("cache names a symlink", func(t *testing.T) {
		root := t.TempDir()
		write(t, filepath.Join(root, "opt/pam/libpam.so.0.85.1"), []byte("\x7fELF"))
		if err := os.Symlink("libpam.so.0.85.1", filepath.Join(root, "opt/pam/libpam.so.0")); err != nil {
			t.Fatal(err)
		}
		write(t, filepath.Join(root, "etc/ld.so.cache"), ldCache(nil,
			ldEntry{ldFlagELFLibc6 | arch, "libpam.so.0", "/opt/pam/libpam.so.0"}))
		got, err := findLibrary(root, "libpam.so.0")
		if err != nil {
			t.Fatal(err)
		}
		if want := filepath.Join(root, "opt/pam/libpam.so.0.85.1"); got != want {
			t.Errorf("found %s, want %s", got, want)
		}
	})
	t.Run("default directory", func(t *testing.T) {
		root := t.TempDir()
		write(t, filepath.Join(root, "etc/ld.so.cache"), ldCache(nil))
		write(t, filepath.Join(root, "usr/lib64/libpam.so.0"), []byte("\x7fELF"))
		got, err := findLibrary(root, "libpam.so.0")
		if err != nil {
			t.Fatal(err)
		}
		if want := filepath.Join(root, "usr/lib64/libpam.so.0"); got != want {
			t.Errorf("found %s, want %s", got, want)
		}
	})
	t.Run("absent", func(t *testing.T) {
		_, err := findLibrary(t.TempDir(), "libpam.so.0")
		if !errors.Is(err, errNoLibrary) {
			t.Errorf("error %v, want errNoLibrary", err)
		}
	})
	t.Run("this machine", func(t *testing.T) {
		if _, err := os.Stat("/etc/ld.so.cache"); err != nil {
			t.Skip("no /etc/ld.so.cache")
		}
		// Every glibc system's cache lists the C library itself.
		data, err := os.ReadFile("/etc/ld.so.cache")
		if err != nil {
			t.Fatal(err)
		}
		paths, err := parseLDCache(data, "libc.so.6", arch)
		if err != nil || len(paths) == 0 {
			t.Fatalf("libc.so.6 in this machine's cache: %v %v", paths, err)
		}
	})
}

func FuzzParseLDCache(f *testing.F) {
	f.Add(ldCache(nil, ldEntry{ldFlagELFLibc6 | ldFlagX8664Lib64, "libpam.so.0", "/lib/libpam.so.0"}))
	f.Add(ldCache([]byte("ld.so-1.7.0"), ldEntry{3, "a", "b"}))
	f.Add([]byte(ldCacheMagic))
	f.Fuzz(func(t *testing.T, data []byte) {
		paths, err := parseLDCache(data, "libpam.so.0", ldFlagX8664Lib64)
		if err != nil && paths != nil {
			t.Fatalf("paths %v with error %v", paths, err)
		}
		for _, p := range paths {
			if !filepath.IsAbs(p) {
				t.Fatalf("relative path %q", p)
			}
		}
	})
}
