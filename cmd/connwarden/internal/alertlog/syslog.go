package alertlog

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"
)

// Syslog sends alerts as RFC 5424 messages (facility security/authorization,
// severity from the alert), the JSON record as the message body.
type Syslog struct {
	network, addr string
	conn          net.Conn
	hostname      string
	app           string
	pid           int
}

// DialSyslog parses target ("unixgram:///dev/log", "udp://127.0.0.1:514",
// "tcp://127.0.0.1:601") and connects.
func DialSyslog(target string) (*Syslog, error) {
	u, err := url.Parse(target)
	if err != nil {
		return nil, fmt.Errorf("syslog target %q: %w", target, err)
	}
	s := &Syslog{network: u.Scheme, app: "connwarden", pid: os.Getpid()}
	switch u.Scheme {
	case "unixgram", "unix":
		s.addr = u.Path
	case "udp", "tcp":
		s.addr = u.Host
	default:
		return nil, fmt.Errorf("syslog target %q: scheme must be unixgram, unix, udp or tcp", target)
	}
	s.hostname, _ = os.Hostname()
	if s.hostname == "" {
		s.hostname = "-"
	}
	if err := s.dial(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Syslog) dial() error {
	c, err := net.DialTimeout(s.network, s.addr, 5*time.Second)
	if err != nil {
		return fmt.Errorf("dial syslog %s://%s: %w", s.network, s.addr, err)
	}
	s.conn = c
	return nil
}

// severity maps ECS severity (1 low .. 4 critical) to syslog severity.
func syslogSeverity(ecs int) int {
	switch ecs {
	case 4:
		return 2 // critical
	case 3:
		return 3 // error
	case 2:
		return 4 // warning
	}
	return 5 // notice
}

// Format renders one RFC 5424 message.
func (s *Syslog) Format(r *Record, body []byte) []byte {
	const facilityAuthpriv = 10
	pri := facilityAuthpriv*8 + syslogSeverity(r.Event.Severity)
	msgid := strings.Map(func(c rune) rune {
		if c <= ' ' || c > '~' {
			return '_'
		}
		return c
	}, r.Rule.Name)
	if len(msgid) > 32 {
		msgid = msgid[:32]
	}
	if msgid == "" {
		msgid = "-"
	}
	line := fmt.Sprintf("<%d>1 %s %s %s %d %s - %s", pri,
		r.Timestamp.UTC().Format("2006-01-02T15:04:05.000000Z07:00"),
		s.hostname, s.app, s.pid, msgid, body)
	if s.network == "tcp" { // RFC 6587 octet counting
		line = fmt.Sprintf("%d %s", len(line), line)
	}
	return []byte(line)
}

// Send writes one record, redialling once on error.
func (s *Syslog) Send(r *Record, body []byte) error {
	msg := s.Format(r, body)
	if _, err := s.conn.Write(msg); err != nil {
		s.conn.Close()
		if derr := s.dial(); derr != nil {
			return derr
		}
		_, err = s.conn.Write(msg)
		return err
	}
	return nil
}

// Close closes the connection.
func (s *Syslog) Close() error { return s.conn.Close() }
