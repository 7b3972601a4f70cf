package bpf

import (
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// clockPair is one reading of the wall clock and of CLOCK_MONOTONIC, the
// clock expiries are stored in (bpf_ktime_get_ns and, at tick resolution,
// bpf_ktime_get_coarse_ns read it in the kernel). Monotonic deadlines
// survive wall clock steps; converting them to wall time for display uses the
// offset between the two clocks at the time of the reading.
type clockPair struct {
	wall time.Time // without Go's monotonic reading
	mono uint64    // ns
}

func readClock() (clockPair, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return clockPair{}, fmt.Errorf("read CLOCK_MONOTONIC: %w", err)
	}
	return clockPair{wall: time.Now().Round(0), mono: uint64(ts.Nano())}, nil
}

// deadline converts a TTL into a monotonic deadline; 0 stays 0 (never).
func (c clockPair) deadline(ttl time.Duration) uint64 {
	if ttl <= 0 {
		return 0
	}
	return c.mono + uint64(ttl)
}

// wallTime converts a monotonic deadline into wall time; 0 is the zero Time.
func (c clockPair) wallTime(mono uint64) time.Time {
	if mono == 0 {
		return time.Time{}
	}
	return c.wall.Add(time.Duration(int64(mono - c.mono)))
}

// expired reports whether a monotonic deadline has passed, as the kernel
// decides it: an entry expires when now >= deadline.
func (c clockPair) expired(mono uint64) bool {
	return mono != 0 && c.mono >= mono
}
