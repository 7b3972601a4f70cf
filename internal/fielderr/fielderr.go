// Package fielderr is the validation error shared by graph and statemachine
// configs: a field path in the config structure ("transitions[2].to") and a
// message. Both packages export it under the name FieldError, so the rules
// package can map a path back to the YAML node it came from, whichever
// package produced it.
package fielderr

import (
	"errors"
	"fmt"
)

// Error is one problem with one field.
type Error struct {
	// Path locates the field from the config value's root, Go-style, with
	// indexes only ("window", "services[1].port", "transitions[2].to"); the
	// names of the offending items go into Msg, so Path stays machine-readable.
	Path string
	// Msg says what is wrong and, where it helps, what would be valid.
	Msg string
}

func (e *Error) Error() string { return e.Path + ": " + e.Msg }

// List collects every problem, so a config reports all of them at once.
type List struct{ errs []error }

// Addf records a problem with the field at path.
func (l *List) Addf(path, format string, args ...any) {
	l.errs = append(l.errs, &Error{Path: path, Msg: fmt.Sprintf(format, args...)})
}

// Err joins the problems (errors.Join), or returns nil when there are none.
// Callers get the individual *Error values with errors.As on each element of
// the joined error's Unwrap() []error.
func (l *List) Err() error { return errors.Join(l.errs...) }
