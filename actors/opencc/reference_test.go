package opencc

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"unicode"
)

// corpusPackages are the Debian packages whose Chinese text (manual pages
// and gettext catalogues) makes the reference corpus. CI installs them with
// opencc, the reference itself.
var corpusPackages = []string{
	"manpages-zh", "coreutils", "dpkg", "gettext", "git", "iso-codes",
	"libc-l10n", "libglib2.0-data", "tar", "wget",
}

// minAgreement is the share of corpus lines on which every config must give
// the reference's output.
const minAgreement = 0.999

type corpus struct {
	simplified, traditional []string
	err                     error
}

var testCorpus struct {
	once sync.Once
	c    corpus
}

// loadCorpus returns the distinct lines with Han characters of the Chinese
// text in corpusPackages, zh_CN and zh_TW apart, in package and file order.
func loadCorpus(t testing.TB) corpus {
	t.Helper()
	testCorpus.once.Do(func() { testCorpus.c = buildCorpus() })
	if err := testCorpus.c.err; err != nil {
		t.Fatal(err)
	}
	return testCorpus.c
}

func buildCorpus() corpus {
	if _, err := exec.LookPath("msgunfmt"); err != nil {
		return corpus{err: fmt.Errorf("msgunfmt not found: install the Debian package gettext")}
	}
	var simplified, traditional lines
	for _, pkg := range corpusPackages {
		out, err := exec.Command("dpkg-query", "-L", pkg).Output()
		if err != nil {
			return corpus{err: fmt.Errorf("Debian package %s is not installed (apt-get install -y %s): %v", pkg, pkg, err)}
		}
		files := strings.Split(strings.TrimSpace(string(out)), "\n")
		slices.Sort(files)
		for _, f := range files {
			var dst *lines
			switch {
			case strings.Contains(f, "/zh_CN/"):
				dst = &simplified
			case strings.Contains(f, "/zh_TW/"):
				dst = &traditional
			default:
				continue
			}
			var text []byte
			switch {
			case strings.HasPrefix(f, "/usr/share/man/") && strings.HasSuffix(f, ".gz"):
				text, err = gunzip(f)
			case strings.HasSuffix(f, ".mo"):
				text, err = exec.Command("msgunfmt", f).Output()
			default:
				continue
			}
			if err != nil {
				return corpus{err: fmt.Errorf("reading %s of %s: %v", f, pkg, err)}
			}
			dst.add(text)
		}
	}
	if len(simplified.list) < 10000 || len(traditional.list) < 10000 {
		return corpus{err: fmt.Errorf("corpus too small (%d zh_CN, %d zh_TW lines): are %v installed?",
			len(simplified.list), len(traditional.list), corpusPackages)}
	}
	return corpus{simplified: simplified.list, traditional: traditional.list}
}

type lines struct {
	list []string
	seen map[string]bool
}

func (l *lines) add(text []byte) {
	if l.seen == nil {
		l.seen = make(map[string]bool)
	}
	for line := range strings.SplitSeq(string(text), "\n") {
		if l.seen[line] || !strings.ContainsFunc(line, isHan) {
			continue
		}
		l.seen[line] = true
		l.list = append(l.list, line)
	}
}

func isHan(r rune) bool { return unicode.Is(unicode.Han, r) }

func gunzip(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	z, err := gzip.NewReader(f)
	if err != nil {
		return nil, err
	}
	return io.ReadAll(z)
}

// reference runs the opencc command on lines, one per line as its CLI
// reads standard input, and returns its output lines.
func reference(t testing.TB, config string, in []string) []string {
	t.Helper()
	bin, err := exec.LookPath("opencc")
	if err != nil {
		t.Fatal("the reference opencc command is not installed: apt-get install -y opencc")
	}
	cfg := filepath.Join("/usr/share/opencc", config+".json")
	cmd := exec.Command(bin, "-c", cfg)
	cmd.Stdin = strings.NewReader(strings.Join(in, "\n") + "\n")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("opencc -c %s: %v: %s", cfg, err, stderr.String())
	}
	got := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
	if len(got) != len(in) {
		t.Fatalf("opencc -c %s: %d lines in, %d out", cfg, len(in), len(got))
	}
	return got
}

// corpusFor returns the corpus lines written in the script config converts from.
func corpusFor(c corpus, config string) []string {
	if strings.HasPrefix(config, "s2") {
		return c.simplified
	}
	return c.traditional
}

func TestMatchesReferenceOnCorpus(t *testing.T) {
	c := loadCorpus(t)
	t.Logf("corpus: %d zh_CN lines (%d bytes), %d zh_TW lines (%d bytes)",
		len(c.simplified), size(c.simplified), len(c.traditional), size(c.traditional))
	for _, config := range Configs() {
		if config == "s2hk-finance" {
			// The library's own config: the reference has none to compare.
			continue
		}
		// Every other config must be compared: a reference install that
		// lacks one would otherwise pass while comparing nothing.
		if _, err := os.Stat(filepath.Join("/usr/share/opencc", config+".json")); err != nil {
			t.Errorf("%s: the reference opencc has no such config (%v): install the Debian package opencc (make test does)", config, err)
			continue
		}
		t.Run(config, func(t *testing.T) {
			t.Parallel()
			conv, err := Load(config)
			if err != nil {
				t.Fatal(err)
			}
			in := corpusFor(c, config)
			want := reference(t, config, in)
			var diffs []string
			for i, line := range in {
				if got := conv.Convert(line); got != want[i] {
					diffs = append(diffs, fmt.Sprintf("in:   %s\n  got:  %s\n  want: %s", line, got, want[i]))
				}
			}
			if len(in) == 0 {
				t.Fatalf("%s: no corpus line to compare", config)
			}
			agree := 1 - float64(len(diffs))/float64(len(in))
			t.Logf("%s: compared %d lines, %d differ, agreement %.4f%%", config, len(in), len(diffs), 100*agree)
			if agree < minAgreement {
				t.Errorf("%s agrees with the reference on %.4f%% of lines, want %.1f%%; first differences:\n  %s",
					config, 100*agree, 100*minAgreement, strings.Join(diffs[:min(len(diffs), 10)], "\n  "))
			}
		})
	}
}

func size(lines []string) int {
	n := 0
	for _, l := range lines {
		n += len(l) + 1
	}
	return n
}
