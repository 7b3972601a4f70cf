package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/connwarden/connwarden/cmd/connwarden/internal/agent"
	"github.com/connwarden/connwarden/detector"
	"github.com/connwarden/connwarden/rules"
)

func init() { subcommands = append(subcommands, newRulesCmd) }

func newRulesCmd() *cobra.Command {
	cmd := requireSubcommand(&cobra.Command{Use: "rules", Short: "Validate, test and describe rule files"})
	cmd.AddCommand(&cobra.Command{
		Use:   "validate [DIR]",
		Short: "Load a rules directory (default: the embedded pack) and print every error",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir := ""
			if len(args) == 1 {
				dir = args[0]
			}
			set, err := agent.LoadRules(dir)
			if err != nil {
				fmt.Fprintln(cmd.ErrOrStderr(), err)
				return configError{errors.New("rules are invalid")}
			}
			enabled := 0
			for _, r := range set.Rules {
				if r.Enabled {
					enabled++
				}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "ok: %d rules (%d enabled) in %d files\n", len(set.Rules), enabled, len(set.Files))
			return nil
		},
	})
	var fixtures string
	test := &cobra.Command{
		Use:   "test [DIR]",
		Short: "Run each rule's fixture events and compare the alerts with the expected ones",
		Long: `Replays every NAME.jsonl in the fixtures directory through a fresh engine and
compares the alerts with NAME.want (one summary line per alert). Without DIR the
embedded default pack is tested against its own fixtures; with DIR the fixtures
are read from DIR/fixtures unless --fixtures says otherwise.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var set *rules.Set
			var err error
			fsys := rules.DefaultFixtures()
			if len(args) == 1 {
				set, err = rules.LoadDir(args[0])
				if fixtures == "" {
					fixtures = filepath.Join(args[0], "fixtures")
				}
			} else {
				set, err = rules.Default()
			}
			if err != nil {
				fmt.Fprintln(cmd.ErrOrStderr(), err)
				return configError{errors.New("rules are invalid")}
			}
			if fixtures != "" {
				fsys = os.DirFS(fixtures)
			}
			res, err := detector.RunFixtures(set, fsys)
			if err != nil {
				return err
			}
			failed := 0
			for _, r := range res {
				if r.Pass() {
					fmt.Fprintf(cmd.OutOrStdout(), "PASS %s (%d alerts)\n", r.Name, len(r.Got))
					continue
				}
				failed++
				fmt.Fprintf(cmd.OutOrStdout(), "FAIL %s\n  want:\n", r.Name)
				for _, w := range r.Want {
					fmt.Fprintf(cmd.OutOrStdout(), "    %s\n", w)
				}
				fmt.Fprintln(cmd.OutOrStdout(), "  got:")
				for _, g := range r.Got {
					fmt.Fprintf(cmd.OutOrStdout(), "    %s\n", g)
				}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%d passed, %d failed\n", len(res)-failed, failed)
			if len(res) == 0 {
				return errors.New("no fixtures found")
			}
			if failed > 0 {
				return fmt.Errorf("%d fixtures failed", failed)
			}
			return nil
		},
	}
	test.Flags().StringVar(&fixtures, "fixtures", "", "fixtures directory (NAME.jsonl + NAME.want)")
	cmd.AddCommand(test)
	cmd.AddCommand(&cobra.Command{
		Use:   "schema",
		Short: "Print the JSON Schema of rule files (for editors)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := cmd.OutOrStdout().Write(rules.JSONSchema())
			return err
		},
	})
	return cmd
}
