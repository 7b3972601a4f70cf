// Package client talks to a running agent's API, over its unix socket by
// default (authenticated by the caller being root) or over HTTP with a token.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// ErrNoAgent means no agent answered at the address.
var ErrNoAgent = errors.New("no agent is running")

// Client is an API client.
type Client struct {
	base  string
	token string
	hc    *http.Client
}

// New returns a client. addr is a unix socket path (starting with /) or an
// http:// URL.
func New(addr, token string) *Client {
	c := &Client{token: token, hc: &http.Client{Timeout: 10 * time.Second}}
	if strings.HasPrefix(addr, "/") {
		c.base = "http://connwarden"
		c.hc.Transport = &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", addr)
		}}
	} else {
		c.base = strings.TrimSuffix(addr, "/")
	}
	return c
}

// APIError is a non-2xx answer.
type APIError struct {
	Status  int
	Message string
}

func (e *APIError) Error() string { return fmt.Sprintf("agent answered %d: %s", e.Status, e.Message) }

// Do sends a request and decodes a JSON answer into out (if not nil).
func (c *Client) Do(method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	if err != nil {
		return err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			return fmt.Errorf("%w (%v)", ErrNoAgent, err)
		}
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		var r struct {
			Message string `json:"message"`
		}
		if json.Unmarshal(data, &r) != nil || r.Message == "" {
			r.Message = strings.TrimSpace(string(data))
		}
		return &APIError{Status: resp.StatusCode, Message: r.Message}
	}
	if out == nil {
		return nil
	}
	if raw, ok := out.(*[]byte); ok {
		*raw = data
		return nil
	}
	return json.Unmarshal(data, out)
}
