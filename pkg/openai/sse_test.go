package openai

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestCompleteEvents(t *testing.T) {
	for in, want := range map[string]int{
		"":                            0,
		"data: x":                     0,
		"data: x\n":                   0,
		"data: x\n\n":                 9,
		"data: x\n\ndata: y":          9,
		"data: x\r\n\r\ndata: y\n\n":  20,
		"data: x\n\r\n":               10,
		"data: x\n\r\n\n":             11,
		"data: x\n\ndata: y\r\n\r\nd": 20,
	} {
		require.Equal(t, want, CompleteEvents([]byte(in)), "%q", in)
	}
}

// BenchmarkCompleteEvents measures the cut the activator makes after each
// read of a stream: a read of a few chunks, the last one torn.
func BenchmarkCompleteEvents(b *testing.B) {
	ev := []byte(`data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"hello"}}]}` + "\n\n")
	buf := append(bytes.Repeat(ev, 4), ev[:40]...)
	b.SetBytes(int64(len(buf)))
	for b.Loop() {
		if CompleteEvents(buf) != 4*len(ev) {
			b.Fatal("wrong cut")
		}
	}
}
