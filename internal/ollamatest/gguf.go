package ollamatest

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"math"
	"os"
)

// The shape of the tiny model. It is tiny, yet a real transformer of
// llama.cpp's llama architecture (attention with several heads, a gated
// feed-forward, RMS norms, rotary positions), so a
// test exercises the same code paths as a real model, in 460 KiB and at
// 1,000 to 2,000 tokens per second on one core.
const (
	nEmbd     = 64 // width of the residual stream
	nHead     = 4  // attention heads (and key/value heads: no grouping)
	nHeadDim  = nEmbd / nHead
	nFF       = 128   // width of the feed-forward layer
	nLayer    = 2     // transformer blocks
	nCtxTrain = 32768 // the context it declares: Ollama serves no more

	// nVocab is <unk>, <s>, </s> and the 256 byte tokens <0x00>..<0xFF>.
	nVocab  = 3 + 256
	unkID   = 0
	bosID   = 1
	eosID   = 2
	byteTok = 3 // id of <0x00>; byte b is token byteTok+b
)

// Residual dimension guardDim is held constant: every token embedding has
// guardValue there, and no block writes to it (its rows of attn_output and
// ffn_down are zero). After the final RMS norm it is therefore always
// positive, and the tokens whose row of output.weight has guardWeight on it
// get a logit so negative that sampling never picks them, whatever the
// random weights say elsewhere.
const (
	guardDim    = 0
	guardValue  = 1.0
	guardWeight = -1000.0
)

// seed fixes the weights: WriteModel writes the same bytes on every call,
// so an answer sampled with a fixed seed is the same on every run.
const seed = 0x7ea7_0001_1a3a_5eed

// GGUF metadata value types (gguf.md in the ggml repository).
const (
	ggufUint32  = 4
	ggufInt32   = 5
	ggufFloat32 = 6
	ggufBool    = 7
	ggufString  = 8
	ggufArray   = 9

	ggmlTypeF32 = 0
	alignment   = 32 // general.alignment's default
)

// allowed reports whether the model may generate token id. Only printable
// ASCII bytes are allowed:
//   - a byte of 0x80 and above can leave UTF-8 incomplete, and Ollama holds
//     such output back, so an answer would lose tokens unpredictably;
//   - control bytes would make answers awkward to compare and print;
//   - </s> would end an answer early: without it an answer always runs to
//     max_tokens, so its length is known;
//   - <unk> and <s> are not text.
//
// Each generated token is then exactly one printable ASCII byte.
func allowed(id int) bool {
	if id < byteTok {
		return false
	}
	b := id - byteTok
	return b >= 0x20 && b < 0x7f
}

// WriteModel writes to path a GGUF v3 file of a tiny llama model with
// random F32 weights (always the same ones) that llama.cpp, and so Ollama,
// loads and generates with. A model need not be downloaded: the file is
// 469,472 bytes, generates 1,000 to 2,000 tokens per second on one core, and
// generates only printable ASCII, one byte per token, never ending before
// max_tokens. Its vocabulary is SentencePiece (tokenizer.ggml.model =
// "llama") with only <unk>, <s>, </s> and the 256 byte tokens, so any text
// tokenizes (byte by byte, through SentencePiece's byte fallback).
func WriteModel(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := &ggufWriter{w: bufio.NewWriter(f)}
	w.model()
	if w.err == nil {
		w.err = w.w.Flush()
	}
	if err := f.Close(); w.err == nil {
		w.err = err
	}
	if w.err != nil {
		os.Remove(path)
		return fmt.Errorf("ollamatest: write model: %w", w.err)
	}
	return nil
}

// tensor is one weight tensor. dims lists the fastest-varying dimension
// first, as GGUF does: a matrix mapping n inputs to m outputs is [n, m] and
// its data is m rows of n values.
type tensor struct {
	name string
	dims []uint64
	data []float32
}

// rng is splitmix64: tiny and self-contained, so the weights depend on
// nothing but this file.
type rng uint64

