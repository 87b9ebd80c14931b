package proc

import (
	"context"
	"fmt"
	"os"
	"syscall"
	"time"
)

// Sleep waits d, or until ctx ends.
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// ReexecPinned replaces the process with itself under taskset on cpu, with
// marker=1 in its environment so that it knows it is pinned.
func ReexecPinned(taskset, cpu, marker string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	args := append([]string{"taskset", "-c", cpu, self}, os.Args[1:]...)
	return fmt.Errorf("re-executing under taskset: %w", syscall.Exec(taskset, args, append(os.Environ(), marker+"=1")))
}

// RaiseFileLimit makes room for need open files; what says what needs them
// (and which flag lowers it), for the error when the hard limit is lower.
func RaiseFileLimit(need int, what string) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	if lim.Cur >= uint64(need) {
		return nil
	}
	if lim.Max < uint64(need) {
		return fmt.Errorf("open files are limited to %d; %s need %d (raise ulimit -Hn)", lim.Max, what, need)
	}
	lim.Cur = uint64(need)
	return syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
}

// WaitQuiet waits, up to limit, for a second in which other processes use
// less than a fifth of cpu, so that what runs there is measured alone.
func WaitQuiet(ctx context.Context, cpu string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for said := false; ; {
		b0, err := CPUBusy(cpu)
		if err != nil {
			return err
		}
		if err := Sleep(ctx, time.Second); err != nil {
			return err
		}
		b1, err := CPUBusy(cpu)
		if err != nil {
			return err
		}
		busy := b1 - b0
		if busy < 200*time.Millisecond || time.Now().After(deadline) {
			return nil
		}
		if !said {
			fmt.Fprintf(os.Stderr, "CPU %s is %d%% busy with other processes; waiting up to %v for it to be quiet...\n", cpu, busy.Milliseconds()/10, limit)
			said = true
		}
	}
}
