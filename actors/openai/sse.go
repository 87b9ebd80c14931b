package openai

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync"
)

// maxEvent bounds one line and one event's data. A chunk is a few hundred
// bytes; Ollama sends a tool call's arguments whole in one event, hence
// the room.
const maxEvent = 8 << 20

// errEventTooLong is the error of a line or an event beyond maxEvent.
var errEventTooLong = fmt.Errorf("an event of the stream is longer than %d bytes", maxEvent)

// sseReader reads the events of a text/event-stream body, as the HTML
// standard's "interpreting an event stream" says: lines end in LF or CRLF;
// "data:" lines append to the event's data (a newline between two), one
// space after the colon is dropped, "event:" names the event, lines that
// start with ":" are comments, other fields ("id", "retry") are ignored,
// and a blank line ends the event when it has data. A bare CR is not taken
// for a line end: no server of this API sends one, and honouring it would
// hold every event until the next LF anyway.
//
// The common event, one data line and a blank one, costs a copy of the line
// into data and no allocation: lines are read in place from the
// bufio.Reader's buffer.
type sseReader struct {
	r    *bufio.Reader
	data []byte // the current event's data
	typ  []byte // the current event's type
	long []byte // a line longer than r's buffer, put together
}

// readBuffer is the reader's buffer: a few events of the larger dialects.
const readBuffer = 8 << 10

var sseReaders = sync.Pool{New: func() any {
	return &sseReader{r: bufio.NewReaderSize(nil, readBuffer)}
}}

// newSSEReader returns a reader of body from the pool; release returns it.
func newSSEReader(body io.Reader) *sseReader {
	s := sseReaders.Get().(*sseReader)
	s.r.Reset(body)
	return s
}

func (s *sseReader) release() {
	s.r.Reset(nil)
	if cap(s.data) > 64<<10 {
		s.data = nil // keep no large event in the pool
	}
	if cap(s.long) > 64<<10 {
		s.long = nil
	}
	sseReaders.Put(s)
}

// next returns the next event's type ("" when it has none) and data,
// valid until the next call. At the end of the body it returns io.EOF; an
// event the body ends in the middle of is dropped, as the standard says,
// but for a pending "[DONE]" without its blank line, which marks the
// answer's end all the same.
func (s *sseReader) next() (typ, data []byte, err error) {
	s.data, s.typ = s.data[:0], s.typ[:0]
	for {
		line, err := s.line()
		if err != nil {
			if errors.Is(err, io.EOF) && isDone(s.data) {
				return nil, trimLF(s.data), nil
			}
			return nil, nil, err
		}
		if len(line) == 0 {
			if len(s.data) == 0 {
				s.typ = s.typ[:0]
				continue
			}
			return s.typ, trimLF(s.data), nil
		}
		if line[0] == ':' {
			continue // a comment: keep-alives
		}
		name, value, found := bytes.Cut(line, []byte(":"))
		if found && len(value) > 0 && value[0] == ' ' {
			value = value[1:]
		}
		switch string(name) {
		case "data":
			if len(s.data)+len(value) >= maxEvent {
				return nil, nil, errEventTooLong
			}
			s.data = append(s.data, value...)
			s.data = append(s.data, '\n')
		case "event":
			s.typ = append(s.typ[:0], value...)
		}
	}
}

// line returns the next whole line without its LF or CRLF. A last line
// the body ends without an LF is no line: io.EOF.
func (s *sseReader) line() ([]byte, error) {
	line, err := s.r.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		s.long = append(s.long[:0], line...)
		for errors.Is(err, bufio.ErrBufferFull) {
			if len(s.long) >= maxEvent {
				return nil, errEventTooLong
			}
			line, err = s.r.ReadSlice('\n')
			s.long = append(s.long, line...)
		}
		line = s.long
	}
	if err != nil {
		return nil, err
	}
	line = line[:len(line)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, nil
}

func trimLF(data []byte) []byte {
	if n := len(data); n > 0 && data[n-1] == '\n' {
		return data[:n-1]
	}
	return data
}

// isDone reports whether an event's data is the [DONE] that ends a
// stream; the SDK took any data starting with it, and so does the kind.
func isDone(data []byte) bool {
	return bytes.HasPrefix(data, []byte("[DONE]"))
}
