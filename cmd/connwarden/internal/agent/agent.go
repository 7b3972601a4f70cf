// Package agent wires connwarden together: the kernel tracer feeds the
// detection engine, whose block decisions go into the pinned XDP blocklist;
// alerts go to the SIEM log, figures to Prometheus, and the management API
// serves all of it.
package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/connwarden/connwarden/bpf"
	"github.com/connwarden/connwarden/cmd/connwarden/internal/alertlog"
	"github.com/connwarden/connwarden/cmd/connwarden/internal/api"
	"github.com/connwarden/connwarden/cmd/connwarden/internal/config"
	"github.com/connwarden/connwarden/cmd/connwarden/internal/hostnet"
	"github.com/connwarden/connwarden/cmd/connwarden/internal/metrics"
	"github.com/connwarden/connwarden/detector"
	"github.com/connwarden/connwarden/detector/event"
	"github.com/connwarden/connwarden/rules"
)

// ErrRules wraps a rule set that does not load: the caller exits with the
// configuration error code rather than a generic failure.
var ErrRules = errors.New("invalid rules")

// DefaultReadTimeout bounds how long an event can wait in the ring buffer
// before the agent sees it (events are submitted without wakeups until 64 KiB
// pile up): it is most of the detection-to-block latency on a quiet host.
const DefaultReadTimeout = 2 * time.Millisecond

// recentAlerts is how many alerts GET /api/v1/alerts can return.
const recentAlerts = 1000

// Agent is a running connwarden.
type Agent struct {
	cfg      config.Config
	log      *zap.Logger
	bl       *bpf.Blocklist
	tr       *bpf.Tracer
	eng      *detector.Engine
	met      *metrics.Metrics
	alerts   *alertlog.Writer
	hostname string

	protected []netip.Prefix
	attached  []bpf.Attachment

	reloadMu   sync.Mutex
	rulesFiles []string
	rulesPrint string // fingerprint of the rules directory

	recentMu sync.Mutex
	recent   [][]byte // ring of alert JSON lines
	recentAt int

	received  atomic.Uint64
	malformed atomic.Uint64
	lost      atomic.Uint64
	alertsN   atomic.Uint64
	decisions sync.Map // [2]string -> *atomic.Uint64
	ready     atomic.Bool
	wallDelta int64 // wall ns - monotonic ns

	// Set by the blocker for the alert that follows on the same goroutine.
	lastBlockErr error

	apiServers []*http.Server
	closeOnce  sync.Once
}

// MonoNow is the kernel's CLOCK_MONOTONIC in ns, the clock of event
// timestamps (bpf_ktime_get_ns).
func MonoNow() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Nano())
}

// LoadRules loads the directory, or the embedded default pack when dir is "".
func LoadRules(dir string) (*rules.Set, error) {
	if dir == "" {
		return rules.Default()
	}
	return rules.LoadDir(dir)
}

