package opencc

import (
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"
)

// samplePath is real Chinese text (zh_CN gettext messages).
const samplePath = "testdata/zh-sample.txt"

func readSample(t testing.TB) string {
	t.Helper()
	b, err := os.ReadFile(samplePath)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// runeChunks cuts s into chunks of 1 to maxRunes runes.
func runeChunks(rng *rand.Rand, s string, maxRunes int) []string {
	var chunks []string
	for s != "" {
		n, i := 1+rng.IntN(maxRunes), 0
		for ; n > 0 && i < len(s); n-- {
			_, size := utf8.DecodeRuneInString(s[i:])
			i += size
		}
		chunks = append(chunks, s[:i])
		s = s[i:]
	}
	return chunks
}

// byteChunks cuts s anywhere, inside UTF-8 sequences too.
func byteChunks(rng *rand.Rand, s string, maxBytes int) []string {
	var chunks []string
	for s != "" {
		n := min(len(s), 1+rng.IntN(maxBytes))
		chunks = append(chunks, s[:n])
		s = s[n:]
	}
	return chunks
}

// streamed converts chunks with one stream and checks that every Write
// returns whole UTF-8 wherever the input had it.
func streamed(t testing.TB, st *Stream, chunks []string) string {
	t.Helper()
	var b strings.Builder
	for _, c := range chunks {
		b.WriteString(st.Write(c))
	}
	b.WriteString(st.Flush())
	return b.String()
}

// Naive chunk-by-chunk conversion turns 鼠|标 into 鼠標 instead of 滑鼠; a
// stream must give the whole-text result for every cut.
func TestStreamEqualsWholeOnSample(t *testing.T) {
	text := readSample(t)
	rng := rand.New(rand.NewPCG(1, 2))
	for _, config := range Configs() {
		t.Run(config, func(t *testing.T) {
			c := mustLoad(t, config)
			want := c.Convert(text)
			st := c.NewStream()
			for round := range 20 {
				var chunks []string
				if round%2 == 0 {
					chunks = runeChunks(rng, text, 4)
				} else {
					chunks = byteChunks(rng, text, 12)
				}
				if got := streamed(t, st, chunks); got != want {
					t.Fatalf("round %d: streamed output differs from whole-text output at byte %d",
						round, commonPrefix(got, want))
				}
			}
		})
	}
}

func TestStreamMouse(t *testing.T) {
	c := mustLoad(t, "s2twp")
	st := c.NewStream()
	first := st.Write("点击鼠")
	second := st.Write("标")
	rest := st.Flush()
	if first+second+rest != "點選滑鼠" {
		t.Errorf("got %q + %q + %q, want 點選滑鼠", first, second, rest)
	}
	if strings.Contains(first, "鼠") {
		t.Errorf("first Write %q gave out 鼠 before knowing the next rune", first)
	}
}

func TestStreamWritesWholeRunes(t *testing.T) {
	c := mustLoad(t, "s2t")
	st := c.NewStream()
	text := "鼠标和键盘，还有显示器。"
	for i := 0; i < len(text); i++ {
		if out := st.Write(text[i : i+1]); !utf8.ValidString(out) {
			t.Fatalf("Write returned a cut rune: %q", out)
		}
	}
	if out := st.Flush(); !utf8.ValidString(out) {
		t.Fatalf("Flush returned %q", out)
	}
}

func TestStreamReuseAfterFlush(t *testing.T) {
	c := mustLoad(t, "s2twp")
	st := c.NewStream()
	for range 3 {
		if got := streamed(t, st, []string{"U", "盘和鼠", "标"}); got != "隨身碟和滑鼠" {
			t.Fatalf("got %q", got)
		}
	}
}

// FuzzStreamEqualsWhole feeds arbitrary bytes in arbitrary chunks: no panic,
// no text lost or doubled, and the stream gives the whole-text output.
func FuzzStreamEqualsWhole(f *testing.F) {
	f.Add("鼠标", uint64(1), uint8(0))
	f.Add("打开U盘和SQL注入攻击", uint64(7), uint8(6))
	f.Add("善有善报恶有恶报若然不报时晨未到", uint64(3), uint8(0))
	f.Add("后\xff面\xe4\xb8\x00后", uint64(5), uint8(2))
	f.Add("電腦軟體與SQL隱碼攻擊", uint64(9), uint8(12))
	names := Configs()
	f.Fuzz(func(t *testing.T, text string, seed uint64, config uint8) {
		c := mustLoad(t, names[int(config)%len(names)])
		want := c.Convert(text)
		if utf8.ValidString(text) && !utf8.ValidString(want) {
			t.Fatalf("Convert(%q) = %q, not UTF-8", text, want)
		}
		rng := rand.New(rand.NewPCG(seed, seed>>32))
		st := c.NewStream()
		for _, chunks := range [][]string{byteChunks(rng, text, 5), runeChunks(rng, text, 4)} {
			if got := streamed(t, st, chunks); got != want {
				t.Fatalf("%s: chunks %q give %q, whole text %q", c.Name(), chunks, got, want)
			}
		}
	})
}

// FuzzConvertKeepsText checks on arbitrary bytes that text no dictionary
// knows passes through: removing all runes of the dictionaries' keys leaves
// input and output equal.
func FuzzConvertKeepsText(f *testing.F) {
	f.Add("abc\xff\x00 def")
	f.Add("后\xe4\xb8")
	c := mustLoad(f, "s2twp")
	known := dictRunes(c)
	f.Fuzz(func(t *testing.T, text string) {
		out := c.Convert(text)
		if strip(known, text) != strip(known, out) {
			t.Fatalf("Convert(%q) = %q changed text outside the dictionaries", text, out)
		}
	})
}

// dictRunes returns the runes in the keys and values of c's dictionaries.
func dictRunes(c *Converter) map[rune]bool {
	known := make(map[rune]bool)
	for _, g := range append([]group{{c.seg}}, c.chain...) {
		for _, t := range g {
			for _, s := range append(slices.Clone(t.keys), t.values...) {
				for _, r := range s {
					known[r] = true
				}
			}
		}
	}
	return known
}

// strip keeps the bytes that are invalid UTF-8 and the runes that are not
// in known.
func strip(known map[rune]bool, s string) string {
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if (r == utf8.RuneError && size == 1) || !known[r] {
			b.WriteString(s[i : i+size])
		}
		i += size
	}
	return b.String()
}

