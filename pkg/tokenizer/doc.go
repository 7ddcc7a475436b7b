// Package tokenizer encodes text to token ids exactly as Hugging Face's
// tokenizers library does with a model's tokenizer.json, for the byte-level
// BPE family (GPT-2, Llama 3, Qwen 2/2.5/3, Mistral Nemo style). Kvasir's
// routers use it in precise prefix mode to compute the engine's own token
// ids, and the engine simulator in its real tokenizer mode. It is pure Go;
// a tokenizer.json is read from disk or memory, never downloaded.
//
//	tk, err := tokenizer.Load("/models/llama/tokenizer.json")
//	ids := tk.AppendEncode(nil, []byte("Hello world")) // encode(text, add_special_tokens=False)
//
// A Tokenizer is safe for concurrent use. AppendEncode runs the pipeline of
// Hugging Face's encode: added tokens with normalized false are split off
// the raw text (leftmost, then longest; single_word, lstrip and rstrip as
// Hugging Face applies them); each remaining piece is normalized and the
// added tokens with normalized true are split off; the pre-tokenizers split
// the rest into words; the BPE model merges each word's bytes, the pair of
// lowest rank first (the leftmost of equals), one merge at a time. A small
// bounded cache keeps the ids of recent words.
//
// # Supported
//
//   - model: type "BPE" with vocab, merges as "a b" strings or [a, b]
//     pairs (a legacy string with several spaces is cut where both halves
//     and the whole are tokens, as Hugging Face does), ignore_merges,
//     unk_token and fuse_unk, dropout null or 0. A repeated merge counts at
//     its last rank.
//   - normalizer: null, NFC, or a Sequence of NFCs (golang.org/x/text's
//     tables; runs of more than 30 combining marks are normalized whole,
//     without the U+034F that x/text's Stream-Safe format would insert).
//   - pre_tokenizer: ByteLevel (add_prefix_space, use_regex with GPT-2's
//     pattern), or a Sequence of Splits ending with one ByteLevel (Llama 3's
//     and Qwen's shape). A Split has a {"String": ...} or {"Regex": ...}
//     pattern, any behavior (Isolated, Removed, MergedWithPrevious,
//     MergedWithNext, Contiguous) and invert.
//   - Split regexes: GPT-2's, Llama 3's and Qwen 2's patterns (which need
//     lookahead, `\s+(?!\S)`, that Go's regexp lacks) are recognised by
//     their text and run by hand-written scanners. Other patterns run on
//     Go's regexp after translation to Oniguruma's meanings (Unicode \s, \d,
//     \w); a trailing `|\s+(?!\S)|\s+` or `|\s+(?!\S)`, the only lookahead
//     of the released patterns (Mistral Nemo's, GPT-4o's), is run by hand.
//   - added_tokens: any number (up to 4 MiB of content, 1 KiB each), with
//     the ids Hugging Face gives them on loading (the vocabulary's id if
//     the content is a token, else the next id after the vocabulary and the
//     added tokens so far; the same as the file's in released models).
//   - post_processor and decoder are not read: with
//     add_special_tokens=False they do not change the ids.
//
// # Refused
//
// Load returns an error naming the field for anything else, for example
// `tokenizer.json: model.type "Unigram" not supported (only BPE)`: other
// models (WordPiece, WordLevel, Unigram), byte_fallback true, dropout above
// 0, a continuing_subword_prefix or end_of_word_suffix, non-null truncation
// or padding, other normalizers (NFKC, Lowercase, Replace, Prepend, ...),
// other pre-tokenizers (Metaspace, Digits, Whitespace, Punctuation, ...) or
// a ByteLevel that is not the last, a Split regex that Go cannot run with
// Oniguruma's meaning (other lookaround, anchors, word boundaries, back
// references, possessive quantifiers, POSIX brackets, nested classes,
// inline flags but i, a pattern that matches the empty string), a version
// other than "1.0", and files over 64 MiB.
//
// # Input text
//
// Text is bytes and need not be valid UTF-8 (Hugging Face takes only
// strings): a byte outside valid UTF-8 is one character of class "other"
// (as U+FFFD) for the split patterns, and is encoded as that byte, so that
// Decode(AppendEncode(nil, x)) == x for any x when there is no normalizer
// and no add_prefix_space. Character classes come from Go's unicode
// package (Unicode 15.0); Oniguruma's tables may differ for characters
// assigned later.
//
// # Test tokenizers
//
// Train trains a small byte-level BPE in Llama 3's shape on a corpus (Corpus
// is the package's own English text) and returns its tokenizer.json, so
// tests and the simulator need no downloaded files; testdata/tokenizer.json
// is Train(Corpus(), 1000) (go test ./pkg/tokenizer -run
// TestTestdataIsRegenerated -args -update rewrites it).
package tokenizer
