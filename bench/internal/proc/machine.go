package proc

import (
	"bufio"
	"os"
	"strings"
	"time"
)

// Machine describes where a benchmark ran.
type Machine struct {
	CPU   string // model name, or "unknown"
	Cores int    // processors listed in /proc/cpuinfo
	Go    string // the Go version named by the caller
	Date  string // when the facts were read, UTC
}

// MachineFacts reads the CPU model and the number of processors from
// /proc/cpuinfo; goVersion is the one the report should name, which need
// not be the harness's own.
func MachineFacts(goVersion string) Machine {
	m := Machine{CPU: "unknown", Go: goVersion, Date: time.Now().UTC().Format("2006-01-02 15:04 MST")}
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
			if m.CPU == "unknown" {
				m.CPU = strings.TrimSpace(val)
			}
		}
	}
	return m
}
