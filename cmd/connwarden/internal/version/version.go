// Package version holds build information set by the linker (see Makefile).
package version

import (
	"runtime/debug"
)

// Set with -ldflags -X by `make build`.
var (
	Version = "dev"
	Commit  = "unknown"
)

// Info is what `connwarden version` and connwarden_build_info report.
type Info struct {
	Version   string `json:"version"`
	Commit    string `json:"commit"`
	GoVersion string `json:"go_version"`
	EBPF      string `json:"cilium_ebpf_version"`
}

// Get returns the build information of the running binary.
func Get() Info {
	info := Info{Version: Version, Commit: Commit, EBPF: "unknown"}
	if bi, ok := debug.ReadBuildInfo(); ok {
		info.GoVersion = bi.GoVersion
		for _, d := range bi.Deps {
			if d.Path == "github.com/cilium/ebpf" {
				info.EBPF = d.Version
			}
		}
		if info.Commit == "unknown" {
			for _, s := range bi.Settings {
				if s.Key == "vcs.revision" && len(s.Value) >= 7 {
					info.Commit = s.Value[:7]
				}
			}
		}
	}
	return info
}
