package opencc

import (
	"sync"
	"unicode/utf8"
	"unsafe"
)

// A Converter converts text the way the reference OpenCC does for one config.
// It is immutable once loaded and safe for concurrent use.
type Converter struct {
	name  string
	seg   *trie
	chain []group
	// runChain is chain as it applies to text the segmentation matched
	// nothing in: when the first stage starts with the segmentation
	// dictionary, that dictionary cannot match there either.
	runChain []group
	// segOut is, per segmentation key (by value index), the key's output
	// through the whole chain: a matched segment is converted on its own,
	// so its output never depends on its neighbours.
	segOut []string
	// inert marks ASCII bytes that are in no key of any dictionary of the
	// config: they pass through unchanged and no match spans them.
	inert [2]uint64
}

// A group is one stage of the chain: the first dictionary with any match at
// a position wins there, with its longest match (OpenCC's DictGroup).
type group []*trie

func newConverter(name string, cfg config) (*Converter, error) {
	c := &Converter{name: name}
	var err error
	if c.seg, err = loadTrie(cfg.seg); err != nil {
		return nil, err
	}
	all := []*trie{c.seg}
	for _, names := range cfg.chain {
		var g group
		for _, n := range names {
			t, err := loadTrie(n)
			if err != nil {
				return nil, err
			}
			g = append(g, t)
			all = append(all, t)
		}
		c.chain = append(c.chain, g)
	}
	c.runChain = append([]group(nil), c.chain...)
	if first := c.chain[0]; first[0] == c.seg && len(first) > 1 {
		c.runChain[0] = first[1:]
	}
	for b := 0; b < utf8.RuneSelf; b++ {
		c.inert[b>>6] |= 1 << (b & 63)
	}
	for _, t := range all {
		for _, k := range t.keys {
			for i := 0; i < len(k); i++ {
				if b := k[i]; b < utf8.RuneSelf {
					c.inert[b>>6] &^= 1 << (b & 63)
				}
			}
		}
	}
	var w work
	var out []byte
	c.segOut = make([]string, len(c.seg.keys))
	for i, k := range c.seg.keys {
		out = c.applyChain(&w, out[:0], c.chain, k, true)
		c.segOut[i] = string(out)
	}
	return c, nil
}

func (c *Converter) isInert(b byte) bool {
	return b < utf8.RuneSelf && c.inert[b>>6]&(1<<(b&63)) != 0
}

// Name returns the config name the converter was loaded for.
func (c *Converter) Name() string { return c.name }

// Convert returns s converted as a whole. Bytes that are not valid UTF-8
// pass through unchanged.
func (c *Converter) Convert(s string) string {
	w := workPool.Get().(*work)
	dst := make([]byte, 0, len(s)+len(s)/8+16)
	dst, _ = c.convert(w, dst, s, true)
	workPool.Put(w)
	return unsafe.String(unsafe.SliceData(dst), len(dst))
}

// work is the scratch state of one conversion: for a stream, also the text
// of an unmatched run that its stages have not decided on yet.
type work struct {
	pend [][]byte // per stage: input it has not converted yet
	a, b []byte   // stage outputs, alternating
}

// pending reports whether an unmatched run has text the stages hold back.
func (w *work) pending() bool {
	for _, p := range w.pend {
		if len(p) > 0 {
			return true
		}
	}
	return false
}

var workPool = sync.Pool{New: func() any { return new(work) }}

// view returns b as a string without copying; the caller must not change b
// while the string is in use.
func view(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }

// convert appends the conversion of s to dst. Unless final, it stops where
// the output could still depend on text after s, and returns how much of s
// it consumed; what the stages of an unfinished unmatched run still hold
// stays in w.
func (c *Converter) convert(w *work, dst []byte, s string, final bool) ([]byte, int) {
	run := -1 // start of the unmatched run within s
	i := 0
	for i < len(s) {
		if c.isInert(s[i]) {
			// No match spans an inert byte: the run before it ends here.
			if run >= 0 {
				dst = c.applyChain(w, dst, c.runChain, s[run:i], true)
				run = -1
			} else if w.pending() {
				dst = c.applyChain(w, dst, c.runChain, "", true)
			}
			j := i + 1
			for j < len(s) && c.isInert(s[j]) {
				j++
			}
			dst = append(dst, s[i:j]...)
			i = j
			continue
		}
		n, v, open := c.seg.match(s[i:])
		if open && !final {
			break
		}
		if n == 0 {
			if run < 0 {
				run = i
			}
			_, size := decode(s[i:])
			i += size
			continue
		}
		if run >= 0 {
			dst = c.applyChain(w, dst, c.runChain, s[run:i], true)
			run = -1
		} else if w.pending() {
			dst = c.applyChain(w, dst, c.runChain, "", true)
		}
		dst = append(dst, c.segOut[v]...)
		i += n
	}
	if run >= 0 {
		dst = c.applyChain(w, dst, c.runChain, s[run:i], final)
	} else if final && w.pending() {
		dst = c.applyChain(w, dst, c.runChain, "", true)
	}
	return dst, i
}

