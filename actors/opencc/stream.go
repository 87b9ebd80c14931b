package opencc

import "unsafe"

// A Stream converts text that arrives in chunks, such as a model's streamed
// answer, with the same result as converting the whole text at once. It holds
// back only what the dictionaries leave undecided: the start of a phrase that
// the next chunk may complete, or a UTF-8 sequence cut in two. A Stream is
// for one text at a time and not safe for concurrent use.
type Stream struct {
	c  *Converter
	in []byte // input not yet decided by the segmentation
	w  work
	// ahead is how much output the stream has given for in before the
	// segmentation of in was decided: its start, which every continuation
	// shares (see Converter.settled).
	ahead int
	// free is the unused end of the buffer that outputs are written to.
	// Returned strings point into the buffer, and bytes once returned are
	// never written again, so one allocation serves many small outputs.
	free  []byte
	arena int // the size of the last buffer
}

// Output buffers start small, because most answers are short and every chat
// in flight holds one, and double up to a few hundred outputs of a model's
// typical chunk for long streams.
const (
	arenaMin = 256
	arenaMax = 4 << 10
)

// NewStream returns a streaming converter; each chat needs its own.
func (c *Converter) NewStream() *Stream {
	return &Stream{c: c}
}

// Write takes the next chunk (any bytes, which may cut UTF-8 sequences) and
// returns the output that is now final, possibly "".
func (s *Stream) Write(chunk string) string {
	s.in = append(s.in, chunk...)
	return s.convert(false)
}

// Flush returns everything held back; the stream is then reset for reuse.
func (s *Stream) Flush() string {
	return s.convert(true)
}

func (s *Stream) convert(final bool) string {
	// Output is rarely longer than twice the input; when it is, append
	// moves it to a new array, which is correct and merely slower.
	if need := 2*len(s.in) + 16; cap(s.free) < need {
		s.arena = min(max(2*s.arena, arenaMin), arenaMax)
		s.free = make([]byte, 0, max(s.arena, need))
	}
	out, used := s.c.convert(&s.w, s.free, view(s.in), final)
	skip := min(s.ahead, len(out))
	s.ahead -= skip
	if tail := view(s.in[used:]); !final && len(tail) >= settleFrom {
		if settled, closes := s.c.settled(tail); len(settled) > s.ahead && (closes || !s.w.pending()) {
			if s.w.pending() {
				out = s.c.applyChain(&s.w, out, s.c.runChain, "", true)
			}
			out = append(out, settled[s.ahead:]...)
			s.ahead = len(settled)
		}
	}
	if final {
		s.ahead = 0
	}
	s.in = s.in[:copy(s.in, s.in[used:])]
	s.free = out[len(out):]
	out = out[skip:]
	if len(out) == 0 {
		return ""
	}
	return unsafe.String(unsafe.SliceData(out), len(out))
}
