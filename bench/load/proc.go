package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clockTick is the unit of utime and stime in /proc/PID/stat. USER_HZ is
// 100 on every Linux architecture Go supports, and reading it properly
// (sysconf) would need cgo.
const clockTick = 10 * time.Millisecond

// rss returns a process's resident set size in bytes (VmRSS).
func rss(pid int) (int64, error) {
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

// cpuTime returns the CPU a process has used, user and system, over all
// its threads (utime + stime of /proc/PID/stat).
func cpuTime(pid int) (time.Duration, error) {
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

// selfCPU returns the CPU the load generator has used.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// rssSampler records the highest RSS of a process while it runs.
type rssSampler struct {
	stopc chan struct{}
	done  chan struct{}
	peak  int64
}

// sampleRSS polls pid's RSS every interval until stop is called.
func sampleRSS(pid int, interval time.Duration) *rssSampler {
	s := &rssSampler{stopc: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			if v, err := rss(pid); err == nil && v > s.peak {
				s.peak = v
			}
			select {
			case <-s.stopc:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

// stop ends the sampling and returns the peak seen.
func (s *rssSampler) stop() int64 {
	close(s.stopc)
	<-s.done
	return s.peak
}

// machine describes where a benchmark ran.
type machine struct {
	CPU   string
	Cores int
	Go    string
	Date  string
}

func machineFacts(goVersion string) machine {
	m := machine{CPU: "unknown", Go: goVersion, Date: time.Now().UTC().Format("2006-01-02 15:04 MST")}
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return m
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		switch strings.TrimSpace(key) {
		case "processor":
			m.Cores++
		case "model name":
			m.CPU = strings.TrimSpace(val)
		}
	}
	return m
}

// cpuBusy returns the time a CPU spent running processes and kernel
// threads, user and system, from /proc/stat. Interrupts are left out: on
// loopback much of the network stack runs there, on behalf of the server.
func cpuBusy(cpu string) (time.Duration, error) {
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
