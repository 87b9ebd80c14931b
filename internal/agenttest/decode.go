package agenttest

import (
	"strings"
	"unicode/utf8"
)

// The kernel relays a reply with requests' iter_content(decode_unicode=True)
// and Flask re-encodes each piece as UTF-8. So the worker's bytes are first
// decoded with the charset requests guesses from the Content-Type:
//
//   - the charset parameter when there is one;
//   - otherwise ISO-8859-1 when the type contains "text" (case-sensitive),
//     which turns a UTF-8 reply sent as bare "text/plain" into mojibake;
//   - otherwise UTF-8 for "application/json";
//   - otherwise none: the bytes pass through.
//
// Decoding is incremental, so a character split across reads is held back
// rather than broken. Charsets other than UTF-8, Latin-1 and ASCII pass
// through unchanged here; Python would transcode them.
type decodeMode int

const (
	decodeNone decodeMode = iota
	decodeUTF8
	decodeLatin1
	decodeASCII
)

// replyDecoder turns a worker's body into what the kernel writes to the
// user, read by read.
type replyDecoder struct {
	mode    decodeMode
	pending []byte // a UTF-8 sequence cut by the end of a read
}

func newReplyDecoder(contentType string) *replyDecoder {
	cs, ok := requestsCharset(contentType)
	d := &replyDecoder{mode: decodeNone}
	if ok {
		d.mode = codecMode(cs)
	}
	return d
}

// requestsCharset is requests.utils.get_encoding_from_headers.
func requestsCharset(contentType string) (string, bool) {
	if contentType == "" {
		return "", false
	}
	parts := strings.Split(contentType, ";")
	mediaType := strings.TrimSpace(parts[0])
	for _, p := range parts[1:] {
		p = strings.TrimSpace(p)
		k, v, found := strings.Cut(p, "=")
		if !found {
			continue
		}
		if strings.ToLower(strings.Trim(k, `"' `)) == "charset" {
			return strings.Trim(strings.Trim(v, `"' `), `'"`), true
		}
	}
	switch {
	case strings.Contains(mediaType, "text"):
		return "iso-8859-1", true
	case strings.Contains(mediaType, "application/json"):
		return "utf-8", true
	}
	return "", false
}

// codecMode resolves a charset name as Python's codec registry would for
// the three codecs this package implements.
func codecMode(name string) decodeMode {
	var b strings.Builder
	underscore := false
	for _, r := range strings.ToLower(strings.TrimSpace(name)) {
		if 'a' <= r && r <= 'z' || '0' <= r && r <= '9' || r == '.' {
			b.WriteRune(r)
			underscore = false
		} else if !underscore && b.Len() > 0 {
			b.WriteByte('_')
			underscore = true
		}
	}
	switch strings.TrimRight(b.String(), "_") {
	case "utf_8", "utf8", "u8", "utf", "utf8_ucs2", "utf8_ucs4", "cp65001":
		return decodeUTF8
	case "latin_1", "latin1", "latin", "l1", "iso_8859_1", "iso8859_1", "8859", "cp819",
		"ibm819", "iso_ir_100", "csisolatin1", "iso_8859_1_1987":
		return decodeLatin1
	case "ascii", "us_ascii", "us", "646", "cp367", "csascii", "ibm367", "iso646_us",
		"iso_ir_6", "ansi_x3.4_1968", "ansi_x3_4_1968", "ansi_x3.4_1986", "iso_646.irv_1991":
		return decodeASCII
	}
	return decodeNone
}

// decode returns the text for one read; it may be empty, and the kernel
// then writes nothing.
func (d *replyDecoder) decode(p []byte) []byte {
	switch d.mode {
	case decodeLatin1:
		out := make([]byte, 0, len(p)*2)
		for _, c := range p {
			out = utf8.AppendRune(out, rune(c))
		}
		return out
	case decodeASCII:
		out := make([]byte, 0, len(p))
		for _, c := range p {
			if c < utf8.RuneSelf {
				out = append(out, c)
			} else {
				out = utf8.AppendRune(out, utf8.RuneError)
			}
		}
		return out
	case decodeUTF8:
		buf := append(d.pending, p...)
		d.pending = nil
		out := make([]byte, 0, len(buf))
		for len(buf) > 0 {
			if !utf8.FullRune(buf) {
				d.pending = append([]byte(nil), buf...)
				break
			}
			r, n := utf8.DecodeRune(buf)
			if r == utf8.RuneError && n == 1 {
				out = utf8.AppendRune(out, utf8.RuneError)
			} else {
				out = append(out, buf[:n]...)
			}
			buf = buf[n:]
		}
		return out
	}
	return p
}

// flush ends the reply: a sequence still cut becomes one U+FFFD, as
// Python's final decode with errors="replace" gives.
func (d *replyDecoder) flush() []byte {
	if len(d.pending) == 0 {
		return nil
	}
	d.pending = nil
	return utf8.AppendRune(nil, utf8.RuneError)
}
