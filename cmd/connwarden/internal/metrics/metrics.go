// Package metrics exports the agent's figures to Prometheus from its own
// registry. Kernel and engine counters are read at scrape time from a
// Snapshot (like node_exporter's collectors), so the hot path pays nothing for
// them; latency histograms are observed as things happen.
//
// No label takes a value an attacker controls: labels are fixed enumerations
// (action, reason, source, outcome) or come from the operator's rule files
// (rule name, severity). Never an address, port, pid or comm.
package metrics

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/connwarden/connwarden/cmd/connwarden/internal/version"
)

const ns = "connwarden"

// RuleStat is one rule's counters.
type RuleStat struct {
	Rule, Severity, Mode  string
	Matches, Alerts       uint64
	Blocks, KeysEvictions uint64
	KeysTracked           int
}

// Snapshot is everything read at scrape time.
type Snapshot struct {
	XDPPass, XDPDrop uint64
	// XDPReasons counts packets by why XDP passed or dropped them
	// (drop_exact, drop_cidr, pass_expired, pass_allowlisted, pass_non_ip,
	// pass_malformed, ...).
	XDPReasons map[string]uint64
	// EventsReceived and EventsLost by source (e.g. "tracer").
	EventsReceived map[string]uint64
	EventsLost     map[string]uint64
	ActiveBlocks   int
	BlockCapacity  int
	Rules          []RuleStat
	// Engine protections biting: blocks refused by the rate limit / the cap.
	RateLimited, Capped uint64
	// Block decisions by action (block, unblock) and outcome (ok, error,
	// allowlisted, rate_limited, capped, monitor).
	Decisions map[[2]string]uint64
	Alerts    map[[2]string]uint64 // by rule, severity
}

// Metrics owns the registry and the live instruments.
type Metrics struct {
	Registry *prometheus.Registry
	snapshot func() Snapshot

	EngineSeconds   prometheus.Histogram
	DetectToBlock   prometheus.Histogram
	ReloadSuccess   prometheus.Gauge
	ReloadTimestamp prometheus.Gauge
	AuthSourceUp    prometheus.Gauge
	descPackets     *prometheus.Desc
	descReasons     *prometheus.Desc
	descEvents      *prometheus.Desc
	descLost        *prometheus.Desc
	descActive      *prometheus.Desc
	descCapacity    *prometheus.Desc
	descRuleMatches *prometheus.Desc
	descAlerts      *prometheus.Desc
	descDecisions   *prometheus.Desc
	descRateLimited *prometheus.Desc
	descCapped      *prometheus.Desc
	descKeysTracked *prometheus.Desc
	descKeysEvicted *prometheus.Desc
}

// New builds the registry. snapshot is called once per scrape.
func New(snapshot func() Snapshot) *Metrics {
	m := &Metrics{Registry: prometheus.NewRegistry(), snapshot: snapshot}
	m.EngineSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: ns, Name: "engine_event_duration_seconds",
		Help:    "Time the detection engine spends on one event (sampled).",
		Buckets: []float64{50e-9, 100e-9, 250e-9, 500e-9, 1e-6, 2.5e-6, 10e-6, 100e-6, 1e-3},
	})
	m.DetectToBlock = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: ns, Name: "detect_to_block_seconds",
		Help:    "From the kernel timestamp of the event that decided a block to the blocklist map write.",
		Buckets: []float64{100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 100e-3, 1},
	})
	m.ReloadSuccess = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: ns, Name: "rules_last_reload_successful",
		Help: "Whether the last rule (re)load succeeded (1) or was refused (0).",
	})
	m.ReloadTimestamp = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: ns, Name: "rules_last_reload_success_timestamp_seconds",
		Help: "Unix time of the last successful rule (re)load.",
	})
	m.AuthSourceUp = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: ns, Name: "auth_source_up",
		Help: "Whether authentication events are reported (1: PAM probes attached; 0: see the start-up log for why not).",
	})
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(ns, "", name), help, labels, nil)
	}
	m.descPackets = d("xdp_packets_total", "Packets seen by the XDP blocklist, by action.", "action")
	m.descReasons = d("xdp_verdicts_total", "Packets seen by the XDP blocklist, by the reason for their verdict.", "reason")
	m.descEvents = d("events_received_total", "Kernel events received, by source.", "source")
	m.descLost = d("events_lost_total", "Kernel events lost (ring buffer full), by source.", "source")
	m.descActive = d("blocklist_entries", "Entries in the blocklist.")
	m.descCapacity = d("blocklist_capacity", "Entries the blocklist can hold.")
	m.descRuleMatches = d("rule_matches_total", "Events that matched a rule's filter.", "rule", "severity")
	m.descAlerts = d("alerts_total", "Alerts raised, by rule and severity.", "rule", "severity")
	m.descDecisions = d("block_decisions_total", "Block decisions, by action and outcome.", "action", "outcome")
	m.descRateLimited = d("block_rate_limited_total", "Blocks refused by the global rate limit on new blocks.")
	m.descCapped = d("block_capped_total", "Blocks refused because the cap on active blocks was reached.")
	m.descKeysTracked = d("rule_keys_tracked", "Keys with state held by a rule.", "rule")
	m.descKeysEvicted = d("rule_keys_evicted_total", "Keys a rule evicted to stay within its bound.", "rule")

	info := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: ns, Name: "build_info",
		Help: "Build information; the value is always 1.",
	}, []string{"version", "commit", "goversion", "ebpf"})
	v := version.Get()
	info.WithLabelValues(v.Version, v.Commit, v.GoVersion, v.EBPF).Set(1)

	m.Registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		info, m.EngineSeconds, m.DetectToBlock, m.ReloadSuccess, m.ReloadTimestamp, m.AuthSourceUp, m,
	)
	return m
}

// Handler serves the registry.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry})
}

// ObserveReload records a (re)load outcome.
func (m *Metrics) ObserveReload(ok bool, at time.Time) {
	if ok {
		m.ReloadSuccess.Set(1)
		m.ReloadTimestamp.Set(float64(at.UnixNano()) / 1e9)
	} else {
		m.ReloadSuccess.Set(0)
	}
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{m.descPackets, m.descReasons, m.descEvents, m.descLost,
		m.descActive, m.descCapacity, m.descRuleMatches, m.descAlerts, m.descDecisions,
		m.descRateLimited, m.descCapped, m.descKeysTracked, m.descKeysEvicted} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	s := m.snapshot()
	c := func(d *prometheus.Desc, v uint64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), l...)
	}
	g := func(d *prometheus.Desc, v float64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, l...)
	}
	c(m.descPackets, s.XDPPass, "pass")
	c(m.descPackets, s.XDPDrop, "drop")
	for r, v := range s.XDPReasons {
		c(m.descReasons, v, r)
	}
	for src, v := range s.EventsReceived {
		c(m.descEvents, v, src)
	}
	for src, v := range s.EventsLost {
		c(m.descLost, v, src)
	}
	g(m.descActive, float64(s.ActiveBlocks))
	g(m.descCapacity, float64(s.BlockCapacity))
	for _, r := range s.Rules {
		c(m.descRuleMatches, r.Matches, r.Rule, r.Severity)
		g(m.descKeysTracked, float64(r.KeysTracked), r.Rule)
		c(m.descKeysEvicted, r.KeysEvictions, r.Rule)
	}
	for k, v := range s.Alerts {
		c(m.descAlerts, v, k[0], k[1])
	}
	for k, v := range s.Decisions {
		c(m.descDecisions, v, k[0], k[1])
	}
	c(m.descRateLimited, s.RateLimited)
	c(m.descCapped, s.Capped)
}
