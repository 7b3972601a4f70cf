package bpf

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
)

// The dynamic loader's cache, /etc/ld.so.cache, in glibc's format since 2.32
// ("glibc-ld.so.cache1.1", possibly after an old-format part that we skip):
// a header, then entries naming a library (key) and its path (value) by
// offsets into a string table counted from the start of the header.
const (
	ldCacheMagic      = "glibc-ld.so.cache1.1"
	ldCacheHeaderSize = 48 // magic and version, nlibs, len_strings, flags, 3 pad, extension_offset, 3 unused
	ldCacheEntrySize  = 24 // flags, key, value, osversion, hwcap (u64)

	ldFlagTypeMask     = 0x00ff
	ldFlagELFLibc6     = 0x0003
	ldFlagRequiredMask = 0xff00
	ldFlagX8664Lib64   = 0x0300
	ldFlagAArch64Lib64 = 0x0a00
)

// errNoLibrary: neither the loader's cache nor its default directories have
// the library.
var errNoLibrary = errors.New("library not found")

// ldArchFlag is the cache's required-flags value for libraries this process's
// architecture can load, or 0 where we do not know it.
func ldArchFlag(goarch string) int32 {
	switch goarch {
	case "amd64":
		return ldFlagX8664Lib64
	case "arm64":
		return ldFlagAArch64Lib64
	}
	return 0
}

// parseLDCache returns the paths the cache lists for the library name (a
// soname such as "libpam.so.0") built for arch (an ldArchFlag value), in the
// cache's order, which is the order the loader prefers them.
func parseLDCache(data []byte, name string, arch int32) ([]string, error) {
	start := bytes.Index(data, []byte(ldCacheMagic))
	if start < 0 {
		return nil, errors.New("ld.so.cache: no glibc-ld.so.cache1.1 header")
	}
	c := data[start:]
	if len(c) < ldCacheHeaderSize {
		return nil, errors.New("ld.so.cache: truncated header")
	}
	le := binary.LittleEndian
	if c[28]&0x3 == 3 { // flags: 2 little endian, 3 big endian
		return nil, errors.New("ld.so.cache: big-endian cache")
	}
	nlibs := uint64(le.Uint32(c[20:]))
	if nlibs > uint64(len(c)-ldCacheHeaderSize)/ldCacheEntrySize {
		return nil, fmt.Errorf("ld.so.cache: %d entries do not fit in %d bytes", nlibs, len(c))
	}
	str := func(off uint32) (string, bool) {
		if uint64(off) >= uint64(len(c)) {
			return "", false
		}
		s := c[off:]
		n := bytes.IndexByte(s, 0)
		if n < 0 {
			return "", false
		}
		return string(s[:n]), true
	}
	var out []string
	for i := range nlibs {
		e := c[ldCacheHeaderSize+i*ldCacheEntrySize:]
		flags := int32(le.Uint32(e[0:]))
		if flags&ldFlagTypeMask != ldFlagELFLibc6 || flags&ldFlagRequiredMask != arch {
			continue
		}
		key, ok := str(le.Uint32(e[4:]))
		if !ok || key != name {
			continue
		}
		if path, ok := str(le.Uint32(e[8:])); ok && filepath.IsAbs(path) {
			out = append(out, path)
		}
	}
	return out, nil
}

// ldDefaultDirs are where the loader looks when the cache does not know a
// library: the multiarch directories of Debian and its derivatives, then
// lib64 and lib.
func ldDefaultDirs(goarch string) []string {
	var triplet string
	switch goarch {
	case "amd64":
		triplet = "x86_64-linux-gnu"
	case "arm64":
		triplet = "aarch64-linux-gnu"
	}
	var dirs []string
	if triplet != "" {
		dirs = append(dirs, "/lib/"+triplet, "/usr/lib/"+triplet)
	}
	return append(dirs, "/lib64", "/usr/lib64", "/lib", "/usr/lib")
}

// findLibrary finds the shared library name (a soname) below root ("/" for
// the host) the way the dynamic loader would for a program without its own
// search path: the cache first, then the default directories. It returns the
// path with root, symlinks resolved, so the caller probes the file the loader
// maps.
func findLibrary(root, name string) (string, error) {
	arch := ldArchFlag(runtime.GOARCH)
	var tried []string
	cache := filepath.Join(root, "etc/ld.so.cache")
	if data, err := os.ReadFile(cache); err == nil && arch != 0 {
		paths, err := parseLDCache(data, name, arch)
		if err != nil {
			tried = append(tried, fmt.Sprintf("%s: %v", cache, err))
		}
		for _, p := range paths {
			if path, ok := regularFile(filepath.Join(root, p)); ok {
				return path, nil
			}
			tried = append(tried, filepath.Join(root, p))
		}
	} else if err != nil {
		tried = append(tried, fmt.Sprintf("%s: %v", cache, err))
	}
	for _, dir := range ldDefaultDirs(runtime.GOARCH) {
		p := filepath.Join(root, dir, name)
		if path, ok := regularFile(p); ok {
			return path, nil
		}
		tried = append(tried, p)
	}
	return "", fmt.Errorf("%s: %w (looked in the loader's cache and default directories: %v)", name, errNoLibrary, tried)
}

// regularFile resolves symlinks and reports whether path is a regular file.
func regularFile(path string) (string, bool) {
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return "", false
	}
	fi, err := os.Stat(real)
	if err != nil || !fi.Mode().IsRegular() {
		return "", false
	}
	return real, true
}
