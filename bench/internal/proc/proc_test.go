package proc

import (
	"bytes"
	"os"
	"regexp"
	"testing"
)

func TestWatcher(t *testing.T) {
	pattern := regexp.MustCompile(`serving .* on (http://[0-9.]+:[0-9]+)/`)
	tests := []struct {
		name   string
		writes []string
		want   string // "" for no match
	}{
		{"one write", []string{"troupe v1: serving \"m\" (l.yaml) on http://127.0.0.1:8080/v1/completion\n"}, "http://127.0.0.1:8080"},
		{"split across writes", []string{"log line\ntroupe: serving \"m\" (l) on http://127.0", ".0.1:9/v1\nafter\n"}, "http://127.0.0.1:9"},
		{"no newline yet", []string{"troupe: serving \"m\" (l) on http://127.0.0.1:9/v1"}, ""},
		{"first match only", []string{"a: serving x on http://1.1.1.1:1/\nb: serving y on http://2.2.2.2:2/\n"}, "http://1.1.1.1:1"},
		{"no match", []string{"starting\nstill starting\n"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			w := NewWatcher(&out, pattern)
			var all string
			for _, p := range tt.writes {
				if n, err := w.Write([]byte(p)); n != len(p) || err != nil {
					t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(p))
				}
				all += p
			}
			if out.String() != all {
				t.Errorf("passed on %q, want %q", out.String(), all)
			}
			var got string
			select {
			case got = <-w.Found():
			default:
			}
			if got != tt.want {
				t.Errorf("found %q, want %q", got, tt.want)
			}
		})
	}
}

func TestSelf(t *testing.T) {
	pid := os.Getpid()
	if _, err := CPUTime(pid); err != nil {
		t.Errorf("CPUTime: %v", err)
	}
	if rss, err := RSS(pid); err != nil || rss <= 0 {
		t.Errorf("RSS = %d, %v; want > 0", rss, err)
	}
	if _, err := CPUBusy("0"); err != nil {
		t.Errorf("CPUBusy: %v", err)
	}
	if m := MachineFacts("go0"); m.Cores < 1 || m.Go != "go0" || m.Date == "" {
		t.Errorf("MachineFacts = %+v", m)
	}
}
