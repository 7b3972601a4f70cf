package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/connwarden/connwarden/bpf"
	"github.com/connwarden/connwarden/cmd/connwarden/internal/agent"
	"github.com/connwarden/connwarden/cmd/connwarden/internal/api"
	"github.com/connwarden/connwarden/cmd/connwarden/internal/client"
	"github.com/connwarden/connwarden/cmd/connwarden/internal/config"
	"github.com/connwarden/connwarden/internal/mounts"
)

func init() {
	subcommands = append(subcommands, newBlocklistCmd, newStatsCmd, newStatusCmd)
}

// target says how CLI commands reach the blocklist: the agent's API, or the
// pinned maps directly when no agent runs.
type target struct {
	socket, url, token, pinDir string
}

func (t *target) bind(cmd *cobra.Command) {
	d := config.Default()
	cmd.PersistentFlags().StringVar(&t.socket, "socket", d.API.Socket, "agent API unix socket")
	cmd.PersistentFlags().StringVar(&t.url, "api", "", "agent API URL instead of the socket (token from CONNWARDEN_API_TOKEN)")
	cmd.PersistentFlags().StringVar(&t.pinDir, "pin-dir", d.PinDir, "pinned blocklist, used directly when no agent answers")
}

func (t *target) client() *client.Client {
	if t.url != "" {
		return client.New(t.url, os.Getenv("CONNWARDEN_API_TOKEN"))
	}
	return client.New(t.socket, "")
}

// pinned opens the pinned blocklist (no agent running). It refuses to create
// one: without pins there is nothing to manage.
func (t *target) pinned() (*bpf.Blocklist, error) {
	if err := mounts.Ensure(); err != nil {
		return nil, err
	}
	if _, err := os.Stat(t.pinDir); err != nil {
		return nil, fmt.Errorf("no agent answers and no pinned blocklist at %s", t.pinDir)
	}
	return bpf.OpenBlocklist(bpf.BlocklistOptions{PinDir: t.pinDir})
}

func printEntries(w io.Writer, ents []api.BlockEntry) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ADDRESS\tEXPIRES\tREASON\tHITS")
	for _, e := range ents {
		exp := "never"
		if e.Expires != nil {
			exp = fmt.Sprintf("%s (in %s)", e.Expires.Format(time.RFC3339), time.Until(*e.Expires).Round(time.Second))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\n", e.Address, exp, e.Reason, e.Hits)
	}
	tw.Flush()
}

func newBlocklistCmd() *cobra.Command {
	var t target
	var asJSON bool
	cmd := requireSubcommand(&cobra.Command{Use: "blocklist", Short: "List, add, delete and flush blocklist entries"})
	t.bind(cmd)
	list := &cobra.Command{
		Use: "list", Short: "List entries with expiry, reason and hits", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var ents []api.BlockEntry
			err := t.client().Do("GET", "/api/v1/blocklist", nil, &ents)
			if errors.Is(err, client.ErrNoAgent) {
				bl, perr := t.pinned()
				if perr != nil {
					return perr
				}
				defer bl.Close()
				raw, lerr := bl.List()
				if lerr != nil {
					return lerr
				}
				ents, err = agent.APIEntries(raw), nil
			}
			if err != nil {
				return err
			}
			if asJSON {
				return json.NewEncoder(cmd.OutOrStdout()).Encode(ents)
			}
			printEntries(cmd.OutOrStdout(), ents)
			return nil
		},
	}
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	var ttl time.Duration
	var reason string
	add := &cobra.Command{
		Use: "add ADDRESS|CIDR", Short: "Block an address or prefix", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := api.ParsePrefix(args[0])
			if err != nil {
				return usageError{fmt.Errorf("invalid address %q: %w", args[0], err)}
			}
			req := api.BlockRequest{Address: p.String(), Reason: reason}
			if ttl > 0 {
				req.TTL = ttl.String()
			}
			var res api.Result
			err = t.client().Do("POST", "/api/v1/blocklist", req, &res)
			if errors.Is(err, client.ErrNoAgent) {
				bl, perr := t.pinned()
				if perr != nil {
					return perr
				}
				defer bl.Close()
				if allowed, aerr := bl.Allowed(); aerr == nil {
					for _, q := range allowed {
						if q.Overlaps(p) {
							return fmt.Errorf("%s overlaps the allowlisted %s; the kernel would not drop it", p, q)
						}
					}
				}
				err = bl.Block(p, ttl, bpf.ReasonManual)
				res.Message = fmt.Sprintf("%s added to the pinned blocklist (no agent running)", p)
			}
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), res.Message)
			return nil
		},
	}
	add.Flags().DurationVar(&ttl, "ttl", 0, "expire after this long (default: never)")
	add.Flags().StringVar(&reason, "reason", "cli", "why (shown in logs)")
	del := &cobra.Command{
		Use: "del ADDRESS|CIDR", Aliases: []string{"delete", "rm"}, Short: "Remove an entry", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := api.ParsePrefix(args[0])
			if err != nil {
				return usageError{fmt.Errorf("invalid address %q: %w", args[0], err)}
			}
			var res api.Result
			err = t.client().Do("DELETE", "/api/v1/blocklist/"+p.String(), nil, &res)
			if errors.Is(err, client.ErrNoAgent) {
				bl, perr := t.pinned()
				if perr != nil {
					return perr
				}
				defer bl.Close()
				err = bl.Unblock(p)
				res.Message = fmt.Sprintf("%s removed from the pinned blocklist (no agent running)", p)
			}
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), res.Message)
			return nil
		},
	}
	flush := &cobra.Command{
		Use: "flush", Short: "Remove every entry", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c := t.client()
			var ents []api.BlockEntry
			err := c.Do("GET", "/api/v1/blocklist", nil, &ents)
			if errors.Is(err, client.ErrNoAgent) {
				bl, perr := t.pinned()
				if perr != nil {
					return perr
				}
				defer bl.Close()
				raw, lerr := bl.List()
				if lerr != nil {
					return lerr
				}
				for _, e := range raw {
					if err := bl.Unblock(e.Prefix); err != nil && !errors.Is(err, bpf.ErrNotBlocked) {
						return err
					}
				}
				fmt.Fprintf(cmd.OutOrStdout(), "removed %d entries from the pinned blocklist\n", len(raw))
				return nil
			}
			if err != nil {
				return err
			}
			for _, e := range ents {
				if err := c.Do("DELETE", "/api/v1/blocklist/"+e.Address, nil, nil); err != nil {
					var ae *client.APIError
					if !errors.As(err, &ae) || ae.Status != 404 {
						return err
					}
				}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed %d entries\n", len(ents))
			return nil
		},
	}
	cmd.AddCommand(list, add, del, flush)
	return cmd
}

