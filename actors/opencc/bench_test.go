package opencc

import (
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	longbridge "github.com/longbridgeapp/opencc"
)

// blockSize is the text one benchmark operation converts.
const blockSize = 64 << 10

// benchBlock returns the first 64 KiB (cut at a line end) of the corpus
// text written in the script config converts from.
func benchBlock(b *testing.B, config string) string {
	b.Helper()
	var text strings.Builder
	for _, line := range corpusFor(loadCorpus(b), config) {
		if text.Len()+len(line)+1 > blockSize {
			break
		}
		text.WriteString(line)
		text.WriteByte('\n')
	}
	return text.String()
}

var benchConfigs = []string{"s2twp", "s2t", "t2s"}

func reportRunes(b *testing.B, s string) {
	b.SetBytes(int64(len(s)))
	b.ReportMetric(float64(utf8.RuneCountInString(s))*float64(b.N)/b.Elapsed().Seconds(), "runes/s")
}

func BenchmarkConvert(b *testing.B) {
	for _, config := range benchConfigs {
		b.Run(config, func(b *testing.B) {
			c := mustLoad(b, config)
			block := benchBlock(b, config)
			b.ReportAllocs()
			for b.Loop() {
				c.Convert(block)
			}
			reportRunes(b, block)
		})
	}
}

// BenchmarkStream converts the same block as BenchmarkConvert, arriving in
// chunks of 1 to 4 runes as from a model.
func BenchmarkStream(b *testing.B) {
	for _, config := range benchConfigs {
		b.Run(config, func(b *testing.B) {
			c := mustLoad(b, config)
			block := benchBlock(b, config)
			chunks := runeChunks(rand.New(rand.NewPCG(1, 1)), block, 4)
			st := c.NewStream()
			b.ReportAllocs()
			for b.Loop() {
				for _, chunk := range chunks {
					st.Write(chunk)
				}
				st.Flush()
			}
			reportRunes(b, block)
			b.ReportMetric(float64(len(chunks)), "chunks/op")
		})
	}
}

// BenchmarkLongbridge is github.com/longbridgeapp/opencc, the library whose
// dictionaries Troupe uses, on the same block.
func BenchmarkLongbridge(b *testing.B) {
	for _, config := range benchConfigs {
		b.Run(config, func(b *testing.B) {
			cc, err := longbridge.New(config)
			if err != nil {
				b.Fatal(err)
			}
			block := benchBlock(b, config)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := cc.Convert(block); err != nil {
					b.Fatal(err)
				}
			}
			reportRunes(b, block)
		})
	}
}

// BenchmarkReference times the reference C++ library through its opencc
// command: each operation converts the same block, taken from a run on many
// copies of it less a run on none, so start-up and dictionary loading do not
// count.
func BenchmarkReference(b *testing.B) {
	bin, err := exec.LookPath("opencc")
	if err != nil {
		b.Fatal("the reference opencc command is not installed: apt-get install -y opencc")
	}
	const copies = 32
	for _, config := range benchConfigs {
		b.Run(config, func(b *testing.B) {
			block := benchBlock(b, config)
			dir := b.TempDir()
			empty, many := filepath.Join(dir, "empty"), filepath.Join(dir, "many")
			if err := os.WriteFile(empty, nil, 0o644); err != nil {
				b.Fatal(err)
			}
			if err := os.WriteFile(many, []byte(strings.Repeat(block, copies)), 0o644); err != nil {
				b.Fatal(err)
			}
			run := func(input string) time.Duration {
				in, err := os.Open(input)
				if err != nil {
					b.Fatal(err)
				}
				defer in.Close()
				cmd := exec.Command(bin, "-c", filepath.Join("/usr/share/opencc", config+".json"))
				cmd.Stdin = in
				start := time.Now()
				if err := cmd.Run(); err != nil {
					b.Fatal(err)
				}
				return time.Since(start)
			}
			var total time.Duration
			for i := 0; i < b.N; i += copies {
				total += max(0, run(many)-run(empty))
			}
			runes := float64(utf8.RuneCountInString(block))
			perBlock := float64(total) / float64((b.N+copies-1)/copies*copies)
			b.ReportMetric(perBlock, "ns/op")
			b.ReportMetric(runes/perBlock*1e9, "runes/s")
			b.ReportMetric(float64(len(block))/perBlock*1e3, "MB/s")
		})
	}
}