// New loads the rules, opens (or adopts) the pinned blocklist, attaches XDP,
// loads the tracer and builds the engine. On error everything already opened
// is closed again; pins that existed before stay.
func New(cfg config.Config, log *zap.Logger) (_ *Agent, err error) {
	a := &Agent{cfg: cfg, log: log, recent: make([][]byte, recentAlerts)}
	a.hostname, _ = os.Hostname()
	a.wallDelta = time.Now().UnixNano() - int64(MonoNow())
	defer func() {
		if err != nil {
			a.Close()
		}
	}()

	set, err := LoadRules(cfg.RulesDir)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrRules, err)
	}
	a.rulesFiles = set.Files
	a.rulesPrint = fingerprint(cfg.RulesDir)

	if a.protected, err = hostnet.ProtectedPrefixes(); err != nil {
		return nil, err
	}
	a.met = metrics.New(a.snapshot)

	var syslog *alertlog.Syslog
	if cfg.Alerts.Syslog != "" {
		if syslog, err = alertlog.DialSyslog(cfg.Alerts.Syslog); err != nil {
			return nil, err
		}
	}
	if a.alerts, err = alertlog.Open(cfg.Alerts.Output, syslog); err != nil {
		return nil, err
	}

	if a.bl, err = bpf.OpenBlocklist(bpf.BlocklistOptions{PinDir: cfg.PinDir, Logger: log.Named("blocklist")}); err != nil {
		return nil, fmt.Errorf("open blocklist: %w", err)
	}
	if err := a.syncAllowlist(set); err != nil {
		return nil, err
	}
	if err := a.attach(); err != nil {
		return nil, err
	}
	if cfg.Egress {
		if err := a.bl.EnableEgress(cfg.CgroupPath); err != nil {
			return nil, fmt.Errorf("egress: %w", err)
		}
	}

	a.eng, err = detector.New(set, detector.Options{
		Blocker:        (*blocker)(a),
		OnAlert:        a.onAlert,
		Logger:         log,
		ExtraAllowlist: a.protected,
		DryRun:         cfg.DryRun,
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrRules, err)
	}
	a.met.ObserveReload(true, time.Now())

	a.tr, err = bpf.NewTracer(bpf.TracerOptions{
		RingBufferBytes: cfg.RingBufferBytes,
		ReadTimeout:     DefaultReadTimeout,
		ShortSession:    shortSession(cfg.ShortSession),
		PAM: bpf.PAMOptions{
			Disabled: cfg.Auth.PAM == "off",
			Library:  cfg.Auth.Library,
			Root:     cfg.Auth.Root,
		},
		ExcludeTGID: uint32(os.Getpid()),
		Logger:      log,
	})
	if err != nil {
		return nil, fmt.Errorf("tracer: %w", err)
	}
	if a.tr.Hooks().Auth.Err == nil {
		a.met.AuthSourceUp.Set(1)
	}
	return a, nil
}

// syncAllowlist makes the kernel allowlist exactly the protected prefixes
// plus the rule set's allowlist, so nothing written into the shared maps can
// cut the host off, and a prefix dropped from the rules stops being allowed.
func (a *Agent) syncAllowlist(set *rules.Set) error {
	want := slices.Clone(a.protected)
	if set.Allowlist != nil {
		want = append(want, set.Allowlist.Prefixes()...)
	}
	have, err := a.bl.Allowed()
	if err != nil {
		return fmt.Errorf("read allowlist: %w", err)
	}
	for _, p := range have {
		if !slices.Contains(want, p) {
			if err := a.bl.Disallow(p); err != nil && !errors.Is(err, bpf.ErrNotAllowed) {
				return fmt.Errorf("allowlist: remove %s: %w", p, err)
			}
		}
	}
	for _, p := range want {
		if err := a.bl.Allow(p); err != nil {
			return fmt.Errorf("allowlist: add %s: %w", p, err)
		}
	}
	return nil
}

func (a *Agent) attach() error {
	ifaces := a.cfg.Interfaces
	if len(ifaces) == 1 && ifaces[0] == "none" {
		a.log.Info("XDP not attached (--interface none): detection and egress only")
		return nil
	}
	if len(ifaces) == 0 {
		var err error
		if ifaces, err = hostnet.DefaultRouteInterfaces(); err != nil {
			return err
		}
		if len(ifaces) == 0 {
			a.log.Warn("no interface carries a default route; XDP is not attached (name interfaces with --interface)")
		}
	}
	mode := map[string]bpf.AttachMode{"auto": bpf.AttachAuto, "native": bpf.AttachNative, "generic": bpf.AttachGeneric}[a.cfg.XDPMode]
	for _, ifname := range ifaces {
		if _, err := a.bl.Attach(ifname, mode); err != nil {
			return fmt.Errorf("attach xdp to %s: %w", ifname, err)
		}
	}
	a.attached = a.bl.Attached()
	return nil
}

