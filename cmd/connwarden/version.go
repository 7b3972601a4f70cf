package main

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/connwarden/connwarden/cmd/connwarden/internal/version"
)

func newVersionCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print version, commit, Go and cilium/ebpf versions",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			v := version.Get()
			if asJSON {
				return json.NewEncoder(cmd.OutOrStdout()).Encode(v)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "connwarden %s (commit %s, %s, cilium/ebpf %s)\n", v.Version, v.Commit, v.GoVersion, v.EBPF)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	return cmd
}
