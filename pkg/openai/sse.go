package openai

import "bytes"

// SSE framing of OpenAI streams: "data: {chunk}\n\n" per chunk, ending with
// "data: [DONE]\n\n".
var (
	DataPrefix = []byte("data: ")
	DoneData   = []byte("[DONE]")
	DoneEvent  = []byte("data: [DONE]\n\n")
)

// ErrorEvent renders an error as one SSE event, as OpenAI clients expect it
// mid-stream: data: {"error": {...}}.
func ErrorEvent(e Error) []byte {
	out := append([]byte(nil), DataPrefix...)
	out = append(out, e.JSON()...)
	return append(out, '\n', '\n')
}

// EventData returns the payload of one SSE event (the text after "data:" on
// its data lines, joined by newlines) and whether it had any data line.
func EventData(event []byte) ([]byte, bool) {
	var data []byte
	found := false
	for len(event) > 0 {
		line := event
		if i := bytes.IndexByte(event, '\n'); i >= 0 {
			line, event = event[:i], event[i+1:]
		} else {
			event = nil
		}
		line = bytes.TrimSuffix(line, []byte("\r"))
		if !bytes.HasPrefix(line, []byte("data:")) {
			continue
		}
		v := bytes.TrimPrefix(line[5:], []byte(" "))
		if found {
			data = append(data, '\n')
			data = append(data, v...)
		} else {
			data, found = v, true
		}
	}
	return data, found
}

// The end of an SSE event is its first blank line: "\n\n" or "\n\r\n".
// EventSplitter cuts a stream into events for readers of each one;
// CompleteEvents finds where the whole events of a buffer end, for a relay
// that passes them on in place (the activator's copyStream).

// CompleteEvents returns the length of the prefix of b made of whole SSE
// events: up to and including its last blank line, 0 when b has none. Any
// blank lines after the last event are included (empty events).
func CompleteEvents(b []byte) int {
	i := bytes.LastIndex(b, []byte("\n\n"))
	if j := bytes.LastIndex(b, []byte("\n\r\n")); j > i {
		return j + 3
	}
	if i < 0 {
		return 0
	}
	return i + 2
}

// EventSplitter splits an SSE byte stream into whole events (each including
// its terminating blank line). Feed it bytes as they arrive.
type EventSplitter struct {
	buf     []byte
	scanned int // bytes of buf already searched for an event end
}

// Feed appends p and calls fn for every complete event now buffered.
// fn must not retain the slice. When nothing is pending from an earlier
// Feed, the events are cut from p itself and only its incomplete tail is
// kept: a stream read event by event copies nothing.
func (s *EventSplitter) Feed(p []byte, fn func(event []byte) error) error {
	b, from := p, 0
	if len(s.buf) > 0 {
		s.buf = append(s.buf, p...)
		b, from = s.buf, s.scanned
	}
	start, err := feedEvents(b, from, fn)
	// Keep only the incomplete tail: searched to its last two bytes (an
	// end may straddle the next Feed), or not at all after a failed fn.
	s.buf = append(s.buf[:0], b[start:]...)
	s.scanned = 0
	if err == nil {
		s.scanned = max(len(s.buf)-2, 0)
	}
	return err
}

// feedEvents calls fn for each complete event of b, searching from b[0]
// (the first event end at or after from), and returns where the incomplete
// tail begins (or the end of the event fn failed on).
func feedEvents(b []byte, from int, fn func(event []byte) error) (int, error) {
	start := 0
	for {
		i, n := eventEnd(b[start:], from-start)
		if i < 0 {
			return start, nil
		}
		end := start + i + n
		if err := fn(b[start:end]); err != nil {
			return end, err
		}
		start, from = end, end
	}
}

// Rest returns bytes that did not end with a blank line (a truncated event).
func (s *EventSplitter) Rest() []byte { return s.buf }

// eventEnd finds the first blank line in b at or after from: the index of
// the newline that ends the event and the length of the terminator.
func eventEnd(b []byte, from int) (int, int) {
	for i := max(from, 0); i+1 < len(b); i++ {
		if b[i] != '\n' {
			continue
		}
		if b[i+1] == '\n' {
			return i, 2
		}
		if b[i+1] == '\r' && i+2 < len(b) && b[i+2] == '\n' {
			return i, 3
		}
	}
	return -1, 0
}
