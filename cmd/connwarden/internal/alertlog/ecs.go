// Package alertlog writes alerts for SIEMs: one JSON object per line with
// Elastic Common Schema field names, to stdout or a file that can be reopened
// for logrotate, and optionally as RFC 5424 syslog messages.
//
// The schema (documented with an example in README.md):
//
//	@timestamp            wall-clock time of the deciding event (RFC 3339, ns)
//	event.kind            "alert"
//	event.category        ["network", "intrusion_detection"]
//	event.type            ["connection", "denied" when blocked]
//	event.action          the detection type (threshold, distinct, fanout, ...)
//	event.severity        1 low, 2 medium, 3 high, 4 critical
//	event.reason          the rule's description
//	rule.name / rule.description / rule.ruleset ("connwarden")
//	threat.technique.id   MITRE ATT&CK technique ids from the rule's tags
//	source.ip/port        the peer that initiated the connection
//	destination.ip/port   the peer it was made to
//	process.pid/name/user.id   the process, when the kernel event has one
//	host.hostname
//	connwarden.*          key, count, window, mode, block decision, ttl,
//	                      events lost during the window, detection details
package alertlog

import (
	"time"
)

// Record is one alert line. Field order is the JSON order (@timestamp first).
type Record struct {
	Timestamp  time.Time  `json:"@timestamp"`
	Event      Event      `json:"event"`
	Rule       Rule       `json:"rule"`
	Threat     *Threat    `json:"threat,omitempty"`
	Source     *Endpoint  `json:"source,omitempty"`
	Dest       *Endpoint  `json:"destination,omitempty"`
	Process    *Process   `json:"process,omitempty"`
	User       *User      `json:"user,omitempty"`
	Host       Host       `json:"host"`
	Connwarden Connwarden `json:"connwarden"`
}

type Event struct {
	Kind     string    `json:"kind"`
	Category []string  `json:"category"`
	Type     []string  `json:"type"`
	Action   string    `json:"action"`
	Severity int       `json:"severity"`
	Reason   string    `json:"reason,omitempty"`
	Created  time.Time `json:"created"`
}

type Rule struct {
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
	Ruleset     string `json:"ruleset"`
}

type Threat struct {
	Framework string      `json:"framework"`
	Technique []Technique `json:"technique"`
}

type Technique struct {
	ID string `json:"id"`
}

type Endpoint struct {
	IP   string `json:"ip"`
	Port uint16 `json:"port,omitempty"`
}

type Process struct {
	PID  uint32 `json:"pid"`
	TID  uint32 `json:"thread.id,omitempty"`
	Name string `json:"name"`
}

type User struct {
	ID string `json:"id"`
}

type Host struct {
	Hostname string `json:"hostname"`
}

// Connwarden holds the project-specific fields.
type Connwarden struct {
	Key        string         `json:"key"`
	Count      int            `json:"count"`
	Window     string         `json:"window,omitempty"`
	Mode       string         `json:"mode"`
	Severity   string         `json:"severity"`
	EventKind  string         `json:"event_kind"`
	EventsLost uint64         `json:"events_lost"`
	Block      *Block         `json:"block,omitempty"`
	Suppressed string         `json:"block_suppressed,omitempty"`
	Auth       *Auth          `json:"auth,omitempty"`
	Details    map[string]any `json:"details,omitempty"`
}

// Auth describes the authentication call behind an alert on an
// authentication kind (a PAM probe).
type Auth struct {
	Service string `json:"service,omitempty"` // PAM service
	User    string `json:"user,omitempty"`    // the user name the client gave
	Result  string `json:"result"`            // PAM_SUCCESS, PAM_AUTH_ERR, ...
	// Peer says whether the peer is known: "known" when the process held one
	// inbound connection, else "unknown (N inbound connections)".
	Peer string `json:"peer"`
}

// Block is the block decision an alert led to.
type Block struct {
	Target string `json:"target"`
	TTL    string `json:"ttl"`
	Repeat int    `json:"repeat"`
	Result string `json:"result"`
}
