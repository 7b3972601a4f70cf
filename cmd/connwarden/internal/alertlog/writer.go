package alertlog

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sync"
)

// Writer writes Records as JSON lines. It is safe for concurrent use.
type Writer struct {
	mu     sync.Mutex
	path   string // "" for a fixed io.Writer such as stdout
	f      *os.File
	w      *bufio.Writer
	syslog *Syslog
}

// Open returns a Writer on stdout when path is "stdout" or "", else on the
// file at path (created 0600, appended to).
func Open(path string, syslog *Syslog) (*Writer, error) {
	w := &Writer{syslog: syslog}
	if path == "" || path == "stdout" {
		w.w = bufio.NewWriter(os.Stdout)
		return w, nil
	}
	w.path = path
	if err := w.openFile(); err != nil {
		return nil, err
	}
	return w, nil
}

// NewWriter writes to out (tests, replay).
func NewWriter(out io.Writer) *Writer {
	return &Writer{w: bufio.NewWriter(out)}
}

func (w *Writer) openFile() error {
	f, err := os.OpenFile(w.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("open alert log: %w", err)
	}
	w.f = f
	w.w = bufio.NewWriter(f)
	return nil
}

// Write appends one record and flushes it, so a SIEM tailing the file sees
// each alert as it happens.
func (w *Writer) Write(r *Record) error {
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode alert: %w", err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.w.Write(b)
	w.w.WriteByte('\n')
	err = w.w.Flush()
	if w.syslog != nil {
		if serr := w.syslog.Send(r, b); serr != nil && err == nil {
			err = serr
		}
	}
	return err
}

// Reopen closes and reopens the file (after logrotate moved it). On stdout
// it does nothing.
func (w *Writer) Reopen() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.path == "" {
		return nil
	}
	w.w.Flush()
	old := w.f
	if err := w.openFile(); err != nil {
		return err // keep writing to the old file rather than lose alerts
	}
	return old.Close()
}

// Close flushes and closes.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	err := w.w.Flush()
	if w.f != nil {
		if cerr := w.f.Close(); err == nil {
			err = cerr
		}
	}
	if w.syslog != nil {
		w.syslog.Close()
	}
	return err
}
