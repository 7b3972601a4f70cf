// Package api serves the agent's management API over HTTP: statistics, the
// blocklist, recent alerts, the flow graph, top talkers, rules and reload,
// health, and /metrics.
//
// Reads are open to whoever can reach the listener (loopback by default).
// Mutating requests (POST, DELETE) must authenticate: over TCP with a bearer
// token compared in constant time (an empty or unset token authenticates
// nothing); over the unix socket by the peer's credentials (uid 0), since the
// socket is the CLI's and is created mode 0600.
package api

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
)

// MaxBodyBytes bounds every request body.
const MaxBodyBytes = 64 << 10

// ErrNotFound is returned by Backend.Unblock for an address not blocked.
var ErrNotFound = errors.New("not found")

// Backend is what the API serves; the agent implements it.
type Backend interface {
	Stats() (Stats, error)
	Blocklist() ([]BlockEntry, error)
	Block(p netip.Prefix, ttl time.Duration, reason string) error
	Unblock(p netip.Prefix) error
	Alerts(limit int) []json.RawMessage
	Graph(w io.Writer, format string) error
	Processes() (any, error)
	Rules() any
	Reload() error
	Ready() error
}

// Stats is the /api/v1/stats shape: the seed's fields first.
type Stats struct {
	PacketsProcessed uint64 `json:"packets_processed"`
	PacketsPassed    uint64 `json:"packets_passed"`
	PacketsDropped   uint64 `json:"packets_dropped"`
	AttacksBlocked   uint64 `json:"attacks_blocked"`
	EventsReceived   uint64 `json:"events_received"`
	EventsLost       uint64 `json:"events_lost"`
	Alerts           uint64 `json:"alerts"`
	ActiveBlocks     int    `json:"active_blocks"`
	BlockCapacity    int    `json:"block_capacity"`
	MemoryMB         uint64 `json:"memory_mb"`
}

// BlockEntry is one blocklist entry as the API shows it.
type BlockEntry struct {
	Address string     `json:"address"`
	Expires *time.Time `json:"expires,omitempty"`
	Reason  string     `json:"reason"`
	Hits    uint64     `json:"hits"`
}

// BlockRequest is the POST /api/v1/blocklist body.
type BlockRequest struct {
	Address string `json:"address"`
	TTL     string `json:"ttl,omitempty"`
	Reason  string `json:"reason,omitempty"`
}

// Result is the seed's {"success":..., "message":...} reply to mutations.
type Result struct {
	Success bool   `json:"success"`
	Message string `json:"message"`
}

type ctxKey int

const peerKey ctxKey = 0

// peer is what the connection tells us about the caller.
type peer struct {
	unix bool
	uid  int // -1 when unknown
}

// Server is the API's HTTP handler.
type Server struct {
	b       Backend
	token   []byte
	metrics http.Handler
	log     *zap.Logger
	mux     *http.ServeMux
}

// New returns the API handler. token may be empty: then mutations over TCP
// are always refused. metrics serves GET /metrics.
func New(b Backend, token string, metrics http.Handler, log *zap.Logger) *Server {
	s := &Server{b: b, token: []byte(token), metrics: metrics, log: log, mux: http.NewServeMux()}
	s.mux.HandleFunc("GET /api/v1/stats", s.stats)
	s.mux.HandleFunc("GET /api/v1/blocklist", s.listBlocks)
	s.mux.HandleFunc("POST /api/v1/blocklist", s.mutating(s.addBlock))
	s.mux.HandleFunc("DELETE /api/v1/blocklist/{addr...}", s.mutating(s.delBlock))
	s.mux.HandleFunc("GET /api/v1/alerts", s.alerts)
	s.mux.HandleFunc("GET /api/v1/graph", s.graph)
	s.mux.HandleFunc("GET /api/v1/processes", s.processes)
	s.mux.HandleFunc("GET /api/v1/rules", s.rules)
	s.mux.HandleFunc("POST /api/v1/rules/reload", s.mutating(s.reload))
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, 200, map[string]string{"status": "ok"}) })
	s.mux.HandleFunc("GET /readyz", s.ready)
	if metrics != nil {
		s.mux.Handle("GET /metrics", metrics)
	}
	return s
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	defer func() {
		if v := recover(); v != nil {
			if v == http.ErrAbortHandler {
				panic(v)
			}
			s.log.Error("api handler panic", zap.String("path", r.URL.Path), zap.Any("panic", v))
			writeJSON(w, http.StatusInternalServerError, Result{Message: "internal error"})
		}
	}()
	if r.Body != nil {
		r.Body = http.MaxBytesReader(w, r.Body, MaxBodyBytes)
	}
	s.mux.ServeHTTP(w, r)
}

// HTTPServer wraps h with the timeouts an unattended agent needs, and records
// for each connection whether it came over the unix socket and from which uid.
func HTTPServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			p := peer{uid: -1}
			if uc, ok := c.(*net.UnixConn); ok {
				p.unix = true
				p.uid = peerUID(uc)
			}
			return context.WithValue(ctx, peerKey, p)
		},
	}
}

func (s *Server) authorized(r *http.Request) (bool, string) {
	if p, ok := r.Context().Value(peerKey).(peer); ok && p.unix {
		if p.uid == 0 {
			return true, ""
		}
		return false, "unix socket peer is not root"
	}
	if len(s.token) == 0 {
		return false, "no API token is configured; mutations are disabled"
	}
	h := r.Header.Get("Authorization")
	const prefix = "Bearer "
	if len(h) <= len(prefix) || !strings.EqualFold(h[:len(prefix)], prefix) {
		return false, "missing bearer token"
	}
	if subtle.ConstantTimeCompare([]byte(h[len(prefix):]), s.token) != 1 {
		return false, "invalid bearer token"
	}
	return true, ""
}

