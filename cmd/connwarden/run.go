package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/connwarden/connwarden/cmd/connwarden/internal/agent"
	"github.com/connwarden/connwarden/cmd/connwarden/internal/config"
	"github.com/connwarden/connwarden/internal/mounts"
)

func init() { subcommands = append(subcommands, newRunCmd) }

// runFlags binds every setting of `run`; only flags given on the command line
// override the file and environment.
type runFlags struct {
	configPath string
	cfg        config.Config
}

func bindRunFlags(fs *pflag.FlagSet, f *runFlags) {
	d := config.Default()
	fs.StringVar(&f.configPath, "config", "", "config file (default "+config.DefaultFile+" when present)")
	fs.StringVarP(&f.cfg.RulesDir, "rules", "r", "", "directory of rule files (default: the embedded default pack)")
	fs.StringSliceVarP(&f.cfg.Interfaces, "interface", "i", nil, `interface to attach the XDP blocklist to (repeatable; default: those carrying a default route; "none" attaches nothing)`)
	fs.StringVar(&f.cfg.XDPMode, "xdp-mode", d.XDPMode, "XDP attach mode: auto, native or generic")
	fs.StringVar(&f.cfg.PinDir, "pin-dir", d.PinDir, "bpffs directory for the pinned blocklist")
	fs.BoolVar(&f.cfg.Egress, "egress", false, "also refuse local connect()s to blocked addresses (cgroup hooks)")
	fs.StringVar(&f.cfg.CgroupPath, "cgroup", d.CgroupPath, "cgroup v2 directory for --egress")
	fs.BoolVar(&f.cfg.DryRun, "dry-run", false, "run every rule in monitor mode: alert, never block")
	fs.BoolVar(&f.cfg.CleanupOnExit, "cleanup-on-exit", false, "on shutdown detach XDP and remove the pinned blocklist (default: keep protecting the host)")
	fs.IntVar(&f.cfg.RingBufferBytes, "ring-buffer-bytes", d.RingBufferBytes, "kernel ring buffer size (power of two)")
	fs.DurationVar(&f.cfg.GCInterval, "gc-interval", d.GCInterval, "how often expired blocklist entries are deleted")
	fs.StringVar(&f.cfg.LogLevel, "log-level", d.LogLevel, "debug, info, warn or error")
	fs.StringVar(&f.cfg.API.Listen, "api-listen", d.API.Listen, `HTTP API and /metrics address ("" disables)`)
	fs.StringVar(&f.cfg.API.Socket, "api-socket", d.API.Socket, `unix socket for the CLI ("" disables)`)
	fs.StringVar(&f.cfg.API.TokenFile, "api-token-file", "", "file holding the bearer token for mutating API calls (or CONNWARDEN_API_TOKEN)")
	fs.StringVar(&f.cfg.Alerts.Output, "alerts", d.Alerts.Output, `alert log: "stdout" or a file path`)
	fs.StringVar(&f.cfg.Alerts.Syslog, "alerts-syslog", "", "also send alerts as RFC 5424 syslog (unixgram:///dev/log, udp://host:514, tcp://host:601)")
}

// resolve applies defaults < file < environment < flags given.
func (f *runFlags) resolve(fs *pflag.FlagSet) (config.Config, error) {
	c, err := config.Load(f.configPath)
	if err != nil {
		return c, err
	}
	if err := c.ApplyEnv(os.Getenv); err != nil {
		return c, err
	}
	set := func(name string, apply func()) {
		if fs.Changed(name) {
			apply()
		}
	}
	set("rules", func() { c.RulesDir = f.cfg.RulesDir })
	set("interface", func() { c.Interfaces = f.cfg.Interfaces })
	set("xdp-mode", func() { c.XDPMode = f.cfg.XDPMode })
	set("pin-dir", func() { c.PinDir = f.cfg.PinDir })
	set("egress", func() { c.Egress = f.cfg.Egress })
	set("cgroup", func() { c.CgroupPath = f.cfg.CgroupPath })
	set("dry-run", func() { c.DryRun = f.cfg.DryRun })
	set("cleanup-on-exit", func() { c.CleanupOnExit = f.cfg.CleanupOnExit })
	set("ring-buffer-bytes", func() { c.RingBufferBytes = f.cfg.RingBufferBytes })
	set("gc-interval", func() { c.GCInterval = f.cfg.GCInterval })
	set("log-level", func() { c.LogLevel = f.cfg.LogLevel })
	set("api-listen", func() { c.API.Listen = f.cfg.API.Listen })
	set("api-socket", func() { c.API.Socket = f.cfg.API.Socket })
	set("api-token-file", func() { c.API.TokenFile = f.cfg.API.TokenFile })
	set("alerts", func() { c.Alerts.Output = f.cfg.Alerts.Output })
	set("alerts-syslog", func() { c.Alerts.Syslog = f.cfg.Alerts.Syslog })
	if err := c.Validate(); err != nil {
		return c, err
	}
	return c, c.ResolveToken()
}

func newLogger(level string) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, err
	}
	zc := zap.NewProductionConfig()
	zc.Level = zap.NewAtomicLevelAt(lvl)
	zc.EncoderConfig.TimeKey = "time"
	zc.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	zc.Sampling = nil
	return zc.Build()
}

func newRunCmd() *cobra.Command {
	var f runFlags
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the agent: trace, detect, block",
		Long: `Run the agent. With no configuration it uses the embedded default rules,
attaches the XDP blocklist to the interfaces carrying a default route, and serves
the API on loopback and a unix socket. Settings come from defaults, then
/etc/connwarden/config.yaml (or --config), then CONNWARDEN_* variables, then flags.

Signals: SIGTERM/SIGINT stop (the pinned blocklist and XDP stay unless
--cleanup-on-exit); SIGHUP reloads the rules (an invalid set is refused and the
running one stays); SIGUSR1 reopens the alert log file.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := f.resolve(cmd.Flags())
			if err != nil {
				return configError{err}
			}
			log, err := newLogger(cfg.LogLevel)
			if err != nil {
				return configError{err}
			}
			defer log.Sync()
			return runAgent(cmd.Context(), cfg, log)
		},
	}
	bindRunFlags(cmd.Flags(), &f)
	return cmd
}

func runAgent(ctx context.Context, cfg config.Config, log *zap.Logger) error {
	if err := mounts.Ensure(); err != nil {
		return err
	}
	a, err := agent.New(cfg, log)
	if err != nil {
		if errors.Is(err, agent.ErrRules) {
			return configError{err}
		}
		return err
	}
	defer func() {
		if err := a.Close(); err != nil {
			log.Warn("shutdown", zap.Error(err))
		}
		if cfg.CleanupOnExit {
			log.Info("stopped; blocklist and XDP removed")
		} else {
			log.Info("stopped; blocklist stays pinned and attached", zap.String("pins", cfg.PinDir))
		}
	}()

	if ctx == nil {
		ctx = context.Background()
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGUSR1)
	defer signal.Stop(sigs)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case s := <-sigs:
				switch s {
				case syscall.SIGHUP:
					log.Info("SIGHUP: reloading rules")
					a.Reload()
				case syscall.SIGUSR1:
					if err := a.ReopenAlerts(); err != nil {
						log.Error("reopen alert log", zap.Error(err))
					}
				default:
					log.Info("shutting down", zap.String("signal", s.String()))
					cancel()
					return
				}
			}
		}
	}()
	if err := a.Run(ctx); err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	return nil
}
