package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/connwarden/connwarden/bpf"
	"github.com/connwarden/connwarden/detector/event"
	"github.com/connwarden/connwarden/internal/mounts"
)

func init() { subcommands = append(subcommands, newRecordCmd) }

func newRecordCmd() *cobra.Command {
	var out string
	var dur time.Duration
	var count int
	cmd := &cobra.Command{
		Use:   "record [-o FILE] [--duration D] [--count N]",
		Short: "Write live kernel connection events as JSON lines, for replay",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := mounts.Ensure(); err != nil {
				return err
			}
			w := bufio.NewWriter(cmd.OutOrStdout())
			if out != "" && out != "-" {
				f, err := os.Create(out)
				if err != nil {
					return err
				}
				defer f.Close()
				w = bufio.NewWriter(f)
			}
			defer w.Flush()
			tr, err := bpf.NewTracer(bpf.TracerOptions{ExcludeTGID: uint32(os.Getpid()), ReadTimeout: 10 * time.Millisecond})
			if err != nil {
				return fmt.Errorf("tracer: %w", err)
			}
			// Said once attached, so whoever started us knows events from now
			// on are recorded.
			fmt.Fprintf(cmd.ErrOrStderr(), "recording: %s\n", tr.Hooks())
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			if dur > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, dur)
				defer cancel()
			}
			go func() { <-ctx.Done(); tr.Close() }()
			defer tr.Close()
			enc := json.NewEncoder(w)
			var ev event.Event
			n := 0
			for count <= 0 || n < count {
				if err := tr.Read(&ev); err != nil {
					if errors.Is(err, bpf.ErrClosed) {
						break
					}
					if errors.Is(err, bpf.ErrMalformedRecord) {
						continue
					}
					return err
				}
				if err := enc.Encode(ev); err != nil {
					return err
				}
				n++
			}
			lost, _ := tr.Lost()
			fmt.Fprintf(cmd.ErrOrStderr(), "recorded %d events (%d lost in the kernel)\n", n, lost)
			return nil
		},
	}
	cmd.Flags().StringVarP(&out, "output", "o", "", "file to write (default stdout)")
	cmd.Flags().DurationVar(&dur, "duration", 0, "stop after this long (default: until interrupted)")
	cmd.Flags().IntVar(&count, "count", 0, "stop after this many events")
	return cmd
}
