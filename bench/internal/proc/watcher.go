package proc

import (
	"bytes"
	"io"
	"regexp"
)

// maxLine bounds the partial line a Watcher holds: no server prints a
// line that long before it serves, so a longer one is not the one sought.
const maxLine = 64 << 10

// A Watcher is a process's stdout: it passes everything on and sends, once,
// the first submatch of its pattern in a whole line, such as the URL a
// server prints when it starts listening.
type Watcher struct {
	w       io.Writer
	pattern *regexp.Regexp
	found   chan string
	line    []byte
	done    bool
}

// NewWatcher returns a Watcher that writes to w and looks for pattern,
// which must have a group.
func NewWatcher(w io.Writer, pattern *regexp.Regexp) *Watcher {
	return &Watcher{w: w, pattern: pattern, found: make(chan string, 1)}
}

// Found receives the first match, once; it is never closed.
func (u *Watcher) Found() <-chan string { return u.found }

func (u *Watcher) Write(p []byte) (int, error) {
	n, err := u.w.Write(p)
	if u.done {
		return n, err
	}
	u.line = append(u.line, p...)
	for {
		i := bytes.IndexByte(u.line, '\n')
		if i < 0 {
			break
		}
		if m := u.pattern.FindSubmatch(u.line[:i]); m != nil {
			u.found <- string(m[1])
			u.done, u.line = true, nil
			break
		}
		u.line = u.line[i+1:]
	}
	if len(u.line) > maxLine {
		u.line = nil
	}
	return n, err
}
