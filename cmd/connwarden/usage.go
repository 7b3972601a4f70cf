package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"
)

// isCobraUsage recognises the errors cobra returns for unknown commands and
// wrong argument counts, which it does not type.
func isCobraUsage(err error) bool {
	msg := err.Error()
	for _, p := range []string{"unknown command", "accepts ", "requires at least", "requires at most", "unknown flag", "unknown shorthand flag", "invalid argument"} {
		if strings.HasPrefix(msg, p) || strings.Contains(msg, " "+p) {
			return true
		}
	}
	return false
}

// requireSubcommand makes a command group fail with a usage error (exit 2)
// when called without a known subcommand, instead of printing help and
// exiting 0.
func requireSubcommand(cmd *cobra.Command) *cobra.Command {
	cmd.Args = cobra.ArbitraryArgs
	cmd.RunE = func(c *cobra.Command, args []string) error {
		if len(args) > 0 {
			return usageError{fmt.Errorf("unknown command %q for %q", args[0], c.CommandPath())}
		}
		c.Help()
		return usageError{fmt.Errorf("%s needs a subcommand", c.CommandPath())}
	}
	return cmd
}