// Summary is the one start-up line's content.
func (a *Agent) Summary() []zap.Field {
	var ifs []string
	for _, at := range a.attached {
		ifs = append(ifs, at.Interface+"/"+at.Mode.String())
	}
	n := 0
	for _, r := range a.eng.Rules() {
		if r.Enabled {
			n++
		}
	}
	src := a.cfg.RulesDir
	if src == "" {
		src = "embedded default pack"
	}
	return []zap.Field{
		zap.String("hooks", a.tr.Hooks().String()),
		zap.Strings("xdp", ifs),
		zap.Bool("egress", a.cfg.Egress),
		zap.Int("rules_enabled", n),
		zap.String("rules", src),
		zap.String("api", a.cfg.API.Listen),
		zap.String("socket", a.cfg.API.Socket),
		zap.String("pins", a.bl.PinDir()),
		zap.Bool("dry_run", a.cfg.DryRun),
	}
}

// Run serves until ctx is cancelled: the event loop, housekeeping, the API.
func (a *Agent) Run(ctx context.Context) error {
	srvErr := make(chan error, 2)
	if err := a.serveAPI(srvErr); err != nil {
		return err
	}
	a.log.Info("connwarden started", a.Summary()...)
	a.ready.Store(true)

	loopDone := make(chan error, 1)
	go func() { loopDone <- a.eventLoop() }()

	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	gc := time.NewTicker(a.cfg.GCInterval)
	defer gc.Stop()
	watch := time.NewTicker(2 * time.Second)
	defer watch.Stop()
	var lastLost uint64
	for {
		select {
		case <-ctx.Done():
			a.ready.Store(false)
			return nil
		case err := <-loopDone:
			return fmt.Errorf("event loop: %w", err)
		case err := <-srvErr:
			return fmt.Errorf("api: %w", err)
		case <-tick.C:
			now := MonoNow()
			if l, err := a.tr.Lost(); err == nil && l > lastLost {
				a.eng.RecordLoss(now, l-lastLost)
				a.lost.Store(l)
				lastLost = l
			}
			a.eng.Advance(now)
		case <-gc.C:
			if n, err := a.bl.GC(); err != nil {
				a.log.Warn("blocklist gc", zap.Error(err))
			} else if n > 0 {
				a.log.Debug("blocklist gc", zap.Int("expired", n))
			}
		case <-watch.C:
			if a.cfg.RulesDir != "" {
				if fp := fingerprint(a.cfg.RulesDir); fp != a.currentPrint() {
					a.log.Info("rules directory changed, reloading", zap.String("dir", a.cfg.RulesDir))
					a.Reload() // logs and counts its own outcome
				}
			}
		}
	}
}

func (a *Agent) eventLoop() error {
	var ev event.Event
	var n uint64
	for {
		err := a.tr.Read(&ev)
		switch {
		case err == nil:
		case errors.Is(err, bpf.ErrClosed):
			return nil
		case errors.Is(err, bpf.ErrMalformedRecord):
			a.malformed.Add(1)
			continue
		default:
			return err
		}
		n++
		a.received.Store(n)
		if n&63 == 0 { // sample the engine's cost without timing every event
			t0 := time.Now()
			a.eng.Process(&ev)
			a.met.EngineSeconds.Observe(time.Since(t0).Seconds())
		} else {
			a.eng.Process(&ev)
		}
	}
}

func (a *Agent) currentPrint() string {
	a.reloadMu.Lock()
	defer a.reloadMu.Unlock()
	return a.rulesPrint
}

// fingerprint summarises a rules directory (names, sizes, mtimes) so a
// change is noticed without inotify.
func fingerprint(dir string) string {
	if dir == "" {
		return ""
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return "error:" + err.Error()
	}
	var b strings.Builder
	for _, e := range ents {
		if info, err := e.Info(); err == nil {
			fmt.Fprintf(&b, "%s:%d:%d;", e.Name(), info.Size(), info.ModTime().UnixNano())
		}
	}
	return b.String()
}

