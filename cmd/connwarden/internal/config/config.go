// Package config holds the agent's settings and resolves them from, in rising
// precedence: built-in defaults, the config file (/etc/connwarden/config.yaml
// when present, or --config), CONNWARDEN_* environment variables, and flags.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// DefaultFile is read when present and no --config is given.
const DefaultFile = "/etc/connwarden/config.yaml"

// DefaultAPIPort: Prometheus' exporter range 9100-9999 is fully allocated,
// so, like exporters registered since, we take a port above it; 9090 (the
// Prometheus server) is never ours.
const DefaultAPIPort = 10077

// Config is every setting of `connwarden run`. YAML keys are the field tags;
// environment variables are CONNWARDEN_ plus the key upper-cased with dots as
// underscores (CONNWARDEN_API_LISTEN).
type Config struct {
	// RulesDir holds *.yaml rule files; empty means the embedded default pack.
	RulesDir string `yaml:"rules_dir"`
	// Interfaces to attach the XDP blocklist to; empty means every interface
	// carrying a default route.
	Interfaces []string `yaml:"interfaces"`
	// XDPMode is auto (native, falling back to generic), native or generic.
	XDPMode string `yaml:"xdp_mode"`
	// PinDir is where the blocklist maps and XDP links are pinned.
	PinDir string `yaml:"pin_dir"`
	// Egress also refuses local connect()s to blocked addresses (cgroup hooks).
	Egress bool `yaml:"egress"`
	// CgroupPath is the cgroup v2 mount used for egress enforcement.
	CgroupPath string `yaml:"cgroup_path"`
	// DryRun runs every rule in monitor mode.
	DryRun bool `yaml:"dry_run"`
	// CleanupOnExit unpins and detaches everything on shutdown (by default the
	// blocklist stays pinned and attached so the host stays protected).
	CleanupOnExit bool `yaml:"cleanup_on_exit"`
	// RingBufferBytes is the tracer's ring buffer size.
	RingBufferBytes int `yaml:"ring_buffer_bytes"`
	// GCInterval is how often expired blocklist entries are deleted.
	GCInterval time.Duration `yaml:"gc_interval"`
	LogLevel   string        `yaml:"log_level"`
	// ShortSession: inbound connections that end within it of being
	// established are reported (event kind inbound_short); 0 reports none.
	ShortSession time.Duration `yaml:"short_session"`
	Auth         Auth          `yaml:"auth"`
	API          API           `yaml:"api"`
	Alerts       Alerts        `yaml:"alerts"`
}

// Auth is the authentication source: uprobes on libpam.
type Auth struct {
	// PAM is auto (probe libpam when it is found, run without it otherwise,
	// saying so once) or off.
	PAM string `yaml:"pam"`
	// Library is the libpam file to probe; empty finds libpam.so.0 below
	// Root the way the dynamic loader would.
	Library string `yaml:"library"`
	// Root is the host's file system as the agent sees it: "/" on a host,
	// the host mount (e.g. /host) in a container.
	Root string `yaml:"root"`
}

// API settings.
type API struct {
	// Listen is the TCP address of the HTTP API and /metrics; "" disables it.
	Listen string `yaml:"listen"`
	// Socket is a unix socket path for the CLI; "" disables it.
	Socket string `yaml:"socket"`
	// TokenFile holds the bearer token for mutating endpoints. The token may
	// also come from CONNWARDEN_API_TOKEN. Without a token, mutating endpoints
	// refuse every request.
	TokenFile string `yaml:"token_file"`
	Token     string `yaml:"-"`
}

// Alerts settings.
type Alerts struct {
	// Output is "stdout" or a file path for the JSON-lines alert log.
	Output string `yaml:"output"`
	// Syslog, when set, also sends each alert as RFC 5424 to this address
	// ("unixgram:///dev/log", "udp://127.0.0.1:514", "tcp://host:port").
	Syslog string `yaml:"syslog"`
}

// Default returns the built-in settings.
func Default() Config {
	return Config{
		XDPMode:         "auto",
		PinDir:          "/sys/fs/bpf/connwarden",
		CgroupPath:      "/sys/fs/cgroup/unified",
		RingBufferBytes: 4 << 20,
		GCInterval:      10 * time.Second,
		LogLevel:        "info",
		ShortSession:    5 * time.Second,
		Auth:            Auth{PAM: "auto", Root: "/"},
		API: API{
			Listen: fmt.Sprintf("127.0.0.1:%d", DefaultAPIPort),
			Socket: "/run/connwarden/api.sock",
		},
		Alerts: Alerts{Output: "stdout"},
	}
}