func (s *Server) mutating(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if ok, why := s.authorized(r); !ok {
			w.Header().Set("WWW-Authenticate", `Bearer realm="connwarden"`)
			writeJSON(w, http.StatusUnauthorized, Result{Message: why})
			return
		}
		h(w, r)
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func (s *Server) fail(w http.ResponseWriter, code int, format string, args ...any) {
	writeJSON(w, code, Result{Message: fmt.Sprintf(format, args...)})
}

func (s *Server) stats(w http.ResponseWriter, _ *http.Request) {
	st, err := s.b.Stats()
	if err != nil {
		s.fail(w, http.StatusInternalServerError, "stats: %v", err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (s *Server) listBlocks(w http.ResponseWriter, _ *http.Request) {
	l, err := s.b.Blocklist()
	if err != nil {
		s.fail(w, http.StatusInternalServerError, "blocklist: %v", err)
		return
	}
	if l == nil {
		l = []BlockEntry{}
	}
	writeJSON(w, http.StatusOK, l)
}

// ParsePrefix accepts an address ("192.0.2.1", "2001:db8::1") or a CIDR
// ("192.0.2.0/24"); a v4-mapped IPv6 address is taken as IPv4.
func ParsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, err
		}
		if p.Addr().Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("%q: zones are not allowed", s)
		}
		if p.Addr().Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	if a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("%q: zones are not allowed", s)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

func (s *Server) addBlock(w http.ResponseWriter, r *http.Request) {
	var req BlockRequest
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			s.fail(w, http.StatusRequestEntityTooLarge, "request body larger than %d bytes", MaxBodyBytes)
			return
		}
		s.fail(w, http.StatusBadRequest, "invalid JSON body: %v", err)
		return
	}
	if dec.More() {
		s.fail(w, http.StatusBadRequest, "invalid JSON body: more than one object")
		return
	}
	p, err := ParsePrefix(req.Address)
	if err != nil {
		s.fail(w, http.StatusBadRequest, "invalid address %q: want an IPv4/IPv6 address or CIDR", req.Address)
		return
	}
	var ttl time.Duration
	if req.TTL != "" {
		if ttl, err = time.ParseDuration(req.TTL); err != nil || ttl < 0 {
			s.fail(w, http.StatusBadRequest, "invalid ttl %q: want a duration like 10m, or omit for no expiry", req.TTL)
			return
		}
	}
	reason := req.Reason
	if reason == "" {
		reason = "api"
	}
	if err := s.b.Block(p, ttl, reason); err != nil {
		s.fail(w, http.StatusConflict, "block %s: %v", p, err)
		return
	}
	writeJSON(w, http.StatusOK, Result{Success: true, Message: fmt.Sprintf("%s added to blocklist", p)})
}

func (s *Server) delBlock(w http.ResponseWriter, r *http.Request) {
	raw := r.PathValue("addr")
	p, err := ParsePrefix(raw)
	if err != nil {
		s.fail(w, http.StatusBadRequest, "invalid address %q: want an IPv4/IPv6 address or CIDR", raw)
		return
	}
	switch err := s.b.Unblock(p); {
	case errors.Is(err, ErrNotFound):
		s.fail(w, http.StatusNotFound, "%s is not in the blocklist", p)
	case err != nil:
		s.fail(w, http.StatusInternalServerError, "unblock %s: %v", p, err)
	default:
		writeJSON(w, http.StatusOK, Result{Success: true, Message: fmt.Sprintf("IP %s removed from blocklist", displayPrefix(p))})
	}
}

func displayPrefix(p netip.Prefix) string {
	if p.IsSingleIP() {
		return p.Addr().String()
	}
	return p.String()
}

func (s *Server) alerts(w http.ResponseWriter, r *http.Request) {
	limit := 100
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 10000 {
			s.fail(w, http.StatusBadRequest, "invalid limit %q: want 1 to 10000", v)
			return
		}
		limit = n
	}
	a := s.b.Alerts(limit)
	if a == nil {
		a = []json.RawMessage{}
	}
	writeJSON(w, http.StatusOK, a)
}

func (s *Server) graph(w http.ResponseWriter, r *http.Request) {
	format := r.URL.Query().Get("format")
	ctype := "application/json"
	switch format {
	case "", "json":
		format = "json"
	case "dot":
		ctype = "text/vnd.graphviz"
	default:
		s.fail(w, http.StatusBadRequest, "invalid format %q: want json or dot", format)
		return
	}
	var buf bytes.Buffer
	if err := s.b.Graph(&buf, format); err != nil {
		s.fail(w, http.StatusServiceUnavailable, "graph: %v", err)
		return
	}
	w.Header().Set("Content-Type", ctype)
	w.Write(buf.Bytes())
}

func (s *Server) processes(w http.ResponseWriter, _ *http.Request) {
	p, err := s.b.Processes()
	if err != nil {
		s.fail(w, http.StatusInternalServerError, "processes: %v", err)
		return
	}
	writeJSON(w, http.StatusOK, p)
}

func (s *Server) rules(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, s.b.Rules())
}

func (s *Server) reload(w http.ResponseWriter, _ *http.Request) {
	if err := s.b.Reload(); err != nil {
		s.fail(w, http.StatusUnprocessableEntity, "reload refused, running rules kept: %v", err)
		return
	}
	writeJSON(w, http.StatusOK, Result{Success: true, Message: "rules reloaded"})
}

func (s *Server) ready(w http.ResponseWriter, _ *http.Request) {
	if err := s.b.Ready(); err != nil {
		s.fail(w, http.StatusServiceUnavailable, "not ready: %v", err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}