// Reload validates the rules directory and swaps it in; on any error the
// running rules stay and the error is returned (and logged).
func (a *Agent) Reload() error {
	a.reloadMu.Lock()
	defer a.reloadMu.Unlock()
	a.rulesPrint = fingerprint(a.cfg.RulesDir)
	set, err := LoadRules(a.cfg.RulesDir)
	if err == nil {
		err = a.eng.Reload(set)
	}
	if err != nil {
		a.met.ObserveReload(false, time.Now())
		a.log.Error("rules reload refused; the running rules stay", zap.Error(err))
		return err
	}
	if err := a.syncAllowlist(set); err != nil {
		a.log.Error("allowlist sync after reload", zap.Error(err))
	}
	a.rulesFiles = set.Files
	a.met.ObserveReload(true, time.Now())
	a.log.Info("rules reloaded", zap.Int("rules", len(set.Rules)), zap.Strings("files", set.Files))
	return nil
}

// Handler is the API handler (for tests and embedding).
func (a *Agent) Handler() http.Handler {
	return api.New((*backend)(a), a.cfg.API.Token, a.met.Handler(), a.log.Named("api"))
}

// Engine is the running detection engine.
func (a *Agent) Engine() *detector.Engine { return a.eng }

// ReopenAlerts reopens the alert log file (SIGUSR1, after logrotate).
func (a *Agent) ReopenAlerts() error { return a.alerts.Reopen() }

func (a *Agent) wall(ts uint64) time.Time { return time.Unix(0, int64(ts)+a.wallDelta).UTC() }

func (a *Agent) onAlert(al *detector.Alert) {
	var berr error
	if al.Decision != nil {
		berr, a.lastBlockErr = a.lastBlockErr, nil
	}
	rec := toRecord(al, a.wall, a.hostname, berr)
	a.alertsN.Add(1)
	if err := a.alerts.Write(rec); err != nil {
		a.log.Error("write alert", zap.Error(err))
	}
	if b, err := json.Marshal(rec); err == nil {
		a.recentMu.Lock()
		a.recent[a.recentAt%len(a.recent)] = b
		a.recentAt++
		a.recentMu.Unlock()
	}
}

func (a *Agent) countDecision(action, outcome string) {
	v, _ := a.decisions.LoadOrStore([2]string{action, outcome}, new(atomic.Uint64))
	v.(*atomic.Uint64).Add(1)
}

// blocker carries the engine's decisions into the kernel blocklist.
type blocker Agent

func (b *blocker) Block(d detector.Decision) error {
	a := (*Agent)(b)
	err := a.bl.Block(d.Prefix, d.TTL, bpf.ReasonDetector)
	if now := MonoNow(); err == nil && d.EventTS > 0 && now >= d.EventTS {
		a.met.DetectToBlock.Observe(float64(now-d.EventTS) / 1e9)
	}
	a.lastBlockErr = err
	if err != nil {
		a.countDecision("block", "error")
		a.log.Error("block", zap.Stringer("prefix", d.Prefix), zap.String("rule", d.Rule), zap.Error(err))
		return err
	}
	a.countDecision("block", "ok")
	return nil
}

// Unblock removes an expired detector block. An entry an operator wrote
// (or rewrote) since is left alone.
func (b *blocker) Unblock(p netip.Prefix) error {
	a := (*Agent)(b)
	e, ok, err := a.bl.Lookup(p.Addr())
	if err != nil {
		return err
	}
	if ok && e.Prefix == p && e.Reason != bpf.ReasonDetector {
		return nil
	}
	if err := a.bl.Unblock(p); err != nil && !errors.Is(err, bpf.ErrNotBlocked) {
		a.countDecision("unblock", "error")
		return err
	}
	a.countDecision("unblock", "ok")
	return nil
}

