package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/connwarden/connwarden/cmd/connwarden/internal/agent"
	"github.com/connwarden/connwarden/detector"
)

func init() { subcommands = append(subcommands, newReplayCmd) }

func newReplayCmd() *cobra.Command {
	var dir string
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "replay [--rules DIR] EVENTS.jsonl",
		Short: "Run recorded events through the rules; print alerts and decisions as JSON lines",
		Long: `Replays events recorded by 'connwarden record' (JSON lines; "-" reads stdin)
through a fresh engine and prints its alerts and block decisions as JSON lines.
Time comes from the events, so the output is the same on every run.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			set, err := agent.LoadRules(dir)
			if err != nil {
				fmt.Fprintln(cmd.ErrOrStderr(), err)
				return configError{errors.New("rules are invalid")}
			}
			var in io.Reader = os.Stdin
			if args[0] != "-" {
				f, err := os.Open(args[0])
				if err != nil {
					return err
				}
				defer f.Close()
				in = f
			}
			out := bufio.NewWriter(cmd.OutOrStdout())
			defer out.Flush()
			return detector.Replay(bufio.NewReader(in), set, out, detector.Options{DryRun: dryRun})
		},
	}
	cmd.Flags().StringVarP(&dir, "rules", "r", "", "rules directory (default: the embedded pack)")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "treat every rule as monitor-only")
	return cmd
}
