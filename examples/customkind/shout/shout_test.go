package shout

import (
	"strings"
	"testing"
)

// However the answer is cut into chunks, the stream's output is the whole
// answer's.
func TestStreamEqualsWhole(t *testing.T) {
	text := "Version 3.5 is out. Try it.\nIt works."
	want := "VERSION 3.5 IS OUT! TRY IT!\nIT WORKS!"
	for size := 1; size <= len(text); size++ {
		s := (&Filter{mark: "!"}).NewStream()
		var out strings.Builder
		for i := 0; i < len(text); i += size {
			out.WriteString(s.Write(text[i:min(i+size, len(text))]))
		}
		out.WriteString(s.Flush())
		if out.String() != want {
			t.Fatalf("chunks of %d: %q, want %q", size, out.String(), want)
		}
	}
}