func (a *Agent) snapshot() metrics.Snapshot {
	s := metrics.Snapshot{
		EventsReceived: map[string]uint64{"tracer": a.received.Load()},
		EventsLost:     map[string]uint64{"tracer": a.lost.Load()},
		Decisions:      map[[2]string]uint64{},
		Alerts:         map[[2]string]uint64{},
	}
	if st, err := a.bl.Stats(); err == nil {
		s.XDPPass, s.XDPDrop = st.Passed, st.Dropped
		s.XDPReasons = map[string]uint64{
			"drop_exact": st.DroppedExact, "drop_cidr": st.DroppedCIDR,
			"pass_expired": st.ExpiredPassed, "pass_allowlisted": st.AllowlistedPassed,
			"pass_non_ip": st.NonIP, "pass_malformed": st.Malformed,
			"egress_refused": st.EgressRefused,
		}
	}
	if n, err := a.bl.Len(); err == nil {
		s.ActiveBlocks = n
	}
	s.BlockCapacity = a.bl.Capacity()
	es := a.eng.Stats()
	modes := map[string]string{}
	for _, r := range a.eng.Rules() {
		modes[r.Name] = r.Mode.String()
	}
	for _, r := range es.Rules {
		s.Rules = append(s.Rules, metrics.RuleStat{
			Rule: r.Name, Severity: r.Severity.String(), Mode: modes[r.Name],
			Matches: r.Matches, Alerts: r.Alerts, Blocks: r.Blocks,
			KeysEvictions: r.Evictions, KeysTracked: r.Keys,
		})
		s.Alerts[[2]string{r.Name, r.Severity.String()}] = r.Alerts
	}
	s.RateLimited, s.Capped = es.RateLimited, es.Capped
	// Every outcome from the start: a series born at its first increment
	// hides that increment from increase(), and an alert on errors would
	// miss the first ones.
	for _, k := range [][2]string{{"block", "ok"}, {"block", "error"}, {"unblock", "ok"}, {"unblock", "error"}} {
		s.Decisions[k] = 0
	}
	a.decisions.Range(func(k, v any) bool {
		s.Decisions[k.([2]string)] = v.(*atomic.Uint64).Load()
		return true
	})
	s.Decisions[[2]string{"block", "rate_limited"}] = es.RateLimited
	s.Decisions[[2]string{"block", "capped"}] = es.Capped
	return s
}

func (a *Agent) serveAPI(errc chan<- error) error {
	h := a.Handler()
	if a.cfg.API.Listen != "" {
		ln, err := net.Listen("tcp", a.cfg.API.Listen)
		if err != nil {
			return fmt.Errorf("api listen: %w", err)
		}
		a.startServer(api.HTTPServer(h), ln, errc)
	}
	if p := a.cfg.API.Socket; p != "" {
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			return fmt.Errorf("api socket: %w", err)
		}
		if c, err := net.DialTimeout("unix", p, time.Second); err == nil {
			c.Close()
			return fmt.Errorf("api socket %s: another agent is listening there", p)
		}
		os.Remove(p) // stale, from an agent that did not exit cleanly
		ln, err := net.Listen("unix", p)
		if err != nil {
			return fmt.Errorf("api socket: %w", err)
		}
		if err := os.Chmod(p, 0o600); err != nil {
			ln.Close()
			return fmt.Errorf("api socket: %w", err)
		}
		a.startServer(api.HTTPServer(h), ln, errc)
	}
	return nil
}

func (a *Agent) startServer(srv *http.Server, ln net.Listener, errc chan<- error) {
	a.apiServers = append(a.apiServers, srv)
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- err
		}
	}()
}

// Close stops the API, the tracer and the engine's inputs, and releases the
// blocklist: pinned maps and XDP links stay (the host stays protected) unless
// the configuration asks to remove them.
func (a *Agent) Close() error {
	var errs []error
	a.closeOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		for _, s := range a.apiServers {
			errs = append(errs, s.Shutdown(ctx))
		}
		if a.cfg.API.Socket != "" && len(a.apiServers) > 0 {
			os.Remove(a.cfg.API.Socket)
		}
		if a.tr != nil {
			errs = append(errs, a.tr.Close())
		}
		if a.bl != nil {
			if a.cfg.CleanupOnExit {
				errs = append(errs, a.bl.Remove())
			} else {
				errs = append(errs, a.bl.Close())
			}
		}
		if a.alerts != nil {
			errs = append(errs, a.alerts.Close())
		}
	})
	return errors.Join(errs...)
}

// backend serves the API.
type backend Agent

