package sim

// words are the simulated output: token i of a response is one word and a
// space. They need no JSON escaping.
var words = [...]string{
	"the ", "engine ", "is ", "a ", "simulated ", "model ", "that ", "writes ",
	"plain ", "words ", "one ", "token ", "at ", "time ", "while ", "its ",
	"batch ", "grows ", "and ", "shrinks ", "with ", "load ", "so ", "latency ",
	"follows ", "real ", "physics ", "of ", "prefill ", "decode ", "cache ", "reuse ",
	"every ", "step ", "costs ", "some ", "milliseconds ", "on ", "an ", "accelerator ",
	"in ", "this ", "story ", "nothing ", "is ", "learned ", "but ", "timing ",
}

// word returns token i of a response whose words start at offset.
func word(offset, i int) string { return words[(offset+i)%len(words)] }
