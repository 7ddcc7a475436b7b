package prompt

import (
	"bytes"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/openai"
)

func TestRenderChat(t *testing.T) {
	got := RenderChat([]Message{{Role: "system", Content: "be brief"}, {Role: "user", Content: "hi"}})
	assert.Equal(t, "<|system|>\nbe brief\n<|user|>\nhi\n<|assistant|>\n", got)
	assert.Equal(t, "<|assistant|>\n", RenderChat(nil))
}

func TestDecodeMessages(t *testing.T) {
	raw := []byte(`[
		{"role":"system","content":"sys"},
		{"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"x"}},{"type":"text","text":"b"}]},
		{"role":"assistant","content":null,"tool_calls":[]}
	]`)
	msgs, err := DecodeMessages(raw)
	require.NoError(t, err)
	assert.Equal(t, []Message{{"system", "sys"}, {"user", "ab"}, {"assistant", ""}}, msgs)

	_, err = DecodeMessages([]byte(`{"role":"user"}`))
	assert.ErrorIs(t, err, ErrNotArray)
	_, err = DecodeMessages([]byte(`[{"content":"x"}]`))
	assert.ErrorContains(t, err, "missing role")
	_, err = DecodeMessages([]byte(`[{"role":"user","content":3}]`))
	assert.ErrorContains(t, err, "messages[0].content")
}

func TestTokenCount(t *testing.T) {
	assert.Equal(t, 0, TokenCount(""))
	assert.Equal(t, 1, TokenCount("a"))
	assert.Equal(t, 1, TokenCount("abcd"))
	assert.Equal(t, 2, TokenCount([]byte("abcde")))
}

func TestBlockHashesFullBlocksOnly(t *testing.T) {
	const bs = 4 // 16 bytes a block
	text := bytes.Repeat([]byte("x"), 16*3+15)
	assert.Len(t, BlockHashes(text, bs), 3, "partial last block has no hash")
	assert.Len(t, BlockHashes(text[:15], bs), 0)
	assert.Len(t, BlockHashes(text[:16], bs), 1)
	assert.Nil(t, BlockHashes(text, 0))
}

func TestBlockHashesChained(t *testing.T) {
	const bs = 4
	a := []byte("AAAAAAAAAAAAAAAA" + "same block here!" + "tail")
	b := []byte("BBBBBBBBBBBBBBBB" + "same block here!" + "tail")
	ha, hb := BlockHashes(a, bs), BlockHashes(b, bs)
	require.Len(t, ha, 2)
	require.Len(t, hb, 2)
	assert.NotEqual(t, ha[0], hb[0])
	assert.NotEqual(t, ha[1], hb[1], "same content after a differing block must hash differently")

	// A shared prefix gives shared leading hashes, and a block's hash depends
	// on its position only through its predecessors.
	c := []byte("AAAAAAAAAAAAAAAA" + "different block!")
	hc := BlockHashes(c, bs)
	assert.Equal(t, ha[0], hc[0])
	assert.NotEqual(t, ha[1], hc[1])

	same := []byte("same block here!same block here!")
	hs := BlockHashes(same, bs)
	assert.NotEqual(t, hs[0], hs[1], "a repeated block hashes differently at a different depth")
}

func TestBlockHashesDeterministic(t *testing.T) {
	text := []byte(RenderChat([]Message{{Role: "user", Content: "The quick brown fox jumps over the lazy dog, twice."}}))
	// Pinned values: the hash must be identical across processes and releases,
	// since routers and engines compare them.
	got := BlockHashes(text, 4)
	require.Len(t, got, len(text)/16)
	assert.Equal(t, got, BlockHashes(bytes.Clone(text), 4))
	assert.Equal(t, []uint64{0x59cc5d3c512bd821, 0xc8e04f25e670bc26, 0x5425a21ee66eae02, 0x7239193360f94668}, got)

	// Odd block sizes (bytes not a multiple of 8) work too.
	assert.Len(t, BlockHashes(text, 3), len(text)/12)
}

func TestAppendBlockHashesNoAlloc(t *testing.T) {
	text := bytes.Repeat([]byte("0123456789abcdef"), 256)
	dst := make([]uint64, 0, 256)
	allocs := testing.AllocsPerRun(10, func() { dst = AppendBlockHashes(dst[:0], text, 16) })
	assert.Zero(t, allocs)
	assert.Len(t, dst, len(text)/64)
}

func BenchmarkBlockHashes(b *testing.B) {
	text := bytes.Repeat([]byte("0123456789abcdef"), 8192) // 128 KiB, 32k tokens
	dst := make([]uint64, 0, 2048)
	b.SetBytes(int64(len(text)))
	for b.Loop() {
		dst = AppendBlockHashes(dst[:0], text, 16)
	}
}

func TestTokenHashesAgreeWithTextHashes(t *testing.T) {
	for _, n := range []int{0, 3, 4, 63, 64, 65, 127, 128, 200, 1000} {
		text := make([]byte, n)
		for i := range text {
			text[i] = byte(i*7 + n)
		}
		for _, bs := range []int{1, 2, 3, 16} {
			want := BlockHashes(text, bs)
			got := AppendTokenBlockHashes(nil, AppendTokens(nil, text[:len(text)/BytesPerToken*BytesPerToken]), bs)
			if len(want) == 0 {
				want = nil
			}
			if !slices.Equal(got, want) {
				t.Fatalf("len %d block %d: token hashes %x, text hashes %x", n, bs, got, want)
			}
		}
	}
}

func TestChainTokensIsChained(t *testing.T) {
	a := AppendTokenBlockHashes(nil, []uint32{1, 2, 3, 4}, 2)
	b := AppendTokenBlockHashes(nil, []uint32{9, 9, 3, 4}, 2)
	if a[1] == b[1] {
		t.Fatal("a block's hash must cover the blocks before it")
	}
	if ChainTokens(a[0], []uint32{3, 4}) != a[1] {
		t.Fatal("ChainTokens from the parent must give the next hash")
	}
}

func TestAppendRequestWithoutGenerationPrompt(t *testing.T) {
	parse := func(s string) openai.Object {
		o, err := openai.Parse([]byte(s))
		require.NoError(t, err)
		return o
	}
	msgs := `"messages":[{"role":"user","content":"hi"}]`
	with, err := AppendRequest(nil, parse(`{`+msgs+`}`), true)
	require.NoError(t, err)
	without, err := AppendRequest(nil, parse(`{`+msgs+`,"add_generation_prompt":false}`), true)
	require.NoError(t, err)
	require.Equal(t, string(with), string(without)+GenerationPrompt)
	explicit, err := AppendRequest(nil, parse(`{`+msgs+`,"add_generation_prompt":true}`), true)
	require.NoError(t, err)
	require.Equal(t, with, explicit)
}
