//go:build linux

package command

import (
	"errors"
	"os"
	"os/exec"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

const supported = true

// group is one run's process group: the program leads it, and what it starts
// belongs to it unless it leaves on purpose (setsid). Signals go to the whole
// group, and only while the leader is not yet reaped: until then its pid,
// which is the group's id, cannot name another group.
type group struct {
	cmd   *exec.Cmd
	mu    sync.Mutex
	ended bool // the group was swept; the leader may be reaped
}

// newGroup makes cmd start in a group of its own. When cmd's context ends,
// exec calls Cancel, which asks the whole group to stop; if the leader is
// still there after grace (WaitDelay), exec kills it, and its exit makes
// sweep kill the rest.
func newGroup(cmd *exec.Cmd) *group {
	g := &group{cmd: cmd}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return g.signal(syscall.SIGTERM) }
	cmd.WaitDelay = grace
	return g
}

func (g *group) signal(sig syscall.Signal) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ended {
		return os.ErrProcessDone
	}
	err := syscall.Kill(-g.cmd.Process.Pid, sig)
	if errors.Is(err, syscall.ESRCH) {
		return os.ErrProcessDone
	}
	return err
}

// waitLeader blocks until the program exits, leaving it a zombie for Wait to
// reap, so that the group id stays ours for sweep.
func (g *group) waitLeader() {
	var info unix.Siginfo
	for {
		err := unix.Waitid(unix.P_PID, g.cmd.Process.Pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if !errors.Is(err, unix.EINTR) {
			return
		}
	}
}

// sweep kills what is left of the group once the leader has exited: the
// answer ends with the program, and a child it left behind would hold the
// output open and outlive the chat. No signal is sent after it.
func (g *group) sweep() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.ended {
		_ = syscall.Kill(-g.cmd.Process.Pid, syscall.SIGKILL)
		g.ended = true
	}
}
