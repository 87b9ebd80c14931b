package opencc

import (
	"embed"
	"fmt"
	"strings"
	"sync"
	"unicode/utf8"
)

//go:generate go run ./internal/gendict -out data

// data holds the dictionaries, one "key<TAB>value" line per entry, sorted by
// key. internal/gendict writes them from the library's files; see there for
// what it changes and why.
//
//go:embed data/*.txt
var data embed.FS

// noRune stands for a byte that is not part of valid UTF-8. It is above
// utf8.MaxRune, so no key holds it, and it fits the trie's 21-bit rune field.
const noRune = 1<<21 - 1

// A trie is one dictionary as a prefix tree of runes. Its edges live in one
// open-addressing hash table: each slot packs parent node, rune and child node
// into a uint64, so a step costs one multiply and, mostly, one memory access.
type trie struct {
	name  string
	slots []uint64
	shift uint // 64 - log2(len(slots))
	// nodes holds, per node, the index+1 of its value (0: no key ends here)
	// and hasChildren: a walk on a node without children is decided without
	// reading further, which keeps what a stream holds back short.
	nodes  []uint32
	values []string
	// keys are sorted; the keys that extend a prefix form one range of them.
	keys []string
}

const (
	hasChildren = 1 << 31
	fieldBits   = 21
	fieldMask   = 1<<fieldBits - 1
	slotUsed    = 1 << 63
	maxNodes    = 1 << fieldBits
)

func slotKey(parent uint32, r rune) uint64 { return uint64(parent)<<fieldBits | uint64(r) }

func (t *trie) slot(key uint64) int {
	return int((key * 0x9E3779B97F4A7C15) >> t.shift)
}

// child returns the node under n along r.
func (t *trie) child(n uint32, r rune) (uint32, bool) {
	key := slotKey(n, r)
	mask := len(t.slots) - 1
	for i := t.slot(key); ; i = (i + 1) & mask {
		e := t.slots[i]
		if e == 0 {
			return 0, false
		}
		if (e>>fieldBits)&(1<<(2*fieldBits)-1) == key {
			return uint32(e & fieldMask), true
		}
	}
}

// decode returns the rune at the start of s and its length; a byte that does
// not start valid UTF-8 is one unit of its own, noRune.
func decode(s string) (rune, int) {
	c := s[0]
	if c < utf8.RuneSelf {
		return rune(c), 1
	}
	// Han characters take three bytes; decode those here, where it inlines.
	// The lead bytes E0 and ED restrict the second byte; let the library
	// judge them.
	if c >= 0xE1 && c <= 0xEF && c != 0xED && len(s) >= 3 {
		if c1, c2 := s[1], s[2]; c1&0xC0 == 0x80 && c2&0xC0 == 0x80 {
			return rune(c&0x0F)<<12 | rune(c1&0x3F)<<6 | rune(c2&0x3F), 3
		}
	}
	r, n := utf8.DecodeRuneInString(s)
	if r == utf8.RuneError && n == 1 {
		return noRune, 1
	}
	return r, n
}

// match finds the longest key that is a prefix of s. It returns its length in
// bytes (0 if none) with the index of its value, and open: whether more text
// after s could change the answer (the walk had not ended when s did).
func (t *trie) match(s string) (n, v int, open bool) {
	node := uint32(0)
	for i := 0; ; {
		info := t.nodes[node]
		if info&hasChildren == 0 {
			return n, v, false
		}
		if i == len(s) || (len(s)-i < utf8.UTFMax && !utf8.FullRuneInString(s[i:])) {
			return n, v, true
		}
		r, size := decode(s[i:])
		next, ok := t.child(node, r)
		if !ok {
			return n, v, false
		}
		node = next
		i += size
		if val := t.nodes[node] &^ hasChildren; val != 0 {
			n, v = i, int(val-1)
		}
	}
}

// extensions returns the range of keys that have s as a proper prefix.
func (t *trie) extensions(s string) (first, last int) {
	lo, hi := 0, len(t.keys)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if t.keys[m] <= s {
			lo = m + 1
		} else {
			hi = m
		}
	}
	end := lo
	for end < len(t.keys) && strings.HasPrefix(t.keys[end], s) {
		end++
	}
	return lo, end
}

// parseTrie builds a trie from "key<TAB>value" lines. Keys and values are
// substrings of text, which is never copied.
func parseTrie(name, text string) (*trie, error) {
	lines := strings.Count(text, "\n")
	t := &trie{
		name:   name,
		keys:   make([]string, 0, lines),
		values: make([]string, 0, lines),
	}
	runes := 0
	for rest := text; rest != ""; {
		line, tail, _ := strings.Cut(rest, "\n")
		rest = tail
		key, value, ok := strings.Cut(line, "\t")
		if !ok || key == "" || value == "" || !utf8.ValidString(key) {
			return nil, fmt.Errorf("dictionary %s: malformed line %q", name, line)
		}
		t.keys = append(t.keys, key)
		t.values = append(t.values, value)
		runes += utf8.RuneCountInString(key)
	}
	if runes+1 > maxNodes {
		return nil, fmt.Errorf("dictionary %s: too large", name)
	}
	size := 2
	for size < 2*(runes+1) {
		size *= 2
	}
	t.slots = make([]uint64, size)
	t.shift = uint(64 - (bitLen(size) - 1))
	t.nodes = make([]uint32, 1, runes+1)
	for i, key := range t.keys {
		if i > 0 && key <= t.keys[i-1] {
			return nil, fmt.Errorf("dictionary %s: keys not sorted and unique at %q", name, key)
		}
		node := uint32(0)
		for _, r := range key {
			node = t.insert(node, r)
		}
		t.nodes[node] |= uint32(i + 1)
	}
	return t, nil
}

func bitLen(n int) int {
	b := 0
	for ; n > 0; n >>= 1 {
		b++
	}
	return b
}

func (t *trie) insert(parent uint32, r rune) uint32 {
	if n, ok := t.child(parent, r); ok {
		return n
	}
	n := uint32(len(t.nodes))
	t.nodes = append(t.nodes, 0)
	t.nodes[parent] |= hasChildren
	key := slotKey(parent, r)
	mask := len(t.slots) - 1
	i := t.slot(key)
	for t.slots[i] != 0 {
		i = (i + 1) & mask
	}
	t.slots[i] = slotUsed | key<<fieldBits | uint64(n)
	return n
}

// dictionaries loads each dictionary once per process; configurations share
// them (STPhrases alone serves five).
var dictionaries struct {
	mu    sync.Mutex
	tries map[string]*trie
}

func loadTrie(name string) (*trie, error) {
	dictionaries.mu.Lock()
	defer dictionaries.mu.Unlock()
	if t, ok := dictionaries.tries[name]; ok {
		return t, nil
	}
	b, err := data.ReadFile("data/" + name + ".txt")
	if err != nil {
		return nil, fmt.Errorf("dictionary %s: %w", name, err)
	}
	t, err := parseTrie(name, string(b))
	if err != nil {
		return nil, err
	}
	if dictionaries.tries == nil {
		dictionaries.tries = make(map[string]*trie)
	}
	dictionaries.tries[name] = t
	return t, nil
}
