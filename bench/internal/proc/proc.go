// Package proc reads what the benchmark tools measure about the processes
// they start, and the machine they run on, from Linux's /proc, and finds
// the address a started server prints on its output.
package proc

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// clockTick is the unit of utime and stime in /proc/PID/stat and of the
// times in /proc/stat. USER_HZ is 100 on every Linux architecture Go
// supports, and reading it properly (sysconf) would need cgo.
const clockTick = 10 * time.Millisecond

// CPUTime returns the CPU a process has used, user and system, over all
// its threads (utime + stime of /proc/PID/stat).
func CPUTime(pid int) (time.Duration, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name, field 2, is in parentheses and may hold spaces,
	// so fields are counted from the last ')'.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	// f[0] is field 3 (state), so utime (14) and stime (15) are f[11], f[12].
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected utime/stime %q %q", pid, f[11], f[12])
	}
	return time.Duration(utime+stime) * clockTick, nil
}

// RSS returns a process's resident set size in bytes (VmRSS).
func RSS(pid int) (int64, error) {
	return statusField(pid, "VmRSS:")
}

// statusField reads a kB field of /proc/PID/status, in bytes.
func statusField(pid int, field string) (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(data)) {
		if rest, ok := strings.CutPrefix(line, field); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("/proc/%d/status %s %q: %w", pid, field, rest, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("/proc/%d/status has no %s", pid, field)
}

// CPUBusy returns the time a CPU (numbered as in "cpu0", "cpu1" of
// /proc/stat) spent running processes and kernel threads, user and
// system. Interrupts are left out: on loopback much of the network stack
// runs there, on behalf of the server.
func CPUBusy(cpu string) (time.Duration, error) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(data)) {
		f := strings.Fields(line)
		if len(f) < 8 || f[0] != "cpu"+cpu {
			continue
		}
		var busy int64
		// user nice system.
		for _, i := range []int{1, 2, 3} {
			n, err := strconv.ParseInt(f[i], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("/proc/stat cpu%s: %w", cpu, err)
			}
			busy += n
		}
		return time.Duration(busy) * clockTick, nil
	}
	return 0, fmt.Errorf("/proc/stat has no cpu%s", cpu)
}
