package main

import (
	"syscall"
	"time"

	"github.com/troupe-llm/troupe/bench/internal/proc"
)

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
			if v, err := proc.RSS(pid); err == nil && v > s.peak {
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