func (r *rng) next() uint64 {
	*r += 0x9e3779b97f4a7c15
	z := uint64(*r)
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// uniform returns n values uniform in [-a, a).
func (r *rng) uniform(n int, a float64) []float32 {
	v := make([]float32, n)
	for i := range v {
		u := float64(r.next()>>11) / (1 << 53) // [0, 1)
		v[i] = float32((2*u - 1) * a)
	}
	return v
}

// matrix returns an [in, out] matrix with a spread that keeps the scale of
// the activations (variance 1/in per weight).
func (r *rng) matrix(in, out int) []float32 {
	return r.uniform(in*out, math.Sqrt(3/float64(in)))
}

func ones(n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = 1
	}
	return v
}

// zeroRow zeroes output row row of an [in, out] matrix.
func zeroRow(m []float32, in, row int) {
	clear(m[row*in : (row+1)*in])
}

func tensors() []tensor {
	r := rng(seed)

	embd := r.uniform(nEmbd*nVocab, 1)
	for t := range nVocab {
		embd[t*nEmbd+guardDim] = guardValue
	}
	// Logits are about 2.5 wide: varied enough that temperature 1 keeps
	// answers from looping on one token (Ollama cuts an answer repeating a
	// token more than 30 times), peaked enough that they are not noise.
	out := r.uniform(nEmbd*nVocab, 0.55)
	for t := range nVocab {
		out[t*nEmbd+guardDim] = 0
		if !allowed(t) {
			out[t*nEmbd+guardDim] = guardWeight
		}
	}

	ts := []tensor{
		{"token_embd.weight", []uint64{nEmbd, nVocab}, embd},
		{"output_norm.weight", []uint64{nEmbd}, ones(nEmbd)},
		{"output.weight", []uint64{nEmbd, nVocab}, out},
	}
	for i := range nLayer {
		o := r.matrix(nEmbd, nEmbd)
		zeroRow(o, nEmbd, guardDim)
		down := r.matrix(nFF, nEmbd)
		zeroRow(down, nFF, guardDim)
		p := fmt.Sprintf("blk.%d.", i)
		ts = append(ts,
			tensor{p + "attn_norm.weight", []uint64{nEmbd}, ones(nEmbd)},
			tensor{p + "attn_q.weight", []uint64{nEmbd, nEmbd}, r.matrix(nEmbd, nEmbd)},
			tensor{p + "attn_k.weight", []uint64{nEmbd, nEmbd}, r.matrix(nEmbd, nEmbd)},
			tensor{p + "attn_v.weight", []uint64{nEmbd, nEmbd}, r.matrix(nEmbd, nEmbd)},
			tensor{p + "attn_output.weight", []uint64{nEmbd, nEmbd}, o},
			tensor{p + "ffn_norm.weight", []uint64{nEmbd}, ones(nEmbd)},
			tensor{p + "ffn_gate.weight", []uint64{nEmbd, nFF}, r.matrix(nEmbd, nFF)},
			tensor{p + "ffn_up.weight", []uint64{nEmbd, nFF}, r.matrix(nEmbd, nFF)},
			tensor{p + "ffn_down.weight", []uint64{nFF, nEmbd}, down},
		)
	}
	return ts
}

// vocab returns the tokens, their scores and their types (2 unknown,
// 3 control, 6 byte: llama.cpp's llama_token_type).
func vocab() ([]string, []float32, []int32) {
	tokens := []string{"<unk>", "<s>", "</s>"}
	types := []int32{2, 3, 3}
	for b := range 256 {
		tokens = append(tokens, fmt.Sprintf("<0x%02X>", b))
		types = append(types, 6)
	}
	return tokens, make([]float32, len(tokens)), types
}

// ggufWriter writes GGUF values, keeping the first error.
type ggufWriter struct {
	w   *bufio.Writer
	n   int64 // bytes written
	err error
}