func (b *backend) Stats() (api.Stats, error) {
	a := (*Agent)(b)
	st, err := a.bl.Stats()
	if err != nil {
		return api.Stats{}, err
	}
	n, _ := a.bl.Len()
	es := a.eng.Stats()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return api.Stats{
		PacketsProcessed: st.Passed + st.Dropped,
		PacketsPassed:    st.Passed,
		PacketsDropped:   st.Dropped,
		AttacksBlocked:   es.Blocks,
		EventsReceived:   a.received.Load(),
		EventsLost:       a.lost.Load(),
		Alerts:           a.alertsN.Load(),
		ActiveBlocks:     n,
		BlockCapacity:    a.bl.Capacity(),
		MemoryMB:         ms.Sys >> 20,
	}, nil
}

func (b *backend) Blocklist() ([]api.BlockEntry, error) {
	ents, err := (*Agent)(b).bl.List()
	if err != nil {
		return nil, err
	}
	return APIEntries(ents), nil
}

// APIEntries renders kernel blocklist entries as the API shows them.
func APIEntries(ents []bpf.Entry) []api.BlockEntry {
	out := make([]api.BlockEntry, 0, len(ents))
	for _, e := range ents {
		be := api.BlockEntry{Address: e.Prefix.String(), Reason: e.Reason.String(), Hits: e.Hits}
		if !e.Expires.IsZero() {
			t := e.Expires.UTC()
			be.Expires = &t
		}
		out = append(out, be)
	}
	return out
}

// ErrAllowlisted refuses an API block of an address the agent protects.
var ErrAllowlisted = errors.New("overlaps the allowlist (loopback, host addresses, gateways or the rules' allowlist)")

func (b *backend) Block(p netip.Prefix, ttl time.Duration, reason string) error {
	a := (*Agent)(b)
	allowed, err := a.bl.Allowed()
	if err != nil {
		return err
	}
	for _, q := range allowed {
		if q.Overlaps(p) {
			return fmt.Errorf("%w: %s", ErrAllowlisted, q)
		}
	}
	a.log.Info("manual block", zap.Stringer("prefix", p), zap.Duration("ttl", ttl), zap.String("reason", reason))
	return a.bl.Block(p, ttl, bpf.ReasonManual)
}

func (b *backend) Unblock(p netip.Prefix) error {
	err := (*Agent)(b).bl.Unblock(p)
	if errors.Is(err, bpf.ErrNotBlocked) {
		return api.ErrNotFound
	}
	return err
}

func (b *backend) Alerts(limit int) []json.RawMessage {
	a := (*Agent)(b)
	a.recentMu.Lock()
	defer a.recentMu.Unlock()
	n := min(limit, a.recentAt, len(a.recent))
	out := make([]json.RawMessage, 0, n)
	for i := a.recentAt - n; i < a.recentAt; i++ {
		out = append(out, a.recent[i%len(a.recent)])
	}
	return out
}

func (b *backend) Graph(w io.Writer, format string) error {
	if format == "dot" {
		return (*Agent)(b).eng.GraphDOT(w)
	}
	return (*Agent)(b).eng.GraphJSON(w)
}

func (b *backend) Processes() (any, error) { return (*Agent)(b).tr.Processes() }

func (b *backend) Rules() any {
	a := (*Agent)(b)
	type ruleJSON struct {
		Name      string `json:"name"`
		Enabled   bool   `json:"enabled"`
		Mode      string `json:"mode"`
		Severity  string `json:"severity"`
		Detection string `json:"detection"`
	}
	var rs []ruleJSON
	for _, r := range a.eng.Rules() {
		rs = append(rs, ruleJSON{r.Name, r.Enabled, r.Mode.String(), r.Severity.String(), r.Detection.String()})
	}
	a.reloadMu.Lock()
	files := a.rulesFiles
	a.reloadMu.Unlock()
	src := a.cfg.RulesDir
	if src == "" {
		src = "embedded"
	}
	return map[string]any{"source": src, "files": files, "dry_run": a.cfg.DryRun, "rules": rs}
}

func (b *backend) Reload() error { return (*Agent)(b).Reload() }

func (b *backend) Ready() error {
	if !(*Agent)(b).ready.Load() {
		return errors.New("starting or stopping")
	}
	return nil
}

// shortSession maps the configuration's 0 (report none) to the tracer's
// negative.
func shortSession(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}