// applyChain passes s, the next text of one segment, through the stages of
// chain and appends what comes out to dst. Unless final (the segment ends
// with s), each stage keeps in w what it cannot decide on yet.
func (c *Converter) applyChain(w *work, dst []byte, chain []group, s string, final bool) []byte {
	if len(w.pend) < len(chain) {
		w.pend = make([][]byte, len(chain))
	}
	in := s
	for k, g := range chain {
		src := in
		if len(w.pend[k]) > 0 {
			w.pend[k] = append(w.pend[k], in...)
			src = view(w.pend[k])
		}
		var out []byte
		switch {
		case k == len(chain)-1:
			out = dst
		case k%2 == 0:
			out = w.a[:0]
		default:
			out = w.b[:0]
		}
		out, used := g.convert(out, src, final)
		if rest := src[used:]; len(w.pend[k]) > 0 {
			w.pend[k] = w.pend[k][:copy(w.pend[k], rest)]
		} else if rest != "" {
			w.pend[k] = append(w.pend[k], rest...)
		}
		switch {
		case k == len(chain)-1:
			dst = out
		case k%2 == 0:
			w.a, in = out, view(out)
		default:
			w.b, in = out, view(out)
		}
	}
	return dst
}

// convert appends the conversion of s by greedy longest match to dst. Unless
// final, it stops where a match could still depend on text after s, and
// returns how much of s it consumed.
func (g group) convert(dst []byte, s string, final bool) ([]byte, int) {
	i := 0
next:
	for i < len(s) {
		for _, t := range g {
			n, v, open := t.match(s[i:])
			if open && !final {
				return dst, i
			}
			if n > 0 {
				dst = append(dst, t.values[v]...)
				i += n
				continue next
			}
		}
		_, size := decode(s[i:])
		dst = append(dst, s[i:i+size]...)
		i += size
	}
	return dst, i
}

// settleFrom is the length in bytes of undecided text from which a stream
// looks for output that every continuation shares: below it, waiting costs
// less than looking.
const settleFrom = 4 * 3

// maxFutures bounds the phrases settled weighs at one position.
const maxFutures = 64

// settled returns the output that every continuation of s starts with,
// where s is text the segmentation has not decided on: its start could begin
// one of some longer phrases. Each continuation either completes one of
// them, whose output is known, or none, and then the segmentation goes on as
// if s ended there, where the same question may come up again. The answer
// ends on a whole rune. closes reports that a phrase starts at s in every
// continuation, so that an unmatched run before s ends there.
func (c *Converter) settled(s string) (out string, closes bool) {
	n, _, _ := c.seg.match(s)
	b := c.settle(s, 0, nil)
	for !endsWhole(view(b)) {
		b = b[:len(b)-1]
	}
	return string(b), n > 0
}

// settle appends to out the output every continuation of s starts with,
// where s[:run] is an unmatched run.
func (c *Converter) settle(s string, run int, out []byte) []byte {
	var w work
	for {
		if run == len(s) {
			// Only what the stages have decided on is known of a run
			// that may go on.
			return c.applyChain(&w, out, c.runChain, s, false)
		}
		n, v, open := c.seg.match(s[run:])
		if open && !endsWhole(s) {
			return c.applyChain(&w, out, c.runChain, s[:run], false)
		}
		if !open {
			if n == 0 {
				_, size := decode(s[run:])
				run += size
				continue
			}
			out = c.applyChain(&w, out, c.runChain, s[:run], true)
			out = append(out, c.segOut[v]...)
			s, run = s[run+n:], 0
			continue
		}
		first, last := c.seg.extensions(s[run:])
		if last-first > maxFutures {
			return c.applyChain(&w, out, c.runChain, s[:run], false)
		}
		// The continuations that complete none of the longer phrases.
		var common []byte
		if n == 0 {
			_, size := decode(s[run:])
			common = c.settle(s, run+size, nil)
		} else {
			common = c.applyChain(&w, nil, c.runChain, s[:run], true)
			common = append(common, c.segOut[v]...)
			common = c.settle(s[run+n:], 0, common)
		}
		// The ones that complete a longer phrase end the run before it.
		closed := c.applyChain(&w, nil, c.runChain, s[:run], true)
		for k := first; k < last; k++ {
			p := commonPrefix(view(common), view(closed))
			if p == len(closed) {
				p += commonPrefix(view(common[p:]), c.segOut[k])
			}
			common = common[:p]
		}
		return append(out, common...)
	}
}

// endsWhole reports whether s does not end inside a UTF-8 sequence.
func endsWhole(s string) bool {
	for i := len(s) - 1; i >= 0 && i >= len(s)-utf8.UTFMax; i-- {
		if utf8.RuneStart(s[i]) {
			return utf8.FullRuneInString(s[i:])
		}
	}
	return true
}

func commonPrefix(a, b string) int {
	i := 0
	for i < len(a) && i < len(b) && a[i] == b[i] {
		i++
	}
	return i
}