// held returns how many runes of output s holds back: what a Flush now
// would return, without flushing s.
func (s *Stream) held() int {
	clone := *s
	clone.in = slices.Clone(s.in)
	clone.w.pend = make([][]byte, len(s.w.pend))
	for i, p := range s.w.pend {
		clone.w.pend[i] = slices.Clone(p)
	}
	clone.free = nil
	return utf8.RuneCountInString(clone.Flush())
}

// holdback streams text in chunks of 1 to 4 runes and returns the mean and
// largest number of runes held back after a Write, and the output.
func holdback(c *Converter, text string) (mean float64, most int, out string) {
	st := c.NewStream()
	var b strings.Builder
	total, writes := 0, 0
	for _, chunk := range runeChunks(rand.New(rand.NewPCG(3, 4)), text, 4) {
		b.WriteString(st.Write(chunk))
		h := st.held()
		total += h
		most = max(most, h)
		writes++
	}
	b.WriteString(st.Flush())
	return float64(total) / float64(writes), most, b.String()
}

// The stream holds back less than a rune on average, and never more than
// ten, on the corpus (its first 300 KB, to keep the test quick).
func TestHoldback(t *testing.T) {
	c := loadCorpus(t)
	for _, config := range Configs() {
		text := strings.Join(corpusFor(c, config), "\n")
		text = strings.ToValidUTF8(text[:min(len(text), 300<<10)], "")
		conv := mustLoad(t, config)
		mean, most, out := holdback(conv, text)
		if want := conv.Convert(text); out != want {
			t.Errorf("%s: streamed corpus differs from whole-text output at byte %d", config, commonPrefix(out, want))
		}
		t.Logf("%s: mean %.2f runes, max %d", config, mean, most)
		if mean > 1 || most > 10 {
			t.Errorf("%s holds back %.2f runes on average, %d at most; want at most 1 and 10", config, mean, most)
		}
	}
}

// Streaming each phrase of the segmentation dictionary a rune at a time is
// the worst the dictionaries can force.
func TestHoldbackOnPhrases(t *testing.T) {
	c := mustLoad(t, "s2twp")
	st := c.NewStream()
	var in, out strings.Builder
	most, worst := 0, ""
	for _, key := range c.seg.keys {
		for _, r := range key {
			in.WriteRune(r)
			out.WriteString(st.Write(string(r)))
			if h := st.held(); h > most {
				most, worst = h, key
			}
		}
		in.WriteString("。")
		out.WriteString(st.Write("。"))
	}
	out.WriteString(st.Flush())
	if out.String() != c.Convert(in.String()) {
		t.Error("streamed phrases differ from their whole-text conversion")
	}
	t.Logf("s2twp: at most %d runes held back, in %s", most, worst)
	if most > 10 {
		t.Errorf("s2twp holds back %d runes in %s, want at most 10", most, worst)
	}
}