func newStatsCmd() *cobra.Command {
	var t target
	cmd := &cobra.Command{
		Use: "stats", Short: "Print packet, event, alert and block counters as JSON", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var raw []byte
			err := t.client().Do("GET", "/api/v1/stats", nil, &raw)
			if errors.Is(err, client.ErrNoAgent) {
				bl, perr := t.pinned()
				if perr != nil {
					return perr
				}
				defer bl.Close()
				st, serr := bl.Stats()
				if serr != nil {
					return serr
				}
				n, _ := bl.Len()
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(map[string]any{
					"agent_running": false, "packets_processed": st.Passed + st.Dropped,
					"packets_passed": st.Passed, "packets_dropped": st.Dropped, "active_blocks": n,
				})
			}
			if err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(raw)
			return err
		},
	}
	t.bind(cmd)
	return cmd
}

func newStatusCmd() *cobra.Command {
	var t target
	cmd := &cobra.Command{
		Use: "status", Short: "Say whether an agent runs, is ready, and what it loaded", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c := t.client()
			out := cmd.OutOrStdout()
			if err := c.Do("GET", "/healthz", nil, nil); err != nil {
				if errors.Is(err, client.ErrNoAgent) {
					fmt.Fprintln(out, "agent: not running")
					if _, serr := os.Stat(t.pinDir); serr == nil {
						fmt.Fprintf(out, "blocklist: pinned at %s (still enforced in the kernel)\n", t.pinDir)
					}
					return errors.New("no agent is running")
				}
				return err
			}
			ready := "ready"
			if err := c.Do("GET", "/readyz", nil, nil); err != nil {
				ready = "not ready: " + err.Error()
			}
			var st api.Stats
			if err := c.Do("GET", "/api/v1/stats", nil, &st); err != nil {
				return err
			}
			var rs struct {
				Source string `json:"source"`
				Rules  []struct {
					Enabled bool `json:"enabled"`
				} `json:"rules"`
			}
			if err := c.Do("GET", "/api/v1/rules", nil, &rs); err != nil {
				return err
			}
			enabled := 0
			for _, r := range rs.Rules {
				if r.Enabled {
					enabled++
				}
			}
			fmt.Fprintf(out, "agent: running, %s\nrules: %d enabled of %d (%s)\n", ready, enabled, len(rs.Rules), rs.Source)
			fmt.Fprintf(out, "events: %d received, %d lost\nalerts: %d\nblocklist: %d of %d entries\npackets: %d passed, %d dropped\n",
				st.EventsReceived, st.EventsLost, st.Alerts, st.ActiveBlocks, st.BlockCapacity, st.PacketsPassed, st.PacketsDropped)
			return nil
		},
	}
	t.bind(cmd)
	return cmd
}