func (w *ggufWriter) write(v any) {
	if w.err != nil {
		return
	}
	w.err = binary.Write(w.w, binary.LittleEndian, v)
	w.n += int64(binary.Size(v))
}

func (w *ggufWriter) str(s string) {
	w.write(uint64(len(s)))
	w.write([]byte(s))
}

func (w *ggufWriter) pad() {
	if n := (alignment - w.n%alignment) % alignment; n > 0 {
		w.write(make([]byte, n))
	}
}

// kv is one metadata entry: its type and value (for an array, the element
// type and the elements).
type kv struct {
	key string
	typ uint32
	val any
}

func (w *ggufWriter) kv(e kv) {
	w.str(e.key)
	w.write(e.typ)
	switch v := e.val.(type) {
	case string:
		w.str(v)
	case []string:
		w.write(uint32(ggufString))
		w.write(uint64(len(v)))
		for _, s := range v {
			w.str(s)
		}
	case []float32:
		w.write(uint32(ggufFloat32))
		w.write(uint64(len(v)))
		w.write(v)
	case []int32:
		w.write(uint32(ggufInt32))
		w.write(uint64(len(v)))
		w.write(v)
	default:
		w.write(v)
	}
}

func (w *ggufWriter) model() {
	tokens, scores, types := vocab()
	// Ollama reads these with type assertions: counts must be uint32 and
	// the epsilon float32, or it panics.
	meta := []kv{
		{"general.architecture", ggufString, "llama"},
		{"general.name", ggufString, "troupe-ollamatest-tiny"},
		{"general.file_type", ggufUint32, uint32(0)}, // all F32
		{"general.alignment", ggufUint32, uint32(alignment)},
		{"llama.context_length", ggufUint32, uint32(nCtxTrain)},
		{"llama.embedding_length", ggufUint32, uint32(nEmbd)},
		{"llama.block_count", ggufUint32, uint32(nLayer)},
		{"llama.feed_forward_length", ggufUint32, uint32(nFF)},
		{"llama.attention.head_count", ggufUint32, uint32(nHead)},
		{"llama.attention.head_count_kv", ggufUint32, uint32(nHead)},
		{"llama.attention.layer_norm_rms_epsilon", ggufFloat32, float32(1e-5)},
		{"llama.rope.dimension_count", ggufUint32, uint32(nHeadDim)},
		{"llama.rope.freq_base", ggufFloat32, float32(10000)},
		{"llama.vocab_size", ggufUint32, uint32(nVocab)},
		{"tokenizer.ggml.model", ggufString, "llama"},
		{"tokenizer.ggml.tokens", ggufArray, tokens},
		{"tokenizer.ggml.scores", ggufArray, scores},
		{"tokenizer.ggml.token_type", ggufArray, types},
		{"tokenizer.ggml.bos_token_id", ggufUint32, uint32(bosID)},
		{"tokenizer.ggml.eos_token_id", ggufUint32, uint32(eosID)},
		{"tokenizer.ggml.unknown_token_id", ggufUint32, uint32(unkID)},
		{"tokenizer.ggml.add_bos_token", ggufBool, true},
		{"tokenizer.ggml.add_eos_token", ggufBool, false},
	}
	ts := tensors()

	w.write([]byte("GGUF"))
	w.write(uint32(3))
	w.write(uint64(len(ts)))
	w.write(uint64(len(meta)))
	for _, e := range meta {
		w.kv(e)
	}
	// Tensor offsets count from the start of the data section and are
	// aligned; F32 tensors of these shapes are all multiples of 32 bytes,
	// but pad anyway so a change of shape cannot misalign them.
	var off uint64
	for _, t := range ts {
		w.str(t.name)
		w.write(uint32(len(t.dims)))
		w.write(t.dims)
		w.write(uint32(ggmlTypeF32))
		w.write(off)
		off += uint64(4 * len(t.data))
		off += (alignment - off%alignment) % alignment
	}
	for _, t := range ts {
		w.pad()
		w.write(t.data)
	}
}
