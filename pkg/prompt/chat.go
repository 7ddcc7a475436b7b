package prompt

import (
	"encoding/json"
	"errors"
	"fmt"
)

// Message is one chat message reduced to what rendering needs.
type Message struct {
	Role    string
	Content string
}

// ErrNotArray is returned by DecodeMessages when messages is not a JSON array.
var ErrNotArray = errors.New("messages must be an array")

// DecodeMessages decodes the raw JSON value of a chat request's "messages".
//
// Content may be a string, null (an assistant turn with only tool calls) or an
// array of content parts, of which the text parts ({"type":"text","text":...})
// are concatenated and the others (images, audio) ignored.
func DecodeMessages(raw []byte) ([]Message, error) {
	var wire []struct {
		Role    string          `json:"role"`
		Content json.RawMessage `json:"content"`
	}
	if err := json.Unmarshal(raw, &wire); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) && typeErr.Field == "" {
			return nil, ErrNotArray
		}
		return nil, fmt.Errorf("decode messages: %w", err)
	}
	out := make([]Message, len(wire))
	for i, m := range wire {
		if m.Role == "" {
			return nil, fmt.Errorf("messages[%d]: missing role", i)
		}
		content, err := decodeContent(m.Content)
		if err != nil {
			return nil, fmt.Errorf("messages[%d].content: %w", i, err)
		}
		out[i] = Message{Role: m.Role, Content: content}
	}
	return out, nil
}

func decodeContent(raw json.RawMessage) (string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return "", nil
	}
	switch raw[0] {
	case '"':
		var s string
		err := json.Unmarshal(raw, &s)
		return s, err
	case '[':
		var parts []struct {
			Type string `json:"type"`
			Text string `json:"text"`
		}
		if err := json.Unmarshal(raw, &parts); err != nil {
			return "", err
		}
		var text []byte
		for _, p := range parts {
			if p.Type == "text" {
				text = append(text, p.Text...)
			}
		}
		return string(text), nil
	default:
		return "", errors.New("must be a string or an array of content parts")
	}
}

// GenerationPrompt ends every rendered chat: what the assistant answers after.
const GenerationPrompt = "<|assistant|>\n"

// AppendChat appends the canonical rendering of messages to dst: for each
// message "<|role|>\n" + content + "\n", then "<|assistant|>\n" (the
// generation prompt).
func AppendChat(dst []byte, messages []Message) []byte {
	for _, m := range messages {
		dst = append(dst, "<|"...)
		dst = append(dst, m.Role...)
		dst = append(dst, "|>\n"...)
		dst = append(dst, m.Content...)
		dst = append(dst, '\n')
	}
	return append(dst, GenerationPrompt...)
}

// RenderChat returns the canonical rendering of messages (see AppendChat).
func RenderChat(messages []Message) string {
	n := len(GenerationPrompt)
	for _, m := range messages {
		n += len(m.Role) + len(m.Content) + 6
	}
	return string(AppendChat(make([]byte, 0, n), messages))
}