// Load reads the config file at path over the defaults. When path is ""
// DefaultFile is read if it exists. Unknown keys are errors.
func Load(path string) (Config, error) {
	c := Default()
	explicit := path != ""
	if !explicit {
		path = DefaultFile
	}
	b, err := os.ReadFile(path)
	if err != nil {
		if !explicit && errors.Is(err, fs.ErrNotExist) {
			return c, nil
		}
		return c, fmt.Errorf("read config: %w", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return c, fmt.Errorf("config %s: %w", path, err)
	}
	return c, c.Validate()
}

// ApplyEnv overrides settings from CONNWARDEN_* variables read with getenv.
func (c *Config) ApplyEnv(getenv func(string) string) error {
	var errs []error
	str := func(key string, dst *string) {
		if v := getenv(key); v != "" {
			*dst = v
		}
	}
	boolean := func(key string, dst *bool) {
		if v := getenv(key); v != "" {
			b, err := strconv.ParseBool(v)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: want true or false", key, v))
				return
			}
			*dst = b
		}
	}
	str("CONNWARDEN_RULES_DIR", &c.RulesDir)
	if v := getenv("CONNWARDEN_INTERFACES"); v != "" {
		c.Interfaces = strings.Split(v, ",")
	}
	str("CONNWARDEN_XDP_MODE", &c.XDPMode)
	str("CONNWARDEN_PIN_DIR", &c.PinDir)
	boolean("CONNWARDEN_EGRESS", &c.Egress)
	str("CONNWARDEN_CGROUP_PATH", &c.CgroupPath)
	boolean("CONNWARDEN_DRY_RUN", &c.DryRun)
	boolean("CONNWARDEN_CLEANUP_ON_EXIT", &c.CleanupOnExit)
	if v := getenv("CONNWARDEN_RING_BUFFER_BYTES"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("CONNWARDEN_RING_BUFFER_BYTES=%q: want a number of bytes", v))
		}
		c.RingBufferBytes = n
	}
	if v := getenv("CONNWARDEN_GC_INTERVAL"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("CONNWARDEN_GC_INTERVAL=%q: want a duration like 10s", v))
		}
		c.GCInterval = d
	}
	str("CONNWARDEN_LOG_LEVEL", &c.LogLevel)
	if v := getenv("CONNWARDEN_SHORT_SESSION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("CONNWARDEN_SHORT_SESSION=%q: want a duration like 5s, or 0 to report none", v))
		}
		c.ShortSession = d
	}
	str("CONNWARDEN_AUTH_PAM", &c.Auth.PAM)
	str("CONNWARDEN_AUTH_LIBRARY", &c.Auth.Library)
	str("CONNWARDEN_AUTH_ROOT", &c.Auth.Root)
	str("CONNWARDEN_API_LISTEN", &c.API.Listen)
	str("CONNWARDEN_API_SOCKET", &c.API.Socket)
	str("CONNWARDEN_API_TOKEN_FILE", &c.API.TokenFile)
	str("CONNWARDEN_API_TOKEN", &c.API.Token)
	str("CONNWARDEN_ALERTS_OUTPUT", &c.Alerts.Output)
	str("CONNWARDEN_ALERTS_SYSLOG", &c.Alerts.Syslog)
	return errors.Join(errs...)
}

// Validate checks values that a typo could make dangerous or meaningless.
func (c *Config) Validate() error {
	var errs []error
	switch c.XDPMode {
	case "auto", "native", "generic":
	default:
		errs = append(errs, fmt.Errorf("xdp_mode %q: valid are auto, native, generic", c.XDPMode))
	}
	if c.RingBufferBytes < 4096 || c.RingBufferBytes&(c.RingBufferBytes-1) != 0 {
		errs = append(errs, fmt.Errorf("ring_buffer_bytes %d: want a power of two of at least 4096", c.RingBufferBytes))
	}
	if c.GCInterval <= 0 {
		errs = append(errs, fmt.Errorf("gc_interval %v: want a positive duration", c.GCInterval))
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("log_level %q: valid are debug, info, warn, error", c.LogLevel))
	}
	if c.ShortSession < 0 || c.ShortSession > time.Hour {
		errs = append(errs, fmt.Errorf("short_session %v: want 0 (report none) up to 1h", c.ShortSession))
	}
	switch c.Auth.PAM {
	case "auto", "off":
	default:
		errs = append(errs, fmt.Errorf("auth.pam %q: valid are auto, off", c.Auth.PAM))
	}
	if c.PinDir == "" {
		errs = append(errs, errors.New("pin_dir is empty"))
	}
	return errors.Join(errs...)
}

// ResolveToken fills API.Token from TokenFile when no token came from the
// environment. Surrounding white space is trimmed; an empty token stays empty
// and then authenticates nothing.
func (c *Config) ResolveToken() error {
	if c.API.Token != "" || c.API.TokenFile == "" {
		return nil
	}
	b, err := os.ReadFile(c.API.TokenFile)
	if err != nil {
		return fmt.Errorf("api token: %w", err)
	}
	c.API.Token = strings.TrimSpace(string(b))
	return nil
}
